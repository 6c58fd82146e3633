"""results.json -> results.md: the tables a person reads."""

import json
import sys
from pathlib import Path


def fmt(x, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


LABELS = {
    "mnist5k": "data=mnist5k",
    "folder": "data=folder data.root=DIR",
    "folder_workers0": "data=folder data.root=DIR data.num_workers=0",
}


def threads_label(t: str, actual: int) -> str:
    return f"{actual} (OMP_NUM_THREADS=1)" if t == "1" else f"{actual} (default)"


def paired_section(r: dict) -> str:
    """Section 1b: genlab and hand-written steps paired in one process, and Lightning's floor."""
    pr = r.get("paired")
    if not pr:
        return ""
    out = [
        "\n### Paired in one process (the noise-robust measure)\n\n"
        "The same genlab-train run (defaults, one thread) with the hand-written step run on "
        "copies of the module's own networks and optimiser settings right after each genlab "
        "step, on the same batch (`+callbacks.step_timer.pair=true`). Each pair is a few "
        "milliseconds apart, so a shared machine slows both alike; 'Lightning / hand' is the "
        "median over pairs of hand step time / genlab step time (1.0 = no overhead), with "
        "its interquartile range.\n\n"
    ]
    rows = [
        [
            name,
            f"{m['pairs']}",
            f"{m['step_ms']:.1f}",
            f"{m['hand_step_ms']:.1f}",
            f"{m['extra_ms']:+.2f}",
            f"**{m['ratio']:.3f}**",
            f"{m['ratio_q1']:.3f}-{m['ratio_q3']:.3f}",
            f"{m['ratio_of_sums']:.3f}",
        ]
        for row in pr["models"].values()
        for name, m in (
            (f"{row['model'].upper()}: genlab-train", row),
            (f"{row['model'].upper()}: minimal Lightning", row["lightning_floor"]),
        )
    ]
    header = ["run", "step pairs", "Lightning step ms", "hand step ms", "extra ms"]
    header += ["Lightning / hand", "interquartile", "ratio of total times"]
    out.append(table(header, rows))
    out.append(
        "\nThe 'minimal Lightning' rows measure the same way a LightningModule with nothing but "
        "the hand-written step (copies of the same networks; the VAE returns its loss, the GAN "
        "steps Lightning's optimizers with `manual_backward`, as Lightning's own GAN example) in "
        "a bare Trainer (no logger, callbacks, progress bar or checkpoints), fed by the same "
        "ImageDataModule (`workloads.py floor`): what Lightning's loop costs these networks "
        "before genlab adds anything. genlab's own share is the difference between the rows.\n"
    )
    return "".join(out) + "\n"


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


def markdown(r: dict) -> str:
    m, s = r["machine"], r["sizes"]
    out = [f"# genlab benchmarks ({r['mode']} run)\n"]
    out.append(
        "Written by `python experiments/benchmarks/run.py"
        + (" --quick" if r["mode"] == "quick" else "")
        + f"` in {r['total_s'] / 60:.1f} min. Method: experiments/benchmarks/README.md.\n"
    )
    out.append("## Machine\n")
    gpu = m["gpu"] or "none"
    out.append(
        table(
            ["", ""],
            [
                ["date", m["date_utc"]],
                ["CPU", f"{m['cpu']}, {m['cores']} logical cores"],
                ["RAM", f"{m['ram_gb']} GB"],
                ["GPU", gpu],
                ["python / torch", f"{m['python']} / {m['torch']}"],
                ["pytorch_lightning", m["pytorch_lightning"]],
                ["torchmetrics / torch-fidelity", f"{m['torchmetrics']} / {m['torch_fidelity']}"],
                ["torch threads by default", m["torch_default_threads"]],
                [
                    "load average (1, 5, 15 min) at start / end",
                    f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])} / "
                    f"{' '.join(f'{x:.2f}' for x in m['loadavg_end'])}",
                ],
            ],
        )
    )
    if max(m["loadavg_start"][0], m["loadavg_end"][0]) > 0.5:
        out.append(
            "The machine was shared while this ran (load average above): absolute numbers are "
            "lower than on an idle machine; each genlab/hand-written pair ran back to back, "
            "alternating, to keep their ratio fair.\n"
        )

    tr = r["training"]
    out.append("## 1. Training: genlab-train vs a hand-written PyTorch loop\n")
    out.append(
        f"Steady-state images/s: the first {s['warmup']} batches of each run left out, and the "
        "validation between epochs left out (its time is shown apart); the best of the "
        "alternating runs of each side. MNIST-5k (70 batches of 64 per epoch), `metrics=none`, "
        "everything else at its default (rich progress bar, csv + W&B offline loggers, "
        "checkpoints, sample grids"
        + (f", `limit_val_batches={s['val_batches']}`" if s["val_batches"] else "")
        + "). The hand-written loop uses the same networks, optimisers, losses, batch size and "
        "images, held in memory as one tensor.\n\n"
    )
    rows = []
    for row in tr.values():
        g = max((x["genlab"] for x in row["reps"]), key=lambda x: x["images_per_s"])
        h = max((x["hand"] for x in row["reps"]), key=lambda x: x["images_per_s"])
        rows.append(
            [
                row["model"].upper(),
                threads_label(row["threads"], g["torch_threads"]),
                f"{row['batches_timed']} x {len(row['reps'])}",
                fmt(row["genlab_images_per_s"]),
                fmt(row["hand_images_per_s"]),
                f"**{row['ratio']:.3f}**",
                f"{row['ratio_median_step']:.3f}",
                fmt(g["startup_s"], 1),
                fmt(h["startup_s"], 1),
                fmt(g["validation_s_per_epoch"], 2),
            ]
        )
    out.append(
        table(
            [
                "model",
                "torch threads",
                "batches timed x runs",
                "genlab img/s",
                "hand img/s",
                "genlab / hand",
                "same, from median steps",
                "genlab startup s",
                "hand startup s",
                "genlab validation s/epoch",
            ],
            rows,
        )
    )
    if any(row["threads"] != "1" for row in tr.values()):
        out.append(
            "At the default thread count the runs mostly measure contention with the machine's "
            "other users (one genlab and one hand-written run each, minutes apart, under a "
            "changing load): read those rows as 'the default is several times slower here', "
            "not as genlab's overhead, which the one-thread rows measure.\n\n"
        )
    for model in ("gan", "vae"):
        one, dflt = tr.get(f"{model}_t1"), tr.get(f"{model}_tdefault")
        if one and dflt:
            out.append(
                f"- {model.upper()}: one intra-op thread is "
                f"{one['genlab_images_per_s'] / dflt['genlab_images_per_s']:.2f}x the default "
                f"thread count with genlab-train and "
                f"{one['hand_images_per_s'] / dflt['hand_images_per_s']:.2f}x with the hand loop.\n"
            )
    out.append(paired_section(r))
    for row in tr.values():
        att = row.get("attribution")
        if not att:
            continue
        bs = row["batch_size"]
        g_ms, h_ms = 1000 * bs / row["genlab_images_per_s"], 1000 * bs / row["hand_images_per_s"]
        out.append(
            f"\nWhere genlab's {row['model'].upper()} step time goes (one thread): a step takes "
            f"{g_ms:.1f} ms in genlab-train and {h_ms:.1f} ms in the hand-written loop, "
            f"{g_ms - h_ms:+.1f} ms. Timers around the parts the hand loop lacks "
            "(`workloads.py attribute`: genlab's module in a Lightning Trainer, csv logger):\n\n"
        )
        calls = att["calls"]
        n = calls.get("training_step (all of it)", 1)
        out.append(
            table(
                ["part", "ms per step", "us per call", "calls per step"],
                [
                    [k, f"{v:.2f}", f"{att['us_per_call'][k]:.0f}", f"{calls[k] / n:.0f}"]
                    for k, v in att["ms_per_step"].items()
                ],
            )
        )
        named = sum(v for k, v in att["ms_per_step"].items() if not k.startswith("training_step"))
        out.append(
            f"\nThe parts the hand loop lacks add up to {named:.1f} ms per step (`self.log` and "
            "`finite_or_skip` run inside `training_step`); what is left of the difference is "
            "Lightning's automatic or manual optimisation loop (closure, hooks, precision "
            "plugin) and the noise of a shared machine.\n\n"
        )
    out.append("\n")

    ev = r["eval"]
    out.append("## 2. Evaluation: genlab-eval vs torch-fidelity's `fidelity` CLI\n")
    out.append(
        f"FID + IS + KID of {ev['n_fake']} generated images against {ev['n_real']} real "
        f"MNIST-5k training images, {ev['weights']}, default torch threads, "
        f"batch {s['eval_batch']}. "
        "genlab-eval generates the samples from the checkpoint (and writes them as PNG, "
        "`save_samples=true`); `fidelity --no-cache` scores those PNGs against the same real "
        "images saved as PNG. Wall time includes interpreter start-up; job time is Hydra's job "
        "alone (`.hydra/config.yaml` to `metrics.json`).\n"
    )
    if "reps" in ev:
        walls = " and ".join(
            f"{name} {', '.join(f'{x:.1f}' for x in ev['reps'][key])} s"
            for name, key in (
                ("genlab-eval", "genlab_cold_wall_s"),
                ("fidelity", "fidelity_wall_s"),
            )
        )
        out.append(
            f"The two tools ran alternately ({walls} wall); the faster run of each counts.\n"
        )
    c, f, k = ev["genlab_cold"], ev["fidelity"], ev["genlab_cached"]
    out.append(
        table(
            [
                "run",
                "images through Inception",
                "wall s",
                "job s",
                "images/s (wall)",
                "peak RSS MB",
            ],
            [
                [
                    "genlab-eval, reference not cached",
                    2 * ev["n_fake"],
                    fmt(c["wall_s"], 1),
                    fmt(c["job_s"], 1),
                    fmt(ev["genlab_cold_images_per_s"], 2),
                    fmt(c["peak_rss_tree_mb"]),
                ],
                [
                    "fidelity --isc --fid --kid",
                    2 * ev["n_fake"],
                    fmt(f["wall_s"], 1),
                    "-",
                    fmt(ev["fidelity_images_per_s"], 2),
                    fmt(f["peak_rss_tree_mb"]),
                ],
                [
                    "genlab-eval, cached reference statistics",
                    ev["n_fake"],
                    "-",
                    fmt(k["job_s"], 1),
                    "-",
                    fmt(k["process"]["peak_rss_tree_mb"]),
                ],
            ],
        )
    )
    out.append(
        f"\ngenlab-eval / fidelity wall time: **{ev['ratio_wall']:.2f}**. With the reference "
        f"statistics cached the job takes {k['job_s']:.1f} s instead of {c['job_s']:.1f} s "
        f"(**{ev['cached_speedup_job']:.2f}x** faster): the real images are not read again.\n\n"
    )
    mk = [
        ("FID", "fid", "frechet_inception_distance"),
        ("IS", "is_mean", "inception_score_mean"),
        ("KID", "kid_mean", "kernel_inception_distance_mean"),
    ]
    out.append(
        table(
            ["metric", "genlab-eval", "fidelity"],
            [
                [
                    a,
                    f"{c['metrics'].get(b, float('nan')):.6g}",
                    f"{f['metrics'].get(d, float('nan')):.6g}",
                ]
                for a, b, d in mk
            ],
        )
    )
    out.append("\nEvaluation time against the cached reference vs number of generated images:\n\n")
    sweep = sorted(ev["sweep"], key=lambda j: j["n_fake"])
    out.append(
        table(
            ["n_fake", "job s", "generated images/s (job)"],
            [[j["n_fake"], fmt(j["job_s"], 1), fmt(j["n_fake"] / j["job_s"], 2)] for j in sweep],
        )
    )
    fit = ev["sweep_fit"]
    per_image = fit["s_per_image"]
    out.append(
        f"\nLeast squares over these jobs: job s = {fit['intercept_s']:.1f} + {per_image:.3f} "
        f"x n_fake. With {len(sweep)} points taken a minute apart on a shared machine the split "
        "into fixed and per-image cost is rough: the cold job's rate "
        f"({ev['genlab_cold_images_per_s']:.2f} images/s through Inception, wall) and this slope "
        f"({1 / per_image:.2f} images/s) bracket it. 50,000 generated images against a cached "
        f"reference would take {50000 * per_image / 3600:.1f}-"
        f"{50000 / ev['genlab_cold_images_per_s'] / 3600:.1f} h on this CPU.\n\n"
    )

    d = r["data"]
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

    out.append(prepared_section(r))
    out.append("## 4. Peak memory\n")
    out.append(
        "RSS peak of each process (`wait4` ru_maxrss) and of its whole process tree "
        "(sampled every 0.25 s: W&B's service process, DataLoader workers). GPU: "
        f"{'nvidia-smi per process' if m['gpu'] else 'no GPU on this machine'}.\n"
    )
    rows = []
    for name, row in tr.items():
        for side in ("genlab", "hand"):
            p = row["reps"][0][side]["process"]
            rows.append(
                [
                    f"{'genlab-train' if side == 'genlab' else 'hand loop'} {name}",
                    fmt(p["peak_rss_mb"]),
                    fmt(p["peak_rss_tree_mb"]),
                    fmt(p["peak_gpu_mb"]),
                ]
            )
    for label, p in [
        ("genlab-eval (cold)", c),
        ("fidelity", f),
        ("genlab-eval -m (cached, sweep)", k["process"]),
        ("data loaders", d["process"]),
        ("genlab-train -m (scaling sweep)", r["scaling"]["process"]),
    ]:
        rows.append(
            [label, fmt(p["peak_rss_mb"]), fmt(p["peak_rss_tree_mb"]), fmt(p["peak_gpu_mb"])]
        )
    out.append(table(["process", "peak RSS MB", "peak tree RSS MB", "peak GPU MB"], rows))
    out.append("\n")

    sc = r["scaling"]
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
    out.append(startup_section(r))
    return tidy("".join(out))


