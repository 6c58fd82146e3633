"""Post-hoc EMA study (README.md here): one DCGAN run on MNIST-5k, its EMA length chosen after
training, against runs trained once per fixed EMA decay.

Each seed trains, in one process on one thread:
- ``ns``: DCGAN (the default run's model) with post-hoc EMA snapshots every half epoch (2,240
  images: 35 batches of 64, so that epochs 10 and 25 end on a snapshot);
- ``rpgan``: the same networks with RpGAN + R1 + R2 (gamma 0.05), snapshots likewise;
- ``decay0.99`` and ``decay0.999``: ``ns`` with a classical EMA generator of that decay.
Every generator is scored at epoch 10 (the default run's length) and at the end: the raw
generator, each fixed-decay EMA, and the post-hoc profiles rebuilt at that point. The score is the
Frechet distance in the penultimate (128-d) features of the digit classifier genlab trains for
Stacked MNIST, 5,000 samples against the 5,000 MNIST-5k digits, plus the entropy of the
classifier's mean class distribution (ln 10 = 2.303 when all digits are equally common).

    python experiments/posthoc_ema/study.py --seed 1 --out experiments/posthoc_ema/runs
    python experiments/posthoc_ema/study.py --report experiments/posthoc_ema/runs
    python experiments/posthoc_ema/study.py --grid experiments/posthoc_ema/runs/rpgan_seed1 \
        --sigma 0.1
    python experiments/posthoc_ema/study.py --score RUN   # a genlab-train run's last.ckpt
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from genlab.config import CONFIG_DIR
from genlab.data.sources import mnist5k_raw
from genlab.evaluation import apply_profile
from genlab.metrics.fid import fid_from_features
from genlab.metrics.modes import ModeClassifier
from genlab.models import posthoc_ema as phema
from genlab.training import build

HERE = Path(__file__).resolve().parent
SIGMAS = (0.02, 0.03, 0.05, 0.07, 0.10, 0.15, 0.20, 0.25)
RUNS = {
    "ns": ["callbacks.posthoc_ema.every_n_images=2240"],
    "rpgan": [
        "callbacks.posthoc_ema.every_n_images=2240", "model.loss=rpgan", "model.r1_gamma=0.05",
        "model.r2_gamma=0.05",
    ],
    "decay0.99": ["model.ema_decay=0.99"],
    "decay0.999": ["model.ema_decay=0.999"],
}  # fmt: skip
N_SAMPLES = 5000


class Keep(pl.Callback):
    """The sampling generator's state at the end of the given epochs (standing statistics in)."""

    def __init__(self, epochs: tuple[int, ...]) -> None:
        self.epochs, self.kept, self.images = epochs, {}, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.epochs:
            with torch.no_grad():
                g = pl_module.sampling_generator
            self.kept[epoch] = {
                "images": self.images,
                "raw": {k: v.clone() for k, v in pl_module.generator.state_dict().items()},
                "sampling": {k: v.clone() for k, v in g.state_dict().items()},
            }


