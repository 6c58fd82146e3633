"""FID, IS and KID of generated samples during training and in genlab-eval."""

import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from rich.progress import track
from torch import Tensor

from genlab.callbacks.checkpointing import fit_ends
from genlab.callbacks.images import save_images
from genlab.data import fetch
from genlab.errors import GenlabError
from genlab.metrics import LOGITS, POOL, ImageMetrics, load_reference, store_reference
from genlab.rng import seeded


def data_key(datamodule: pl.LightningDataModule) -> dict:
    """The data settings that change real images, for the reference-statistics cache key."""
    names = ("source", "image_size", "channels", "val_fraction", "split_seed", "limit", "binarize")
    key = {n: getattr(datamodule, n, None) for n in names}
    if key["source"] == "synthetic":
        key.update(size=datamodule.synthetic_size, classes=datamodule.synthetic_classes)
    if key["source"] != "mnist5k":
        key["root"] = str(Path(getattr(datamodule, "root", "")).expanduser().resolve())
    if key["source"] == "prepared":  # a directory prepared again holds other images
        key["manifest"] = datamodule.manifest_sha256
    return key


# result key -> logged key (val/is and val/kid are the means)
LOGGED = {
    "fid": "val/fid",
    "is_mean": "val/is",
    "is_std": "val/is_std",
    "kid_mean": "val/kid",
    "kid_std": "val/kid_std",
    "n_real": "val/n_real",
    "n_fake": "val/n_fake",
}


class SampleMetrics(pl.Callback):
    """FID, IS and KID of generated samples against cached real features; logs ``val/fid``...

    Runs after validation every ``every_n_epochs`` epochs and at the end of fit (whichever rule
    ends it: ``max_steps``, ``max_epochs``, ``max_time``; see ``FinalValidation``). Samples are
    split across DDP ranks in fixed chunks, each drawn under its own seed, and their features
    gathered once, so the value equals the single-process one. Chunk ``j`` is seeded with
    ``seed + j``; the training RNG is left untouched. The Inception network hangs off this
    callback, not the module, so it never enters a checkpoint.
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
                stacklevel=2,
            )
        self.image_metrics = ImageMetrics(
            list(metrics), inception_weights, kid_subset_size, kid_subsets, is_splits, batch_size
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
        return set(LOGGED.values())

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
            pl_module.log(LOGGED[name], float(value))

    @torch.inference_mode()  # as Lightning runs validation: no autograd bookkeeping
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Metric values of ``num_samples`` fresh samples against the reference features."""
        metrics = self.image_metrics.to(pl_module.device)
        real = self.reference_features(trainer, pl_module)
        fake = self._gather(trainer, self.num_samples, lambda j: self._samples(pl_module, j))
        return metrics.compute(real, fake[POOL].cpu(), fake[LOGITS].cpu())

    def _samples(self, pl_module: pl.LightningModule, chunk: int) -> Tensor:
        start = chunk * self.batch_size
        with seeded(self.seed * 1_000_003 + chunk, pl_module.device):
            images = pl_module.sample(min(self.batch_size, self.num_samples - start))
        if self.save_dir is not None:
            save_images(images, self.save_dir, start)
        return images

    def reference_features(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        """Real pool features (N, 2048): from the cache, or computed across ranks and cached."""
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
        cached = load_reference(key, self.cache_dir) if trainer.is_global_zero else None
        # rank 0 decides, so every rank takes the same branch of the collective below
        if trainer.strategy.broadcast(cached is not None):
            return cached if cached is not None else load_reference(key, self.cache_dir)

        def real_chunk(j: int) -> Tensor:
            idx = list(range(j * self.batch_size, min(n, (j + 1) * self.batch_size)))
            return fetch(dataset, idx).images.to(pl_module.device)

        pool = self._gather(trainer, n, real_chunk)[POOL].cpu()
        if trainer.is_global_zero:
            store_reference(key, self.cache_dir, pool)
        return pool

    def _gather(self, trainer: pl.Trainer, n: int, chunk_fn) -> dict[str, Tensor]:
        """Features of chunks 0..ceil(n / batch) - 1, rank r doing r, r + W, ...; all ranks get all.

        Every rank runs the same number of chunk slots (padding ranks repeat the last chunk), and
        under DDP a short chunk's features are padded, so the gathered rows in chunk order start
        with the n wanted ones. Only the images asked for go through Inception.
        """
        bs, world, rank = self.batch_size, trainer.world_size, trainer.global_rank
        chunks = -(-n // bs)
        slots = -(-chunks // world)
        parts: dict[str, list[Tensor]] = {}
        steps = range(slots)
        if self.progress and trainer.is_global_zero:
            steps = track(steps, description=f"features of {n} images", transient=True)
        for s in steps:
            features = self.image_metrics.features(chunk_fn(min(s * world + rank, chunks - 1)))
            for name, f in features.items():
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
            out[name] = local[:n]
        return out
