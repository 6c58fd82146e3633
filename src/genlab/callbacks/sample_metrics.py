"""Sample metrics (FID, IS, KID, PR/DC, copies, iFID, modes) in training and genlab-eval."""

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytorch_lightning as pl
import torch
from rich.progress import track
from torch import Tensor

from genlab.callbacks.checkpointing import fit_ends
from genlab.callbacks.images import save_images
from genlab.data.datasets import fetch
from genlab.errors import GenlabError, GenlabWarning
from genlab.metrics import (
    LABEL,
    LOGITS,
    MODE,
    POOL,
    ImageMetrics,
    load_reference_entry,
    store_reference,
)
from genlab.metrics.knn import nearest
from genlab.rng import seeded


def data_key(datamodule: pl.LightningDataModule) -> dict:
    """The data settings that change real images, for the reference-statistics cache key."""
    names = ("source", "image_size", "channels", "val_fraction", "split_seed", "limit", "binarize")
    key = {n: getattr(datamodule, n, None) for n in names}
    if key["source"] == "synthetic":
        key.update(size=datamodule.synthetic_size, classes=datamodule.synthetic_classes)
    if key["source"] == "stacked_mnist":
        key.update(size=datamodule.stacked_size)
    if key["source"] not in ("mnist5k", "stacked_mnist"):
        key["root"] = str(Path(getattr(datamodule, "root", "")).expanduser().resolve())
    if key["source"] == "prepared":  # a directory prepared again holds other images
        key["manifest"] = datamodule.manifest_sha256
    return key


# result key -> logged key (val/is and val/kid are the means); every other key is val/<key>
RENAMED = {"is_mean": "val/is", "kid_mean": "val/kid"}
# every key SampleMetrics can log, for the checkpoint monitor and optimized_metric
LOGGABLE = (
    "fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "density",
    "coverage", "copies", "ifid", "modes", "mode_kl", "n_real", "n_fake",
    *(f"{m}_ci_{side}" for m in ("fid", "kid", "precision", "recall") for side in ("low", "high")),
)  # fmt: skip


# which entry of metrics.metrics produces each result key
SOURCE = {"fid": "fid", "is_mean": "is", "is_std": "is", "kid_mean": "kid", "kid_std": "kid",
          "precision": "prdc", "recall": "prdc", "density": "prdc", "coverage": "prdc",
          "copies": "copies", "ifid": "ifid", "modes": "modes", "mode_kl": "modes"}  # fmt: skip
CI_SOURCE = {"fid": "fid", "kid": "kid", "precision": "prdc", "recall": "prdc"}


def logged_key(name: str) -> str:
    """The ``val/...`` key a result is logged under."""
    return RENAMED.get(name, f"val/{name}")


def single_process(datamodule: pl.LightningDataModule) -> SimpleNamespace:
    """What ``reference_features`` reads of a Trainer, for use outside one (genlab-sample)."""
    return SimpleNamespace(
        datamodule=datamodule,
        world_size=1,
        global_rank=0,
        is_global_zero=True,
        strategy=SimpleNamespace(broadcast=lambda x: x),
    )


