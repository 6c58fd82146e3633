"""genlab's benchmark suite (issue 7): training overhead, evaluation, data loading, memory, scaling.

    python experiments/benchmarks/run.py            # the full run, ~10-15 min on 2 CPU cores
    python experiments/benchmarks/run.py --quick    # tiny sizes, checks that everything runs
    python experiments/benchmarks/run.py --out DIR --work DIR --keep

Everything runs as a user runs it: genlab-train, genlab-eval and torch-fidelity's ``fidelity`` as
subprocesses, each timed from the outside (wall clock, peak RSS); genlab-train also gets the
StepTimer callback (steptimer.py) through the callbacks config group for per-batch timestamps.
Writes results.json and results.md into --out (default: this directory).
"""

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent

# Default sizes finish in about 12 minutes on 2 shared CPU cores; --quick in 1.5-3 minutes.
SIZES = {
    "full": {
        # (model, torch threads, max_epochs, limit_train_batches, reps): genlab and hand-written
        # runs alternate; the best rep of each is reported. MNIST-5k has 70 batches per epoch.
        # Default threads are slow on a shared 2-core machine, hence the shorter runs.
        "train": [
            ("gan", "1", 1, 45, 2),
            ("vae", "1", 3, None, 2),
            ("gan", "default", 1, 20, 1),
            ("vae", "default", 1, None, 1),
        ],
        "warmup": 5,  # first batches of a run left out of the steady-state rate
        "val_batches": None,  # validation at its default (all 8 val batches)
        "scale_batch": [32, 64, 128, 256],
        "scale_size": [32, 64],
        "scale_batches": 8,  # per setting, after scale_warmup
        "scale_warmup": 2,
        "eval_n": 128,  # generated and real images; a multiple of the metrics batch size (64)
        "eval_sweep": [64, 128],
        "eval_batch": 64,
        "eval_reps": 2,  # genlab-eval and fidelity alternate; the faster run of each counts
        "data_files": 1000,
        "data_epochs": 3,
        "model_steps": 5,
        "startup_reps": 5,  # runs of each start-up command after one warm-up; the median counts
        "prepared_files": 2000,  # 128 px RGB PNGs and JPEGs for data=folder vs data=prepared
        "prepared_epochs": 3,
        "share_images": 8000,  # the 128 px RGB array DDP ranks and workers map (393 MB)
        "share_size": 128,
    },
    "quick": {
        "train": [("gan", "1", 1, 6, 1), ("vae", "1", 1, 10, 1)],
        "warmup": 2,
        "val_batches": 1,
        "scale_batch": [16, 32],
        "scale_size": [32],
        "scale_batches": 3,
        "scale_warmup": 1,
        "eval_n": 8,
        "eval_sweep": [4, 8],
        "eval_batch": 4,
        "eval_reps": 1,
        "data_files": 160,
        "data_epochs": 2,
        "model_steps": 1,
        "startup_reps": 1,
        "prepared_files": 128,
        "prepared_epochs": 2,
        "share_images": 512,
        "share_size": 64,
    },
}
MB = 1 << 20


# ---------------------------------------------------------------- running and watching processes


def thread_env(threads: str) -> dict[str, str]:
    """The environment with OMP_NUM_THREADS=threads, or without it ("default": all cores)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def gpu_used_mib(pids: set[int]) -> float | None:
    """GPU memory used by ``pids`` in MiB (nvidia-smi), or None without a GPU."""
    if not shutil.which("nvidia-smi"):
        return None
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split(",") for line in out.strip().splitlines() if line.strip()]
    return sum(float(m) for p, m in rows if int(p) in pids)


def run(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> dict:
    """Run ``cmd``; wall time, exit code, peak RSS of the process and of its whole tree."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ {' '.join(str(c) for c in cmd)}", flush=True)
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        peak = {"tree": 0, "gpu": None}
        done = threading.Event()

        def watch() -> None:
            try:
                root = psutil.Process(proc.pid)
                while not done.wait(0.25):
                    procs = [root, *root.children(recursive=True)]
                    rss = 0
                    for p in procs:
                        with contextlib.suppress(psutil.Error):
                            rss += p.memory_info().rss
                    peak["tree"] = max(peak["tree"], rss)
                    gpu = gpu_used_mib({p.pid for p in procs})
                    if gpu is not None:
                        peak["gpu"] = max(peak["gpu"] or 0.0, gpu)
            except psutil.Error:
                pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # wait4 gives this child's own rusage: its peak RSS (ru_maxrss, KiB on Linux)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        end = time.time()
        done.set()
        watcher.join()
    result = {
        "cmd": [str(c) for c in cmd],
        "start": start,
        "wall_s": end - start,
        "returncode": proc.returncode,
        "peak_rss_mb": usage.ru_maxrss * 1024 / MB,
        "peak_rss_tree_mb": peak["tree"] / MB,
        "peak_gpu_mb": peak["gpu"],
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "log": str(log),
    }
    if proc.returncode != 0:
        tail = log.with_suffix(".err").read_text()[-3000:]
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}; stderr tail:\n{tail}")
    return result


