"""Section 2 of run.py: genlab-eval, with a cold and a cached reference, against
torch-fidelity's ``fidelity`` CLI on the same images, and its time per generated image."""

import json
import statistics
import sys
from pathlib import Path

from measure import BIN, REPO, run, thread_env


def mtime(path: Path) -> float:
    return path.stat().st_mtime


def job_seconds(job_dir: Path) -> float:
    """A Hydra job's own time: from its .hydra/config.yaml (job start) to its metrics.json."""
    return mtime(job_dir / "metrics.json") - mtime(job_dir / ".hydra" / "config.yaml")


def bench_eval(size: dict, work: Path, ckpt: Path) -> dict:
    """genlab-eval (cold and cached reference) vs torch-fidelity's CLI on the same PNGs."""
    import torch

    from genlab.callbacks.images import save_images
    from genlab.checkpoints import load_model
    from genlab.config import instantiate
    from genlab.metrics import WEIGHTS_FILE

    sys.path.insert(0, str(REPO))
    from tests.inception import random_inception_weights

    n = size["eval_n"]
    ev = work / "eval"
    weights = random_inception_weights(ev / "inception" / WEIGHTS_FILE)
    # the reference images genlab-eval uses: the first n of the run's training split
    run_cfg, _ = load_model(str(ckpt))
    train = instantiate(run_cfg.data).dataset("train")
    real_dir = ev / "real"
    save_images(torch.stack([train[i][0] for i in range(n)]), real_dir, 0)

    env = thread_env("default")
    common = [
        f"ckpt_path={ckpt}",
        f"metrics.inception_weights={weights}",
        "metrics.inception_sha256=null",  # random weights in torch-fidelity's format
        f"metrics.num_real={n}",
        f"metrics.is_splits={min(10, n)}",
        f"metrics.batch_size={size['eval_batch']}",
    ]
    device = ["--gpu", "0"] if torch.cuda.is_available() else ["--cpu"]
    colds, fidelities = [], []
    for rep in range(size["eval_reps"]):  # alternating, each with an empty reference cache
        cold_dir = ev / f"genlab_cold_r{rep}"
        cold = run(
            [
                BIN / "genlab-eval",
                *common,
                f"metrics.cache_dir={ev / f'cache_r{rep}'}",
                f"metrics.num_samples={n}",
                f"metrics.kid_subset_size={min(1000, n)}",
                "save_samples=true",
                f"hydra.run.dir={cold_dir}",
            ],
            ev / f"genlab_cold_r{rep}.log",
            env,
            work,
        )
        cold["job_s"] = job_seconds(cold_dir)
        cold["metrics"] = json.loads((cold_dir / "metrics.json").read_text())["metrics"]
        colds.append(cold)
        fid_log = ev / f"fidelity_r{rep}.log"
        fidelity = run(
            [
                BIN / "fidelity",
                *device,
                "--isc",
                "--fid",
                "--kid",
                "--input1",
                ev / "genlab_cold_r0" / "samples",  # the same images every time
                "--input2",
                real_dir,
                "--feature-extractor-weights-path",
                weights,
                "--kid-subset-size",
                str(min(1000, n)),
                "--isc-splits",
                str(min(10, n)),
                "--batch-size",
                str(size["eval_batch"]),
                "--no-cache",
                "--json",
            ],
            fid_log,
            env,
            work,
        )
        text = fid_log.read_text()
        fidelity["metrics"] = json.loads(text[text.index("{") : text.rindex("}") + 1])
        fidelities.append(fidelity)
    cold = min(colds, key=lambda x: x["wall_s"])
    fidelity = min(fidelities, key=lambda x: x["wall_s"])
    common.append(f"metrics.cache_dir={ev / 'cache_r0'}")

    # the same checkpoint at several sample counts, all against the now cached reference
    sweep_dir = ev / "genlab_cached"
    sweep = run(
        [
            BIN / "genlab-eval",
            "-m",
            *common,
            f"metrics.num_samples={','.join(str(k) for k in size['eval_sweep'])}",
            "metrics.kid_subset_size=${metrics.num_samples}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        ev / "genlab_cached.log",
        env,
        work,
    )
    jobs = []
    for job in sorted((p for p in sweep_dir.iterdir() if (p / "metrics.json").exists()), key=mtime):
        m = json.loads((job / "metrics.json").read_text())
        jobs.append({"n_fake": m["protocol"]["n_fake"], "job_s": job_seconds(job)})
    cached = next(j for j in jobs if j["n_fake"] == n)
    fit = linear_fit([j["n_fake"] for j in jobs], [j["job_s"] for j in jobs])
    return {
        "n_fake": n,
        "n_real": n,
        "weights": "random InceptionV3 in torch-fidelity's format (tests/inception.py)",
        "genlab_cold": cold,
        "fidelity": fidelity,
        "reps": {
            "genlab_cold_wall_s": [c["wall_s"] for c in colds],
            "fidelity_wall_s": [f["wall_s"] for f in fidelities],
        },
        "genlab_cached": {**cached, "process": sweep},
        "sweep": jobs,
        "sweep_fit": fit,
        "genlab_cold_images_per_s": 2 * n / cold["wall_s"],
        "fidelity_images_per_s": 2 * n / fidelity["wall_s"],
        "ratio_wall": cold["wall_s"] / fidelity["wall_s"],
        "cached_speedup_job": cold["job_s"] / cached["job_s"],
    }


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least squares y = a + b x; with one point, b = y / x."""
    if len(set(x)) < 2:
        return {"intercept_s": 0.0, "s_per_image": y[0] / x[0]}
    mx, my = statistics.mean(x), statistics.mean(y)
    b = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sum(
        (xi - mx) ** 2 for xi in x
    )
    return {"intercept_s": my - b * mx, "s_per_image": b}