class SampleMetrics(pl.Callback):
    """Metrics of generated samples against cached real features; logs ``val/fid``...

    Runs after validation every ``every_n_epochs`` epochs and at the end of fit (whichever rule
    ends it: ``max_steps``, ``max_epochs``, ``max_time``; see ``FinalValidation``). Samples are
    split across DDP ranks in fixed chunks, each drawn under its own seed, and their features
    gathered once, so the value equals the single-process one. Chunk ``j`` is seeded with
    ``seed + j``; the training RNG is left untouched. The networks hang off this callback, not
    the module, so they never enter a checkpoint. Every metric reads the one feature pass.
    """

    def __init__(
        self,
        metrics: list[str] = ("fid", "is", "kid"),
        num_samples: int = 10000,
        num_real: int | None = None,
        reference_split: str = "train",
        every_n_epochs: int = 1,
        inception_weights: str | None = None,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        is_splits: int = 10,
        batch_size: int = 64,
        cache_dir: str = "~/.cache/genlab",
        seed: int = 0,
        progress: bool = False,
        save_dir: str | None = None,
        backbone: str = "inception",
        resize: str = "tf1",
        inception_sha256: str | None = None,
        dinov2_weights: str | None = None,
        dinov2_arch: str = "vitl14",
        pr_k: int = 3,
        dc_k: int = 5,
        knn_block: int = 1024,
        bootstrap: int = 0,
        modes_classifier: dict[str, Any] | None = None,
    ) -> None:
        if num_samples < 2 or (num_real is not None and num_real < 2):
            raise GenlabError("metrics.num_samples and metrics.num_real must be >= 2")
        if reference_split not in ("train", "val", "test"):
            raise GenlabError(
                f"metrics.reference_split={reference_split!r}: use train, val or test"
            )
        if every_n_epochs < 1:
            raise GenlabError(f"metrics.every_n_epochs={every_n_epochs} must be >= 1")
        if "kid" in metrics and kid_subset_size > num_samples:
            warnings.warn(
                f"metrics.kid_subset_size={kid_subset_size} > metrics.num_samples={num_samples};"
                " KID uses subsets of the sample count instead",
                GenlabWarning,
                stacklevel=2,
            )
        modes_classifier = dict(modes_classifier or {})
        modes_classifier.setdefault("cache_dir", cache_dir)
        self.image_metrics = ImageMetrics(
            list(metrics),
            inception_weights,
            kid_subset_size,
            kid_subsets,
            is_splits,
            batch_size,
            backbone=backbone,
            resize=resize,
            inception_sha256=inception_sha256,
            dinov2_weights=dinov2_weights,
            dinov2_arch=dinov2_arch,
            pr_k=pr_k,
            dc_k=dc_k,
            knn_block=knn_block,
            bootstrap=bootstrap,
            modes_classifier=modes_classifier,
        )
        self.num_samples, self.num_real = num_samples, num_real
        self.reference_split, self.every_n_epochs = reference_split, every_n_epochs
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.cache_dir = Path(cache_dir).expanduser()
        self.save_dir = Path(save_dir) if save_dir else None
        self.results: dict[str, float] = {}
        self.evaluated_step = -1  # global step of the last evaluation (FinalValidation reads it)
        self.reference: dict = {}

    @staticmethod
    def logged_keys() -> set[str]:
        """The ``val/...`` keys this callback logs."""
        return {logged_key(name) for name in LOGGABLE}

    def computes(self, key: str) -> bool:
        """True when ``key`` (``val/fid``, ``val/recall_ci_low``, ...) is among what this logs."""
        names = {logged_key(n): n for n in LOGGABLE}
        name = names.get(key)
        metrics = set(self.image_metrics.metrics)
        if name is None:
            return False
        if "_ci_" in name:
            return self.image_metrics.bootstrap > 0 and CI_SOURCE[name.split("_ci_")[0]] in metrics
        return name in ("n_real", "n_fake") or SOURCE[name] in metrics

    def due(self, trainer: pl.Trainer) -> bool:
        """True where the metrics run: every n-th epoch, at the end of fit, and outside fit."""
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or fit_ends(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.due(trainer):
            return
        self.results = self.evaluate(trainer, pl_module)
        self.evaluated_step = trainer.global_step
        for name, value in self.results.items():
            # every rank holds the same gathered features, hence the same value: no reduction
            pl_module.log(logged_key(name), float(value))

    def conditional(self, pl_module: pl.LightningModule) -> bool:
        """True when samples are drawn for given classes (iFID on a conditional model)."""
        return "ifid" in self.image_metrics.metrics and bool(getattr(pl_module, "num_classes", 0))

    @torch.inference_mode()  # as Lightning runs validation: no autograd bookkeeping
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Metric values of ``num_samples`` fresh samples against the reference features."""
        metrics = self.image_metrics.to(pl_module.device)
        real = self.reference_features(trainer, pl_module.device) if metrics.needs_real else {}
        fake = self.sample_features(trainer, pl_module)
        cpu = {k: v.cpu() for k, v in fake.items()}
        conditional = self.conditional(pl_module)
        return metrics.compute(
            real.get(POOL),
            cpu.get(POOL),
            cpu.get(LOGITS),
            real_labels=real.get("labels") if conditional else None,
            fake_labels=cpu[LABEL].long() if conditional else None,
            fake_modes=cpu[MODE].long() if MODE in cpu else None,
        )

    def sample_features(self, trainer: Any, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """Features of ``num_samples`` fresh samples (and their class, when conditional)."""
        return self._gather(trainer, self.num_samples, lambda j: self._samples(pl_module, j))

    def _samples(self, pl_module: pl.LightningModule, chunk: int) -> tuple[Tensor, Tensor | None]:
        start = chunk * self.batch_size
        n = min(self.batch_size, self.num_samples - start)
        labels = None
        if self.conditional(pl_module):  # classes in turn: every class gets its share
            labels = (torch.arange(start, start + n) % pl_module.num_classes).to(pl_module.device)
        with seeded(self.seed * 1_000_003 + chunk, pl_module.device):
            images = pl_module.sample(n, labels) if labels is not None else pl_module.sample(n)
        if self.save_dir is not None:
            save_images(images, self.save_dir, start)
        return images, labels

    def reference_features(self, trainer: Any, device: torch.device) -> dict[str, Tensor]:
        """Real {"pool": (N, D), "labels": (N,)}: from the cache, or computed across ranks."""
        dataset = trainer.datamodule.dataset(self.reference_split)
        n = len(dataset) if self.num_real is None else min(self.num_real, len(dataset))
        key = self.image_metrics.reference_key(
            **data_key(trainer.datamodule), split=self.reference_split, n_real=n
        )
        self.reference = {
            "split": self.reference_split,
            "n_real": n,
            "cache_dir": str(self.cache_dir),
        }
        cached = load_reference_entry(key, self.cache_dir) if trainer.is_global_zero else None
        # rank 0 decides, so every rank takes the same branch of the collective below
        if trainer.strategy.broadcast(cached is not None):
            return cached if cached is not None else load_reference_entry(key, self.cache_dir)

        def real_chunk(j: int) -> tuple[Tensor, Tensor]:
            idx = list(range(j * self.batch_size, min(n, (j + 1) * self.batch_size)))
            batch = fetch(dataset, idx)
            return batch.images.to(device), batch.labels.to(device)

        real = self._gather(trainer, n, real_chunk)
        out = {POOL: real[POOL].cpu(), "labels": real[LABEL].cpu().long()}
        if trainer.is_global_zero:
            store_reference(key, self.cache_dir, out[POOL], out["labels"])
        return out

    def _gather(self, trainer: Any, n: int, chunk_fn) -> dict[str, Tensor]:
        """Features of chunks 0..ceil(n / batch) - 1, rank r doing r, r + W, ...; all ranks get all.

        Every rank runs the same number of chunk slots (padding ranks repeat the last chunk), and
        under DDP a short chunk's features are padded, so the gathered rows in chunk order start
        with the n wanted ones. Only the images asked for go through the networks.
        """
        bs, world, rank = self.batch_size, trainer.world_size, trainer.global_rank
        chunks = -(-n // bs)
        slots = -(-chunks // world)
        parts: dict[str, list[Tensor]] = {}
        steps = range(slots)
        if self.progress and trainer.is_global_zero:
            steps = track(steps, description=f"features of {n} images", transient=True)
        for s in steps:
            images, labels = chunk_fn(min(s * world + rank, chunks - 1))
            features = self.image_metrics.features(images)
            if labels is not None:
                features[LABEL] = labels
            for name, f in features.items():
                f = f.double().reshape(len(f), -1)  # (b, D); labels and modes as (b, 1)
                if world > 1 and len(f) < bs:  # the last chunk: equal shapes for all_gather
                    f = torch.cat([f, f[:1].expand(bs - len(f), -1)])
                parts.setdefault(name, []).append(f)
        out = {}
        for name, fs in parts.items():
            local = torch.cat(fs)  # (slots * bs, D)
            if world > 1:
                every = trainer.strategy.all_gather(local)  # (W, slots * bs, D)
                local = (
                    every.reshape(world, slots, bs, -1).transpose(0, 1).reshape(-1, local.shape[-1])
                )
            out[name] = local[:n] if name in (POOL, LOGITS) else local[:n, 0]
        return out

    @torch.inference_mode()
    def nearest_training(
        self, trainer: Any, pl_module: pl.LightningModule, count: int
    ) -> tuple[Tensor, Tensor]:
        """``count`` samples (B, C, H, W) and their nearest reference images in feature space."""
        metrics = self.image_metrics.to(pl_module.device)
        real = self.reference_features(trainer, pl_module.device)
        with seeded(self.seed * 1_000_003, pl_module.device):
            images = pl_module.sample(count)
        _, index = nearest(metrics.features(images)[POOL].cpu(), real[POOL], metrics.knn_block)
        dataset = trainer.datamodule.dataset(self.reference_split)
        return images, fetch(dataset, index.tolist()).images
