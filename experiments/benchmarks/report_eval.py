"""Section 2 of results.md: genlab-eval against torch-fidelity's ``fidelity`` CLI, the metric
values side by side, and evaluation time against the number of generated images."""

from md_tables import fmt, table


def eval_section(r: dict) -> str:
    """Section 2: genlab-eval against torch-fidelity's CLI, and time vs sample count."""
    s, ev = r["sizes"], r["eval"]
    out = []
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
    return "".join(out)