def startup_section(r: dict) -> str:
    """Section 6: help, config printing and config errors, beside the bare imports."""
    st = r.get("startup")
    if not st:
        return ""
    out = [
        "## 6. Start-up: what a user waits for before training\n\n"
        f"Whole process, wall clock: median of {st['reps']} runs after a warm-up, each command "
        "as a user types it (the error rows exit 2 with one line). None of the genlab rows "
        "imports torch or Lightning (tests/test_startup.py checks that, not the time).\n\n"
    ]
    rows = [
        [f"`{x['command']}`", fmt(x["wall_s"], 2), fmt(x["peak_rss_mb"])] for x in st["commands"]
    ]
    out.append(table(["command", "wall s", "peak RSS MB"], rows))
    f = st["first_step"]
    floor = next((x["wall_s"] for x in st["commands"] if "pytorch_lightning" in x["command"]), None)
    out.append(
        "\nThe default run (`genlab-train trainer.max_steps=2`, W&B offline) to the end of its "
        f"first batch: **{f['first_step_s']:.2f} s**, of which imports, composing and building "
        f"data, model and metrics up to the callbacks {f['imports_compose_build_s']:.2f} s, "
        f"the rest of the build (loggers, Trainer, W&B's run start) "
        f"{f['build_rest_loggers_trainer_s']:.2f} s, and Lightning's fit set-up, the first "
        f"step and the callbacks and loggers after it {f['fit_start_to_first_batch_s']:.2f} s. "
        "The floor, "
        f"`import torch, pytorch_lightning` alone: {fmt(floor, 2)} s.\n"
    )
    return "".join(out)


def tidy(text: str) -> str:
    """One blank line around headings and tables, as Markdown renderers need."""
    lines, prev = [], ""
    for line in text.splitlines():
        table_edge = line.startswith("|") != prev.startswith("|")
        if prev and line and (prev.startswith("#") or table_edge):
            lines.append("")
        lines.append(line)
        prev = line
    out, blank = [], False
    for line in lines:
        if line or not blank:
            out.append(line)
        blank = not line
    return "\n".join(out).strip() + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results.json")
    print(markdown(json.loads(path.read_text())))
