"""genlab's benchmark suite (issue 7): training overhead, evaluation, data loading, memory, scaling.

    python experiments/benchmarks/run.py            # the full run, ~10-15 min on 2 CPU cores
    python experiments/benchmarks/run.py --quick    # tiny sizes, checks that everything runs
    python experiments/benchmarks/run.py --out DIR --work DIR --keep
    python experiments/benchmarks/run.py --only prepared   # rerun section 3b into results.*

Everything runs as a user runs it: genlab-train, genlab-eval and torch-fidelity's ``fidelity`` as
subprocesses, each timed from the outside (wall clock, peak RSS); genlab-train also gets the
StepTimer callback (steptimer.py) through the callbacks config group for per-batch timestamps.
Writes results.json and results.md into --out (default: this directory). The sections are in
suite_training.py, suite_eval.py, suite_data.py and suite_startup.py; measure.py runs and watches
each process; report.py writes results.md.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from measure import HERE, machine
from suite_data import bench_data, bench_prepared, bench_scaling
from suite_eval import bench_eval
from suite_startup import bench_startup
from suite_training import bench_paired, bench_training

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (1.5-3 minutes)")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.{json,md} go")
    parser.add_argument("--work", type=Path, help="run directories (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep --work (default: delete it)")
    parser.add_argument(
        "--only",
        choices=["startup", "prepared"],
        help="run one section (6, or 3b); replace it in --out's results",
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
        if args.only == "prepared":
            print("3b. data sources", flush=True)
            results["prepared"] = bench_prepared(size, work)
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