# ---------------------------------------------------------------- timing analysis


def steady(timing: dict, warmup: int) -> dict:
    """Steady-state rate from batch-end timestamps, leaving out the first ``warmup`` batches.

    Each later epoch counts from its own start (so the loader's epoch start is included) but
    not the validation between epochs, which is reported on its own.
    """
    bs = timing["batch_size"]
    span, n, steps = 0.0, 0, []
    for e, epoch in enumerate(timing["epochs"]):
        t = epoch["batch_end"]
        if e == 0:
            if len(t) <= warmup:
                raise RuntimeError(f"only {len(t)} batches: need more than warmup={warmup}")
            t0, t = t[warmup - 1], t[warmup:]
        else:
            t0 = epoch["start"]
        if not t:
            continue
        span += t[-1] - t0
        n += len(t)
        steps += [b - a for a, b in zip([t0, *t[:-1]], t, strict=True)]
    val = [v[1] - v[0] for v in timing.get("validation", []) if len(v) == 2]
    first = timing["epochs"][0]
    return {
        "batch_size": bs,
        "batches": n,
        "images_per_s": n * bs / span,
        "median_step_s": statistics.median(steps),
        "images_per_s_median": bs / statistics.median(steps),
        "first_batch_s": first["batch_end"][0] - first["start"],
        "validation_s_per_epoch": statistics.mean(val) if val else None,
        "torch_threads": timing["torch_threads"],
        "peak_rss_fit_mb": timing["peak_rss_fit"] / MB if timing.get("peak_rss_fit") else None,
        "cuda_peak_mb": (timing["cuda_peak_allocated"] or 0) / MB or None,
        "device": timing["device"],
    }


def timer_overrides(path: str) -> list[str]:
    """Hydra overrides that add the StepTimer callback, writing to ``path``."""
    target = "+callbacks.step_timer._target_=steptimer.StepTimer"
    return [target, f"+callbacks.step_timer.path={path}"]


# ---------------------------------------------------------------- 1. training overhead


def train_command(size: dict, model: str, epochs: int, limit, out: Path, timing: Path) -> list:
    """genlab-train at its defaults (but metrics=none), timed by StepTimer into ``timing``."""
    cmd = [
        BIN / "genlab-train",
        f"model={model}",
        "metrics=none",  # no FID during training: same work whatever weights exist
        f"trainer.max_epochs={epochs}",
        f"hydra.run.dir={out}",
        *timer_overrides(str(timing)),
    ]
    if limit:
        cmd.append(f"++trainer.limit_train_batches={limit}")
    if size["val_batches"]:
        cmd.append(f"++trainer.limit_val_batches={size['val_batches']}")
    return cmd


def pair_stats(pairs: list[tuple[float, float]]) -> dict:
    """Paired step times (Lightning-run s, hand-written s) -> medians, ratios and spread."""
    ratios = sorted(h / g for g, h in pairs)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {
        "pairs": len(pairs),
        "step_ms": 1000 * statistics.median(g for g, _ in pairs),
        "hand_step_ms": 1000 * statistics.median(h for _, h in pairs),
        "extra_ms": 1000 * statistics.median(g - h for g, h in pairs),
        "ratio": statistics.median(ratios),  # hand time / genlab time = genlab's relative speed
        "ratio_q1": q[0],
        "ratio_q3": q[2],
        "ratio_of_sums": sum(h for _, h in pairs) / sum(g for g, _ in pairs),
    }


