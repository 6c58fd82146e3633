"""Running and timing the benchmark's processes, shared by run.py's sections and gpu.py.

Each measurement is a subprocess started here with its torch thread setting, watched for its wall
time and peak memory (RSS, PSS of a mapped file, GPU); its StepTimer record becomes steady-state
images/s or paired genlab/hand-written step statistics; ``machine`` describes where it ran.
"""

import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BIN = Path(sys.executable).parent
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


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, read from /proc (no psutil: gpu.sh runs without it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])  # "pid (comm) state ppid ..."
            children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 once it has gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def run(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> dict:
    """Run ``cmd``; wall time, exit code, peak RSS of the process and of its whole tree."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ {' '.join(str(c) for c in cmd)}", flush=True)
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        peak = {"tree": 0, "gpu": None}
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.25):
                pids = process_tree(proc.pid)
                peak["tree"] = max(peak["tree"], sum(rss_bytes(p) for p in pids))
                gpu = gpu_used_mib(set(pids))
                if gpu is not None:
                    peak["gpu"] = max(peak["gpu"] or 0.0, gpu)

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


MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def smaps_kib(pid: int, file: str) -> dict[str, int]:
    """Rss and Pss (KiB) of process ``pid``, all its mappings and those of ``file``, from
    /proc/PID/smaps (zeros once it has gone)."""
    kib = {"rss": 0, "pss": 0, "file_rss": 0, "file_pss": 0}
    inside = False
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if MAPPING.match(line):
                inside = line.rstrip().endswith(file)
            elif line.startswith(("Rss:", "Pss:")):
                key, value = line[:3].lower(), int(line.split()[1])
                kib[key] += value
                if inside:
                    kib[f"file_{key}"] += value
    return kib


def run_mapped(cmd: list, log: Path, env: dict[str, str], cwd: Path, file: Path) -> dict:
    """Run ``cmd``; peak RSS and PSS of its process tree, and of its mappings of ``file``.

    RSS counts a shared page once per process that maps it, PSS splits it among them: a file
    every process maps but the page cache holds once has sum(PSS) = its size.
    """
    print(f"  $ {' '.join(str(c) for c in cmd)}", flush=True)
    peak = {"processes": 0, "rss": 0, "pss": 0, "file_rss": 0, "file_pss": 0}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        while proc.poll() is None:
            pids = process_tree(proc.pid)
            now = {"processes": len(pids), "rss": 0, "pss": 0, "file_rss": 0, "file_pss": 0}
            for pid in pids:
                for key, kib in smaps_kib(pid, str(file)).items():
                    now[key] += kib
            peak = {k: max(v, now[k]) for k, v in peak.items()}
            time.sleep(0.3)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}; log: {log}")
    processes = peak.pop("processes")
    return {"processes": processes, **{f"peak_{k}_mb": kib / 1024 for k, kib in peak.items()}}


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


# ---------------------------------------------------------------- machine


def machine() -> dict:
    """The machine and library versions a run used, and its load average at the start."""
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
