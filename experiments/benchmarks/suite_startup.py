"""Section 6 of run.py: how long each command a user waits on before training takes, and the
default run's time to its first training batch, by phase."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

from measure import BIN, run, thread_env, timer_overrides

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
