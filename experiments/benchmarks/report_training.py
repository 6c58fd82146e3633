"""Section 1 of results.md: genlab-train against the hand-written loop, the paired steps beside
Lightning's floor, and where genlab's extra step time goes."""

from md_tables import fmt, table


def threads_label(t: str, actual: int) -> str:
    return f"{actual} (OMP_NUM_THREADS=1)" if t == "1" else f"{actual} (default)"


def training_section(r: dict) -> str:
    """Section 1: genlab-train against the hand-written loop, paired steps, attribution."""
    s, tr = r["sizes"], r["training"]
    out = []
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
    return "".join(out)


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
