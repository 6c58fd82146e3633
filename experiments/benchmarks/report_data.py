"""Sections 3, 3b and 5 of results.md: the data loaders against the model, data=prepared against
data=folder with the shared array's memory, and how a DCGAN step's cost grows."""

import math

from md_tables import fmt, table

LABELS = {
    "mnist5k": "data=mnist5k",
    "folder": "data=folder data.root=DIR",
    "folder_workers0": "data=folder data.root=DIR data.num_workers=0",
}

SOURCE_LABELS = {
    "folder": "data=folder",
    "zip": "data=zip",
    "hf": "data=hf",
    "streaming": "data=streaming data.path=DIR",
    "streaming_s3": "data=streaming data.path=s3://...",
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


def loader_row(loader: str, stored: str, x: dict, prepare_s: float | None, gpu: float | None):
    """One row of 3b's table; the workers that feed ``gpu`` images/s, for 64 px rows."""
    per_worker = x["images_per_s"] / max(1, x["num_workers"])
    # a 0-worker loader runs in the training process: one worker's worth of CPU
    feeders = math.ceil(gpu / per_worker) if gpu and x["image_size"] == 64 else None
    return [
        loader,
        stored,
        x["image_size"],
        x["num_workers"],
        "-" if not prepare_s else fmt(prepare_s, 1),
        fmt(x["images_per_s"]),
        fmt(per_worker),
        "-" if feeders is None else f"**{feeders}**",
    ]


def source_rows(src: dict) -> list[list]:
    """3b's rows for sources.py's loaders (folder without workers, zip, hf, streaming)."""
    gpu = src["feed"]["gpu_images_per_s"]
    return [
        loader_row(f"`{SOURCE_LABELS[x['source']]}`", x["stored"], x, x["prepare_s"], gpu)
        for x in src["rows"]
    ]


def prepared_section(r: dict) -> str:
    """Section 3b: data=folder vs data=prepared images/s, and the shared page cache under DDP."""
    p = r.get("prepared")
    if not p:
        return ""
    out = [
        "## 3b. Data sources at 64 px: `data=prepared`, `zip`, `hf`, `streaming` vs "
        "`data=folder`\n\n"
        f"{p['n_files']} RGB images of 128 px (blobs with noise, so files compress as photos "
        "do) as PNG and as JPEG (q=90). `data=folder` decodes and resizes them to 64 px in 2 "
        "workers; `genlab-prepare` decodes them once, and `data=prepared` reads each batch with "
        "one gather from the memory-mapped array, in the training process (0 workers). "
        "Training loader alone, epochs after the first, one torch thread.\n\n"
    ]
    src = p.get("sources")
    gpu = src["feed"]["gpu_images_per_s"] if src else None
    rows = [
        loader_row(f"`data=folder` ({kind.upper()})", f"128 px {kind.upper()} files", x, None, gpu)
        for kind, x in p["folder"].items()
    ]
    rows += [
        loader_row("`data=prepared`", "uint8 array (`.npy`)", x, x["prepare_s"], gpu)
        for x in p["prepared"].values()
    ]
    rows += source_rows(src) if src else []
    header = [
        "loader",
        "stored as",
        "px",
        "workers",
        "making it s",
        "images/s",
        "images/s per worker",
        f"workers to feed a DCGAN-64 GPU step ({fmt(gpu)} images/s)",
    ]
    out.append(table(header, rows))
    ratio = p["ratio_per_worker"]
    out.append(
        f"\nAt 64 px `data=prepared` gives **{ratio['png']:.0f}x** the images/s per worker of "
        f"`data=folder` over PNG and **{ratio['jpg']:.0f}x** over JPEG "
        f"({p['ratio']['png']:.0f}x and {p['ratio']['jpg']:.0f}x the 2-worker loader); "
        "the prepared row counts the training process as its one worker.\n\n"
    )
    if src:
        out.append(sources_text(src, p, r["machine"]["cores"]))
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


def sources_text(src: dict, p: dict, cores: int) -> str:
    """How issue 24's rows were made, the DCGAN-64 step they feed, and the machine's load."""
    fed = src["feed"]
    load = p.get("loadavg") or src["loadavg"]
    when = f" on {p['date_utc']}" if p.get("date_utc") else ""
    decode0 = (
        "`data=streaming` has LitData deserialize only the item asked for (`batch_decode=0`) "
        "and shuffle whole chunks: by default LitData 0.2.76 deserializes a window of up to 256 "
        "items around each item it serves and keeps it for the next read, which shuffled reads "
        "mostly miss; measured here before that choice, the default gave 1,365 images/s from the "
        "directory and 1,089 from S3 (0 workers), against 13,410 and 6,233 per item.\n\n"
    )
    return (
        "The rows after `data=prepared` (sources.py) read the same PNGs: `data=folder` with no "
        f"workers; `genlab-prepare format=zip` at {fed['image_size']} px (StyleGAN's "
        "dataset_tool.py layout: it resizes once, so `data=zip` decodes 64 px PNGs); a "
        "`datasets` dataset of the 128 px PNG bytes (`Dataset.from_dict` with an `Image` "
        "column, `save_to_disk`), read by `data=hf` and resized as `data=folder` is; "
        "`genlab-prepare format=litdata` chunks (raw uint8 at 64 px, genlab's 16 MB chunks) "
        "read by `data=streaming` from the directory and from a bucket of moto's S3 server "
        "(`tests/s3.py`'s, which sources.py starts on 127.0.0.1 and stops), written there by "
        "`genlab-prepare ... out=s3://...`; LitData's chunk cache is emptied before every S3 "
        "epoch, so each epoch downloads every chunk, as when a dataset outgrows "
        "`data.max_cache_size`. Making it s: genlab-prepare (or `save_to_disk`). Per worker = "
        "images/s / workers; a 0-worker row counts the training process as its worker. The "
        "2-worker rows share the 2 cores with the training process, and LitData's loader "
        "starts its workers every epoch (`persistent_workers=False`), the others once.\n\n"
        f"{decode0}"
        f"**Workers to feed a GPU.** A DCGAN-64 step (batch {fed['batch_size']}, RGB) costs "
        f"{fed['flops_per_image'] / 1e9:.2f} GFLOP per real image (`torch.utils.flop_counter` "
        "over the hand-written step of hand_loop.py: G forward, D forward and backward on real "
        "and fake, G forward and backward through D with D's weights frozen, as genlab's step "
        "does). No GPU figure is recorded yet (gpu.sh has "
        f"not run on one), so the GPU is an estimate: {fed['gpu_tflops']:.0f} TFLOP/s sustained "
        "(a third of an A100's 312 TFLOP/s dense bf16 peak, NVIDIA's datasheet) consumes "
        f"**{fed['gpu_images_per_s']:,.0f} images/s**; workers = ceil(that / images/s per "
        f"worker), 64 px rows only. On this CPU the same step consumes "
        f"{fed['cpu_images_per_s']:.0f} images/s at one thread: one worker of any source "
        "feeds it.\n\n"
        f"Load: this section ran{when} with a 1-minute load average of {fmt(load[0], 2)} "
        f"before it and {fmt(load[1], 2)} at its end (its own processes included), on {cores} "
        "cores that other sessions share at times: the absolute figures move with the load, "
        "the rows measured back to back compare better.\n\n"
    )


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