def bench_paired(size: dict, work: Path) -> dict:
    """genlab-train with the hand-written step after each of its steps (StepTimer pair=true),
    one thread; and the same for a minimal LightningModule in a bare Trainer (workloads.py
    floor): what Lightning's loop alone costs with these networks."""
    rows: dict[str, dict] = {}
    for model, threads, max_epochs, limit, _ in size["train"]:
        if threads != "1":
            continue
        out = work / "paired" / model
        timing = out / "timing.json"
        cmd = [*train_command(size, model, max_epochs, limit, out, timing)]
        cmd.append("+callbacks.step_timer.pair=true")
        run(cmd, out / "stdout.log", thread_env("1"), work)
        pairs = json.loads(timing.read_text())["pairs"][size["warmup"] :]
        batches = len(pairs) + size["warmup"] + 1
        floor_json = work / "paired" / f"floor_{model}.json"
        cmd = [sys.executable, HERE / "workloads.py", "floor", model, str(batches), floor_json]
        run(cmd, floor_json.with_suffix(".log"), thread_env("1"), work)
        floor = pair_stats(json.loads(floor_json.read_text())["pairs"])
        rows[model] = {"model": model, **pair_stats(pairs), "lightning_floor": floor}
        print(
            f"  {model} paired: genlab/hand speed {rows[model]['ratio']:.3f}, "
            f"minimal LightningModule {floor['ratio']:.3f}",
            flush=True,
        )
    return {"models": rows}


def bench_training(size: dict, work: Path) -> dict:
    """genlab-train vs the hand-written loop, GAN and VAE, per thread setting, alternating."""
    rows: dict[str, dict] = {}
    max_reps = max(cell[4] for cell in size["train"])
    for rep in range(max_reps):
        for model, threads, max_epochs, limit, reps in size["train"]:
            if rep >= reps:
                continue
            env = thread_env(threads)
            name = f"{model}_t{threads}"
            out = work / "train" / f"{name}_r{rep}"
            timing = out / "timing.json"
            cmd = train_command(size, model, max_epochs, limit, out, timing)
            proc = run(cmd, out / "stdout.log", env, work)
            t = json.loads(timing.read_text())
            g = {**steady(t, size["warmup"]), "process": proc}
            g["startup_s"] = t["epochs"][0]["start"] - proc["start"]
            n_batches = sum(len(e["batch_end"]) for e in t["epochs"])

            hand_json = work / "train" / f"{name}_hand_r{rep}.json"
            hcmd = [sys.executable, HERE / "workloads.py", "hand", model, str(n_batches), hand_json]
            hproc = run(hcmd, hand_json.with_suffix(".log"), env, work)
            ht = json.loads(hand_json.read_text())
            h = {**steady(ht, size["warmup"]), "process": hproc}
            h["startup_s"] = ht["epochs"][0]["start"] - hproc["start"]
            row = rows.setdefault(name, {"model": model, "threads": threads, "reps": []})
            row["reps"].append({"genlab": g, "hand": h, "run_dir": str(out)})
            print(
                f"  {name} rep {rep}: genlab {g['images_per_s']:.0f} img/s, "
                f"hand {h['images_per_s']:.0f} img/s",
                flush=True,
            )
    for row in rows.values():
        best_g = max((r["genlab"] for r in row["reps"]), key=lambda x: x["images_per_s"])
        best_h = max((r["hand"] for r in row["reps"]), key=lambda x: x["images_per_s"])
        row["genlab_images_per_s"] = best_g["images_per_s"]
        row["hand_images_per_s"] = best_h["images_per_s"]
        row["ratio"] = best_g["images_per_s"] / best_h["images_per_s"]
        row["ratio_median_step"] = best_h["median_step_s"] / best_g["median_step_s"]
        row["batch_size"] = best_g["batch_size"]
        row["batches_timed"] = best_g["batches"]
        # where genlab's extra time per step goes (in-process, timers around each part)
        att = work / "train" / f"attribute_{row['model']}.json"
        if row["threads"] == "1" and not att.exists():
            n = min(70, max(c[3] or 70 for c in size["train"] if c[0] == row["model"]))
            cmd = [sys.executable, HERE / "workloads.py", "attribute", row["model"], str(n), att]
            run(cmd, att.with_suffix(".log"), thread_env("1"), work)
            row["attribution"] = json.loads(att.read_text())
    return rows


# ---------------------------------------------------------------- 2. evaluation


def mtime(path: Path) -> float:
    return path.stat().st_mtime


def job_seconds(job_dir: Path) -> float:
    """A Hydra job's own time: from its .hydra/config.yaml (job start) to its metrics.json."""
    return mtime(job_dir / "metrics.json") - mtime(job_dir / ".hydra" / "config.yaml")


