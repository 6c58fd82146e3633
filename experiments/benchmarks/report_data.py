"""Sections 3, 3b and 5 of results.md: the data loaders against the model, data=prepared against
data=folder with the shared array's memory, and how a DCGAN step's cost grows."""

from md_tables import fmt, table

LABELS = {
    "mnist5k": "data=mnist5k",
    "folder": "data=folder data.root=DIR",
    "folder_workers0": "data=folder data.root=DIR data.num_workers=0",
}


def data_section(r: dict) -> str:
    """Section 3: the training loaders against what the model consumes."""
    s, d = r["sizes"], r["data"]
    out = []
    out.append("## 3. Data loading: ImageDataModule vs what the model consumes\n")
    out.append(
        "Batches/s of `train_dataloader()` alone (steady epochs, after the first), at the shipped "
        "data configs, against the hand-written DCGAN step at the same image size, channels and "
        f"batch size (one torch thread). The folder holds {s['data_files']} MNIST digits written "
        "as 28x28 PNGs; `data=folder` reads them at its defaults (64 px, RGB, 2 workers).\n"
    )
    rows = []
    for name in ("mnist5k", "folder", "folder_workers0"):
        x = d[name]
        rows.append(
            [
                f"`{LABELS[name]}`",
                f"{x['image_size']} px, {x['channels']} ch",
                x["num_workers"],
                fmt(x["setup_s"], 2),
                fmt(x["batches_per_s"], 1),
                fmt(x["images_per_s"]),
                fmt(x["model_images_per_s"]),
                f"**{x['loader_over_model']:.1f}x**",
            ]
        )
    out.append(
        table(
            [
                "config",
                "images",
                "workers",
                "setup s",
                "batches/s",
                "images/s",
                "model images/s",
                "loader / model",
            ],
            rows,
        )
    )
    out.append("\n")
    return "".join(out)


def prepared_section(r: dict) -> str:
    """Section 3b: data=folder vs data=prepared images/s, and the shared page cache under DDP."""
    p = r.get("prepared")
    if not p:
        return ""
    out = [
        "## 3b. Prepared datasets: `data=prepared` vs `data=folder`\n\n"
        f"{p['n_files']} RGB images of 128 px (blobs with noise, so files compress as photos "
        "do) as PNG and as JPEG (q=90). `data=folder` decodes and resizes them to 64 px in 2 "
        "workers; `genlab-prepare` decodes them once, and `data=prepared` reads each batch with "
        "one gather from the memory-mapped array, in the training process (0 workers). "
        "Training loader alone, epochs after the first, one torch thread.\n\n"
    ]
    rows = [
        [
            f"`data=folder` ({kind.upper()})",
            x["image_size"],
            x["num_workers"],
            "-",
            fmt(x["images_per_s"]),
            fmt(x["images_per_s"] / max(1, x["num_workers"])),
        ]
        for kind, x in p["folder"].items()
    ]
    rows += [
        [
            "`data=prepared`",
            x["image_size"],
            x["num_workers"],
            fmt(x["prepare_s"], 1),
            fmt(x["images_per_s"]),
            fmt(x["images_per_s"]),
        ]
        for x in p["prepared"].values()
    ]
    header = ["loader", "px", "workers", "genlab-prepare s", "images/s", "images/s per worker"]
    out.append(table(header, rows))
    ratio = p["ratio_per_worker"]
    out.append(
        f"\nAt 64 px `data=prepared` gives **{ratio['png']:.0f}x** the images/s per worker of "
        f"`data=folder` over PNG and **{ratio['jpg']:.0f}x** over JPEG "
        f"({p['ratio']['png']:.0f}x and {p['ratio']['jpg']:.0f}x the 2-worker loader); "
        "the prepared row counts the training process as its one worker.\n\n"
    )
    sh = p.get("share")
    if sh:
        one, ddp = sh["one_process"], sh["ddp2_workers2"]
        out.append(
            f"Sharing: one epoch over a {sh['array_mb']:.0f} MB prepared array "
            f"({sh['images']} images, {sh['image_size']} px RGB) through a one-weight model, "
            "peaks sampled every 0.3 s from /proc (smaps of the array's mapping).\n\n"
        )
        rows = [
            [
                name,
                x["processes"],
                fmt(x["peak_rss_mb"]),
                fmt(x["peak_pss_mb"]),
                fmt(x["peak_file_rss_mb"]),
                fmt(x["peak_file_pss_mb"]),
            ]
            for name, x in (("one process, 0 workers", one), ("ddp_cpu, 2 ranks x 2 workers", ddp))
        ]
        header = [
            "run",
            "processes",
            "sum RSS MB",
            "sum PSS MB",
            "array RSS MB (sum)",
            "array PSS MB (sum)",
        ]
        out.append(table(header, rows))
        out.append(
            f"\nThe {ddp['processes']} processes map {ddp['peak_file_rss_mb']:.0f} MB of the "
            f"array between them but hold {ddp['peak_file_pss_mb']:.0f} MB of it (PSS splits a "
            "shared page among its mappers): one copy in the page cache, as in one process "
            f"({one['peak_file_pss_mb']:.0f} MB). The rest of the PSS is each process's own "
            "torch and Python.\n\n"
        )
    return "".join(out)


def scaling_section(r: dict) -> str:
    """Section 5: DCGAN images/s over batch size and image size."""
    s, sc = r["sizes"], r["scaling"]
    out = []
    out.append("## 5. How training cost grows (DCGAN, synthetic data, genlab-train)\n")
    out.append(
        f"One `genlab-train -m` sweep, one torch thread, `logger=csv`; {s['scale_batches']} "
        f"batches timed after {s['scale_warmup']} warm-up batches per setting. Peak RSS is the "
        "sweep process's during that job.\n"
    )
    sizes = sorted({x["image_size"] for x in sc["rows"]})
    rows = []
    for x in sc["rows"]:
        base = next(y for y in sc["rows"] if y["image_size"] == x["image_size"])
        rows.append(
            [
                x["image_size"],
                x["batch_size"],
                fmt(x["images_per_s"]),
                fmt(x["median_step_s"], 3),
                f"{x['images_per_s'] / base['images_per_s']:.2f}",
                fmt(x["peak_rss_fit_mb"]),
                fmt(x["cuda_peak_mb"]),
            ]
        )
    out.append(
        table(
            [
                "image px",
                "batch",
                "images/s",
                "median step s",
                f"vs batch {sc['rows'][0]['batch_size']}",
                "peak RSS MB",
                "peak CUDA MB",
            ],
            rows,
        )
    )
    if len(sizes) > 1:
        a = [x for x in sc["rows"] if x["image_size"] == sizes[0]]
        b = {x["batch_size"]: x for x in sc["rows"] if x["image_size"] == sizes[1]}
        ratios = [
            y["images_per_s"] / b[y["batch_size"]]["images_per_s"]
            for y in a
            if y["batch_size"] in b
        ]
        out.append(
            f"\n{sizes[1]} px costs {min(ratios):.1f}-{max(ratios):.1f}x the time per image of "
            f"{sizes[0]} px.\n"
        )
    return "".join(out)