class Scorer:
    """FD in the digit classifier's 128-d features, and its class entropy."""

    def __init__(self, cache_dir: str) -> None:
        classifier = ModeClassifier(cache_dir)
        self.net = classifier.net.members[0][:-2].eval()  # up to the 128-d ReLU
        self.head = classifier.net.members[0][-2:].eval()
        images, _ = mnist5k_raw()
        self.real = self.features(images.float() / 127.5 - 1)[0]

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.cat([self.net(b) for b in x.split(500)])
        probs = torch.cat([self.head(f).softmax(1) for f in feats.split(500)])
        return feats.double(), probs.double()

    @torch.no_grad()
    def score(self, model, seed: int = 0) -> dict[str, float]:
        torch.manual_seed(seed)
        x = torch.cat([model.sample(500) for _ in range(N_SAMPLES // 500)])
        x = torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1  # the 8-bit images
        feats, probs = self.features(x)
        p = probs.mean(0)
        entropy = float(-(p * p.clamp_min(1e-12).log()).sum())
        return {"fd": fid_from_features(self.real, feats, warn=False), "entropy": entropy}


def train(name: str, seed: int, out: Path, epochs: int) -> tuple[object, Keep, float, Path]:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(
            config_name="train",
            overrides=[
                f"seed={seed}", f"trainer.max_epochs={epochs}", "metrics=none", "logger=csv",
                "callbacks.progress_bar=null", *RUNS[name],
            ],
        )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / f"{name}_seed{seed}")
    objs = build(cfg)
    keep = Keep(tuple(sorted({min(10, epochs), epochs})))
    objs["trainer"].callbacks.append(keep)
    start = time.monotonic()
    objs["trainer"].fit(objs["model"], datamodule=objs["datamodule"])
    return objs["model"], keep, time.monotonic() - start, Path(cfg.paths.output_dir)


def study(seed: int, out: Path, epochs: int, cache_dir: str) -> dict:
    torch.set_num_threads(1)
    scorer = Scorer(cache_dir)
    rows = []
    for name in RUNS:
        model, keep, seconds, run_dir = train(name, seed, out, epochs)
        model.eval()
        ema_net = model.generator_ema
        for epoch, kept in keep.kept.items():
            base = {"run": name, "seed": seed, "epoch": epoch, "train_seconds": seconds}
            model.generator.load_state_dict(kept["raw"])
            if ema_net is not None:
                model.generator_ema = ema_net
                ema_net.load_state_dict(kept["sampling"])
                model._standing_at = model._ema_updates  # kept with its standing statistics
                ema = f"ema {model.hparams.ema_decay}"
                rows.append({**base, "generator": ema, **scorer.score(model)})
                model.generator_ema = None  # the raw generator samples next
            rows.append({**base, "generator": "raw", **scorer.score(model)})
            if "posthoc_ema" not in " ".join(RUNS[name]):
                continue
            snapshots = phema.read_snapshots(run_dir / "ema_snapshots")
            reference = phema.sampling_tensors(model)
            for sigma in SIGMAS:
                try:
                    terms, info = phema.plan(snapshots, sigma, images=kept["images"])
                except Exception as e:  # the fit is too loose at this point: say so, go on
                    rows.append({**base, "generator": f"posthoc {sigma}", "refused": str(e)})
                    continue
                apply_profile(model, terms, reference)
                row = {**base, "generator": f"posthoc {sigma}", "fit_error": info["fit_error"]}
                rows.append({**row, **scorer.score(model)})
                model.generator.load_state_dict(kept["raw"])
            print(json.dumps(rows[-1]), flush=True)
    return {"seed": seed, "epochs": epochs, "rows": rows}


def report(folder: Path) -> str:
    """A Markdown table: mean (and spread) over seeds of each generator's FD and entropy."""
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*.json"))]
    rows = [r for res in results for r in res["rows"] if "fd" in r]
    keys = sorted({(r["run"], r["epoch"], r["generator"]) for r in rows}, key=str)
    lines = [
        "| run | epoch | generator | FD (digit features) | class entropy | seeds | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, epoch, generator in keys:
        sel = [r for r in rows if (r["run"], r["epoch"], r["generator"]) == (run, epoch, generator)]
        fd = np.array([r["fd"] for r in sel])
        ent = np.array([r["entropy"] for r in sel])
        spread = f" ± {fd.std(ddof=1):.2f}" if len(sel) > 1 else ""
        seconds = np.mean([r["train_seconds"] for r in sel])
        lines.append(
            f"| {run} | {epoch} | {generator} | {fd.mean():.2f}{spread} | {ent.mean():.3f} | "
            f"{len(sel)} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def grid(run_dir: Path, sigma: float | None, out: Path) -> None:
    """The fixed-noise grid of a run's last checkpoint, through the post-hoc profile ``sigma``
    (rebuilt at the last snapshot) or, with None, through the raw generator."""
    from genlab.callbacks.images import grid_uint8, save_png
    from genlab.checkpoints import load_model

    _, model = load_model(str(run_dir / "checkpoints" / "last.ckpt"))
    if sigma is not None:
        snapshots = phema.read_snapshots(run_dir / "ema_snapshots")
        terms, _ = phema.plan(snapshots, sigma)
        apply_profile(model, terms, phema.sampling_tensors(model))
    with torch.no_grad():
        save_png(grid_uint8(model.grid_images()["samples"]), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--out", type=Path, default=HERE / "runs")
    parser.add_argument("--cache-dir", default="~/.cache/genlab")
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--grid", type=Path, default=None, help="a run directory: its grid")
    parser.add_argument("--sigma", type=float, default=None, help="--grid's profile")
    parser.add_argument("--score", type=Path, default=None, help="a run directory: its score")
    args = parser.parse_args()
    if args.score is not None:
        from genlab.checkpoints import load_model

        torch.set_num_threads(1)
        _, model = load_model(str(args.score / "checkpoints" / "last.ckpt"))
        print(json.dumps(Scorer(args.cache_dir).score(model)))
        return
    if args.grid is not None:
        name = f"{args.grid.name}_{'raw' if args.sigma is None else args.sigma}.png"
        grid(args.grid, args.sigma, HERE / name)
        return
    if args.report is not None:
        table = report(args.report)
        (HERE / "results.md").write_text(table + "\n")
        print(table)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    result = study(args.seed, args.out, args.epochs, args.cache_dir)
    (args.out / f"seed{args.seed}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
