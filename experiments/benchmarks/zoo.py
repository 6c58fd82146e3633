"""Training-step cost of every model option, side by side: images/s at batch 64, 32 px, 3 channels.

    python experiments/benchmarks/zoo.py               # every conf/model option -> zoo.md, zoo.json
    python experiments/benchmarks/zoo.py --models gan sngan stylegan2
    python experiments/benchmarks/zoo.py --quick --out DIR   # batch 8: checks that each runs

Each model is built by genlab's own ``genlab.training.build`` from ``conf/train.yaml`` with its
option's defaults (the published widths), fed procedural images (``data=synthetic``), and fit on
the CPU with no logger, callbacks or metrics. A callback records the wall time of every training
batch; the first (allocator warm-up, first-call overhead) is left out and 3 are timed (quick: 1, 3).
For a GAN one batch is one discriminator step plus, every ``n_critic`` batches, one generator
step, and the timed batches span whole multiples of ``n_critic``; "images/s" counts the real
images of those batches. Threads: torch's default (one per core) unless ``--threads``.
Options that need another run's checkpoint (``vq_prior``) are skipped.
"""

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONF = HERE.parents[1] / "conf" / "model"
NEEDS_CHECKPOINT = {"vq_prior"}


def model_options() -> list[str]:
    return sorted(p.stem for p in CONF.glob("*.yaml") if p.stem not in NEEDS_CHECKPOINT)


def compose_model(model: str, batch: int, size: int):
    """``conf/train.yaml`` with ``model``'s defaults on procedural images, nothing but the fit."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from genlab.config import CONFIG_DIR

    overrides = [
        f"model={model}",
        "data=synthetic",
        f"data.image_size={size}",
        "data.channels=3",
        f"data.batch_size={batch}",
        "data.val_fraction=0.01",
        "metrics=none",
        "logger=none",
        "callbacks=none",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"genlab-zoo-{model}")
    return cfg


def measure(model: str, batch: int, timed: int, warmup: int, size: int) -> dict:
    """Steady-state seconds per batch and images/s of ``model``'s training step."""
    import pytorch_lightning as pl

    from genlab.training import build

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, *args) -> None:
            self.ends.append(time.perf_counter())

    cfg = compose_model(model, batch, size)
    n_critic = int(cfg.model.get("n_critic", 1) or 1)
    timed = -(-timed // n_critic) * n_critic  # whole D/G cycles
    cfg.data.synthetic_size = batch * (warmup + timed + 2)
    cfg.trainer.limit_train_batches = warmup + timed
    t0 = time.time()
    objs = build(cfg)
    clock = Clock()
    objs["trainer"].callbacks.append(clock)
    objs["trainer"].fit(objs["model"], datamodule=objs["datamodule"])
    # batch i's time runs from batch i-1's end: loader fetch, hooks and the step itself
    steady = [b - a for a, b in zip(clock.ends[warmup - 1 : -1], clock.ends[warmup:], strict=True)]
    params = sum(p.numel() for p in objs["model"].parameters() if p.requires_grad)
    return {
        "module": type(objs["model"]).__name__,
        "n_critic": n_critic,
        "trainable_params": params,
        "batch": batch,
        "image_size": size,
        "timed_batches": len(steady),
        "seconds_per_batch": sum(steady) / len(steady),
        "images_per_s": batch * len(steady) / sum(steady),
        "wall_s": time.time() - t0,
    }


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Training-step cost of each model option",
        "",
        f"`python experiments/benchmarks/zoo.py{' --quick' if results['quick'] else ''}` on "
        f"{m['cpu']} ({m['cores']} cores, torch {m['torch']}, {m['threads']} thread(s)), "
        f"{m['date_utc']}, load average {m['loadavg_start'][0]:.1f} at the start and "
        f"{m['loadavg_end'][0]:.1f} at the end. Batch {results['batch']}, "
        f"{results['image_size']} px, 3 channels, each option's default widths; steady state "
        f"after {results['warmup']} warm-up batch(es). A GAN batch is one D step plus a G step "
        "every n_critic batches.",
        "",
        "| model | module | trainable params | n_critic | s/batch | images/s | vs gan |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = results["models"].get("gan", {}).get("images_per_s")
    for name, r in results["models"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        ratio = f"{r['images_per_s'] / base:.3g}" if base else ""
        lines.append(
            f"| {name} | {r['module']} | {r['trainable_params'] / 1e6:.2f} M | {r['n_critic']} "
            f"| {r['seconds_per_batch']:.3f} | {r['images_per_s']:.1f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model options (default: all in conf/model)")
    parser.add_argument("--quick", action="store_true", help="batch 8, 3 timed batches")
    parser.add_argument("--out", type=Path, default=HERE, help="where zoo.{json,md} go")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    from genlab.console import quiet_libraries

    quiet_libraries()  # before Lightning loads: no tips and banners between the rows
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    # full: a few batches, as the largest nets (R3GAN, StyleGAN2) take tens of seconds a batch here
    batch, timed, warmup = (8, 3, 1) if args.quick else (64, 3, 1)
    size = 32
    models = args.models or model_options()
    results: dict = {
        "quick": args.quick,
        "batch": batch,
        "image_size": size,
        "warmup": warmup,
        "machine": {
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                platform.processor(),
            ),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg(),
        },
        "models": {},
    }
    failed = False
    for model in models:
        print(f"{model} ...", flush=True)
        try:
            results["models"][model] = measure(model, batch, timed, warmup, size)
        except Exception as err:  # noqa: BLE001 - one failing option must not hide the others
            failed = True
            results["models"][model] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
        print(f"  {results['models'][model]}", flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "zoo.md").write_text(markdown(results))
    print(f"wrote {args.out / 'zoo.md'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