def bench_eval(size: dict, work: Path, ckpt: Path) -> dict:
    """genlab-eval (cold and cached reference) vs torch-fidelity's CLI on the same PNGs."""
    import torch

    from genlab.callbacks.images import save_images
    from genlab.config import instantiate, load_model
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


# ---------------------------------------------------------------- 3. data, 5. scaling


def bench_data(size: dict, work: Path) -> dict:
    out = work / "data.json"
    cmd = [
        sys.executable,
        HERE / "workloads.py",
        "data",
        work / "png_folder",
        str(size["data_files"]),
        out,
        str(size["data_epochs"]),
        str(size["model_steps"]),
    ]
    proc = run(cmd, work / "data.log", thread_env("1"), work)
    return {**json.loads(out.read_text()), "process": proc}


def bench_scaling(size: dict, work: Path) -> dict:
    """DCGAN images/s over batch size x image size on synthetic data: one genlab-train sweep."""
    sweep_dir = work / "scaling"
    per_run = size["scale_warmup"] + size["scale_batches"]
    # enough synthetic images for per_run batches of the largest size after the 10% val split
    n_images = int(per_run * max(size["scale_batch"]) / 0.9) + max(size["scale_batch"])
    cmd = [
        BIN / "genlab-train",
        "-m",
        "model=gan",
        "data=synthetic",
        f"data.batch_size={','.join(map(str, size['scale_batch']))}",
        f"data.image_size={','.join(map(str, size['scale_size']))}",
        f"data.synthetic_size={n_images}",
        "logger=csv",
        "metrics=none",
        "trainer.max_epochs=1",
        f"++trainer.limit_train_batches={per_run}",
        f"hydra.sweep.dir={sweep_dir}",
        *timer_overrides("${paths.output_dir}/timing.json"),
    ]
    proc = run(cmd, work / "scaling.log", thread_env("1"), work)
    rows = []
    for timing in sorted(sweep_dir.glob("*/timing.json")):
        t = json.loads(timing.read_text())
        rows.append(
            {"batch_size": t["batch_size"], "image_size": t["image_size"]}
            | steady(t, size["scale_warmup"])
        )
    rows.sort(key=lambda r: (r["image_size"], r["batch_size"]))
    return {"rows": rows, "process": proc, "synthetic_size": n_images}


# ---------------------------------------------------------------- 3b. prepared datasets

MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def mapped_kib(pid: int, file: str) -> tuple[int, int]:
    """Rss and Pss (KiB) of process ``pid``'s mappings of ``file``, from /proc/PID/smaps."""
    rss = pss = 0
    inside = False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if MAPPING.match(line):
                inside = line.rstrip().endswith(file)
            elif inside and line.startswith(("Rss:", "Pss:")):
                kib = int(line.split()[1])
                rss, pss = (rss + kib, pss) if line[0] == "R" else (rss, pss + kib)
    return rss, pss


def run_mapped(cmd: list, log: Path, env: dict[str, str], cwd: Path, file: Path) -> dict:
    """Run ``cmd``; peak RSS and PSS of its process tree, and of its mappings of ``file``.

    RSS counts a shared page once per process that maps it, PSS splits it among them: a file
    every process maps but the page cache holds once has sum(PSS) = its size.
    """
    import psutil

    print(f"  $ {' '.join(str(c) for c in cmd)}", flush=True)
    peak = {"processes": 0, "rss": 0, "pss": 0, "file_rss": 0, "file_pss": 0}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                procs = [root, *root.children(recursive=True)]
                now = {"processes": len(procs), "rss": 0, "pss": 0, "file_rss": 0, "file_pss": 0}
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        info = p.memory_full_info()
                        now["rss"] += info.rss // 1024
                        now["pss"] += info.pss // 1024
                        rss, pss = mapped_kib(p.pid, str(file))
                        now["file_rss"] += rss
                        now["file_pss"] += pss
                peak = {k: max(v, now[k]) for k, v in peak.items()}
            time.sleep(0.3)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}; log: {log}")
    processes = peak.pop("processes")
    return {"processes": processes, **{f"peak_{k}_mb": kib / 1024 for k, kib in peak.items()}}


def bench_prepared(size: dict, work: Path) -> dict:
    """data=folder vs data=prepared images/s; and the memory of a prepared array that 2 DDP
    ranks with 2 workers each map, against one process."""
    out = work / "prepared.json"
    cmd = [sys.executable, HERE / "workloads.py", "prepared", work / "prepared_data"]
    cmd += [str(size["prepared_files"]), out, str(size["prepared_epochs"])]
    proc = run(cmd, work / "prepared.log", thread_env("1"), work)
    result = {**json.loads(out.read_text()), "process": proc}
    px, n = size["share_size"], size["share_images"]
    array_dir = work / "share_array"
    prep = [sys.executable, "-m", "genlab.prepare", "data=synthetic", f"data.synthetic_size={n}"]
    prep += [f"data.image_size={px}", "data.channels=3", f"out={array_dir}"]
    run(prep, work / "share_prepare.log", thread_env("1"), work)
    file = array_dir / "train.npy"
    share = {"images": n, "image_size": px, "array_mb": file.stat().st_size / MB}
    for name, ranks, workers in (("one_process", 1, 0), ("ddp2_workers2", 2, 2)):
        done = work / f"share_{name}.json"
        cmd = [sys.executable, HERE / "workloads.py", "share", array_dir, str(px), str(ranks)]
        cmd += [str(workers), done]
        row = run_mapped(cmd, work / f"share_{name}.log", thread_env("1"), work, file)
        share[name] = {"ranks": ranks, "workers": workers, **row, **json.loads(done.read_text())}
    result["share"] = share
    print(
        f"  prepared: {result['prepared_64_images_per_s']:.0f} img/s at 64 px, "
        f"{result['ratio_per_worker']['png']:.0f}x data=folder PNG per worker; "
        f"array {share['array_mb']:.0f} MB, mapped PSS over "
        f"{share['ddp2_workers2']['processes']} processes "
        f"{share['ddp2_workers2']['peak_file_pss_mb']:.0f} MB",
        flush=True,
    )
    return result


# ---------------------------------------------------------------- 6. start-up

# (label, command, expected exit status): what a user waits for before any training starts
STARTUP = [
    ("genlab-train --help", ["genlab-train", "--help"], 0),
    ("genlab-train --cfg job", ["genlab-train", "--cfg", "job"], 0),
    ("genlab-train --cfg all", ["genlab-train", "--cfg", "all"], 0),
    ("genlab-train --info", ["genlab-train", "--info"], 0),
    ("genlab-train nosuch=1 (unknown key)", ["genlab-train", "nosuch=1"], 2),
    ("genlab-train seed=abc (wrong type)", ["genlab-train", "seed=abc"], 2),
    ("genlab-train ckpt_path=missing.ckpt", ["genlab-train", "ckpt_path=missing.ckpt"], 2),
    ("genlab-eval --help", ["genlab-eval", "--help"], 0),
    ("genlab-eval ckpt_path=missing.ckpt", ["genlab-eval", "ckpt_path=run/missing.ckpt"], 2),
    ("genlab-sample --help", ["genlab-sample", "--help"], 0),
    ("genlab-sample ckpt_path=missing.ckpt", ["genlab-sample", "ckpt_path=missing.ckpt"], 2),
    ("genlab-compare --help", ["genlab-compare", "--help"], 0),
    ("python -c 'import hydra'", ["python", "-c", "import hydra"], 0),
    ("python -c 'import torch'", ["python", "-c", "import torch"], 0),
    (
        "python -c 'import torch, pytorch_lightning'",
        ["python", "-c", "import torch, pytorch_lightning"],
        0,
    ),
]


# Runs argv[1:] and prints its wall time, exit status and peak RSS. A child of this small
# process, not of the benchmark (which holds torch): Linux carries the parent's RSS peak
# across fork and exec into the child's ru_maxrss.
TIME_ONE = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "status": os.waitstatus_to_exitcode(status),
                  "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def time_command(cmd: list[str], expect: int, env: dict[str, str], cwd: Path) -> dict:
    """Wall time and peak RSS of one run of ``cmd``, which must exit with ``expect``."""
    done = subprocess.run(
        [sys.executable, "-c", TIME_ONE, *cmd], capture_output=True, text=True, env=env, cwd=cwd
    )
    result = json.loads(done.stdout)
    if result.pop("status") != expect:
        raise RuntimeError(f"{' '.join(cmd)}: expected exit {expect}:\n{done.stderr[-2000:]}")
    return result


def bench_startup(size: dict, work: Path) -> dict:
    """Each start-up command, median of ``startup_reps`` runs after a warm-up; then the time to
    the first training step of the default run, by phase (StepTimer timestamps)."""
    env, reps = thread_env("default"), size["startup_reps"]
    cwd = work / "startup"
    cwd.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, cmd, expect in STARTUP:
        exe = [str(BIN / cmd[0]) if cmd[0] != "python" else sys.executable, *cmd[1:]]
        if reps > 1:
            time_command(exe, expect, env, cwd)  # warm-up: file cache, .pyc
        runs = [time_command(exe, expect, env, cwd) for _ in range(reps)]
        walls = [r["wall_s"] for r in runs]
        row = {"command": label, "runs_s": walls, "wall_s": statistics.median(walls)}
        row["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in runs)
        rows.append(row)
        print(f"  {label}: {row['wall_s']:.2f} s, {row['peak_rss_mb']:.0f} MB", flush=True)
    first = [first_step(work / f"startup_first_{i}", env) for i in range(max(1, reps // 2))]
    median = {k: statistics.median(f[k] for f in first) for k in first[0]}
    print(f"  default run, first step done after {median['first_step_s']:.2f} s", flush=True)
    return {"commands": rows, "reps": reps, "first_step": median, "first_step_runs": first}


def first_step(run_dir: Path, env: dict[str, str]) -> dict:
    """The default genlab-train run (W&B offline) to its first batch: seconds per phase."""
    timing = run_dir / "timing.json"
    cmd = [BIN / "genlab-train", "trainer.max_steps=2", f"hydra.run.dir={run_dir}"]
    proc = run(
        [*cmd, *timer_overrides(str(timing))],
        run_dir / "log.txt",
        {**env, "WANDB_MODE": "offline"},
        run_dir.parent,
    )
    t = json.loads(timing.read_text())
    start, batch = proc["start"], t["epochs"][0]["batch_end"][0]
    return {
        "imports_compose_build_s": t["created"] - start,  # up to the callbacks being built
        "build_rest_loggers_trainer_s": t["fit_start"] - t["created"],  # W&B init among them
        "fit_start_to_first_batch_s": batch - t["fit_start"],
        "first_step_s": batch - start,
    }


# ---------------------------------------------------------------- machine and report


def machine() -> dict:
    import pytorch_lightning
    import torch
    import torch_fidelity
    import torchmetrics

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(int(mem) / 1024**2, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "torch_fidelity": torch_fidelity.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (1.5-3 minutes)")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.{json,md} go")
    parser.add_argument("--work", type=Path, help="run directories (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep --work (default: delete it)")
    parser.add_argument(
        "--only", choices=["startup"], help="run one section; replace it in --out's results"
    )
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    work = args.work or Path(tempfile.mkdtemp(prefix="genlab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = {"mode": mode, "sizes": size, "machine": machine()}
    if args.only:  # the other sections come from the last full run
        previous = args.out / "results.json"
        if not previous.is_file():
            parser.error(f"--only replaces one section of {previous}, which does not exist")
        results = json.loads(previous.read_text())
    try:
        if args.only == "startup":
            print("6. start-up", flush=True)
            results["startup"] = bench_startup(size, work)
            write_results(results, args, t0, partial=True)
            return
        print("1. training overhead", flush=True)
        results["training"] = bench_training(size, work)
        results["paired"] = bench_paired(size, work)
        gan_run = results["training"]["gan_t1"]["reps"][0]["run_dir"]
        print("2. evaluation", flush=True)
        results["eval"] = bench_eval(size, work, Path(gan_run) / "checkpoints" / "last.ckpt")
        print("3. data loading", flush=True)
        results["data"] = bench_data(size, work)
        print("3b. prepared datasets", flush=True)
        results["prepared"] = bench_prepared(size, work)
        print("5. scaling", flush=True)
        results["scaling"] = bench_scaling(size, work)
        print("6. start-up", flush=True)
        results["startup"] = bench_startup(size, work)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    write_results(results, args, t0)


def write_results(
    results: dict, args: argparse.Namespace, t0: float, partial: bool = False
) -> None:
    """results.json and results.md into --out; ``partial``: one section was rerun."""
    results["machine"]["loadavg_end"] = os.getloadavg()
    if not partial:
        results["total_s"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    from report import markdown

    (args.out / "results.md").write_text(markdown(results))
    print(f"wrote {args.out / 'results.md'} and results.json in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
