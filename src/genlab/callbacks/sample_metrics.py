"""Sample metrics (FID, IS, KID, PR/DC, memorisation, iFID, modes, ...) in training and eval."""

import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from genlab.callbacks.checkpointing import fit_ends
from genlab.callbacks.images import save_images
from genlab.callbacks.sample_features import gather, real_features
from genlab.data.datasets import fetch
from genlab.errors import GenlabError, GenlabWarning
from genlab.metrics import LABEL, LOGITS, MODE, POOL, ImageMetrics
from genlab.metrics.knn import nearest
from genlab.metrics.names import every_result_key, result_keys
from genlab.rng import seeded

# result key -> logged key (val/is and val/kid are the means); every other key is val/<key>
RENAMED = {"is_mean": "val/is", "kid_mean": "val/kid"}
SPLITS = ("train", "val", "test")


def logged_key(name: str) -> str:
    """The ``val/...`` key a result is logged under."""
    return RENAMED.get(name, f"val/{name}")


def ifid_labels(real_labels: Tensor, per_class: int | None) -> Tensor:
    """The classes iFID's fakes are drawn for, in order: StudioGAN's protocol by default.

    StudioGAN (``worker.calculate_intra_class_fid``) draws, for each class, as many fakes as the
    reference holds of it; ``per_class`` draws that many of every class instead.
    """
    classes, counts = torch.unique(real_labels, return_counts=True)
    if per_class is not None:
        counts = torch.full_like(counts, per_class)
    return torch.repeat_interleave(classes, counts)


class SampleMetrics(pl.Callback):
    """Metrics of generated samples against cached real features; logs ``val/fid``...

    Runs after validation every ``every_n_epochs`` epochs and at the end of fit (whichever rule
    ends it: ``max_steps``, ``max_epochs``, ``max_time``; see ``FinalValidation``). Samples are
    split across DDP ranks in fixed chunks, each drawn under its own seed, and their features
    gathered once, so the value equals the single-process one. Chunk ``j`` is seeded with
    ``seed + j``; the training RNG is left untouched. The networks hang off this callback, not
    the module, so they never enter a checkpoint. Every metric reads the one feature pass.

    ``seeds`` > 1 (genlab-eval's EDM2 protocol) scores that many independent sample sets, under
    ``seed``, ``seed + 1``, ...: ``results`` are the first's, ``per_seed`` all of them.
    """

    def __init__(
        self,
        metrics: list[str] = ("fid", "is", "kid"),
        num_samples: int = 10000,
        num_real: int | None = None,
        reference_split: str = "train",
        heldout_split: str | None = None,
        every_n_epochs: int = 1,
        inception_weights: str | None = None,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        is_splits: int = 10,
        batch_size: int = 64,
        cache_dir: str = "~/.cache/genlab",
        seed: int = 0,
        seeds: int = 1,
        progress: bool = False,
        save_dir: str | None = None,
        backbone: str = "inception",
        resize: str = "tf1",
        inception_sha256: str | None = None,
        dinov2_weights: str | None = None,
        dinov2_arch: str = "vitl14",
        dinov2_sha256: str | None = None,
        clip_weights: str | None = None,
        clip_sha256: str | None = None,
        pr_k: int = 3,
        dc_k: int = 5,
        knn_block: int = 1024,
        jackknife: int = 0,
        ifid_per_class: int | None = None,
        vendi_q: float = 1.0,
        modes_classifier: dict[str, Any] | None = None,
        ppl: dict[str, Any] | None = None,
        classifier_weights: str | None = None,
        classifier: dict[str, Any] | None = None,
    ) -> None:
        if num_samples < 2 or (num_real is not None and num_real < 2):
            raise GenlabError("metrics.num_samples and metrics.num_real must be >= 2")
        for key, split in (("reference_split", reference_split), ("heldout_split", heldout_split)):
            if split not in (*SPLITS, None) or (split is None and key == "reference_split"):
                raise GenlabError(f"metrics.{key}={split!r}: use train, val or test")
        if heldout_split == reference_split and {"copies", "ct", "authenticity"} & set(metrics):
            raise GenlabError(
                f"metrics.heldout_split={heldout_split} is the reference split too: memorisation "
                "compares samples with the training images (metrics.reference_split=train) and "
                "images held out from them"
            )
        if every_n_epochs < 1:
            raise GenlabError(f"metrics.every_n_epochs={every_n_epochs} must be >= 1")
        if not (isinstance(seeds, int) and seeds >= 1):
            raise GenlabError(f"seeds={seeds} must be an integer >= 1")
        if ifid_per_class is not None and ifid_per_class < 2:
            raise GenlabError(f"metrics.ifid_per_class={ifid_per_class} must be >= 2 or null")
        if "kid" in metrics and kid_subset_size > num_samples:
            warnings.warn(
                f"metrics.kid_subset_size={kid_subset_size} > metrics.num_samples={num_samples};"
                " KID uses subsets of the sample count instead",
                GenlabWarning,
                stacklevel=2,
            )
        modes_classifier = dict(modes_classifier or {})
        modes_classifier.setdefault("cache_dir", cache_dir)
        self.ppl = None
        if "ppl" in metrics:
            from genlab.metrics.ppl import PPLSettings

            self.ppl = PPLSettings(**(ppl or {}))
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
            dinov2_sha256=dinov2_sha256,
            clip_weights=clip_weights,
            clip_sha256=clip_sha256,
            pr_k=pr_k,
            dc_k=dc_k,
            knn_block=knn_block,
            jackknife=jackknife,
            vendi_q=vendi_q,
            modes_classifier=modes_classifier,
            classifier_weights=classifier_weights,
            classifier={"cache_dir": cache_dir, **(classifier or {})},
        )
        self.metrics = tuple(metrics)
        self.num_samples, self.num_real = num_samples, num_real
        self.reference_split, self.heldout_split = reference_split, heldout_split
        self.every_n_epochs, self.ifid_per_class = every_n_epochs, ifid_per_class
        self.batch_size, self.seed, self.seeds, self.progress = batch_size, seed, seeds, progress
        self.cache_dir = Path(cache_dir).expanduser()
        self.save_dir = Path(save_dir) if save_dir else None
        self.results: dict[str, float] = {}
        self.per_seed: list[dict[str, float]] = []
        self.evaluated_step = -1  # global step of the last evaluation (FinalValidation reads it)
        self.reference: dict = {}

    @staticmethod
    def logged_keys() -> set[str]:
        """Every ``val/...`` key this callback can log, whatever its configuration."""
        return {logged_key(name) for name in every_result_key()}

    def computes(self, key: str) -> bool:
        """True when ``key`` (``val/fid``, ``val/kid_ci_low``, ...) is among what this logs."""
        m = self.image_metrics
        backbone = m.backbone.name if getattr(m, "backbone", None) is not None else "inception"
        names = [k for metric in self.metrics for k in result_keys(metric, backbone, m.jackknife)]
        return key in {logged_key(n) for n in (*names, "n_real", "n_fake")}

    def due(self, trainer: pl.Trainer) -> bool:
        """True where the metrics run: every n-th epoch, at the end of fit, and outside fit."""
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or fit_ends(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.due(trainer):
            return
        self.per_seed = []
        for i in range(self.seeds):  # rank-synchronous: every rank runs every evaluation
            self.per_seed.append(self.evaluate(trainer, pl_module, self.seed + i))
        self.results = self.per_seed[0]
        self.evaluated_step = trainer.global_step
        for name, value in self.results.items():
            # every rank holds the same gathered features, hence the same value: no reduction
            pl_module.log(logged_key(name), float(value))

    def conditional(self, pl_module: pl.LightningModule) -> bool:
        """True when samples are drawn for given classes (iFID on a conditional model)."""
        return "ifid" in self.metrics and bool(getattr(pl_module, "num_classes", 0))

    def reference_features(
        self, trainer: Any, device: torch.device, split: str | None = None
    ) -> dict[str, Tensor]:
        """Real {"pool": (N, D), "labels": (N,)} of the reference (or ``split``), cached."""
        split = split or self.reference_split
        real, n = real_features(
            trainer, self.image_metrics, split, self.num_real, self.cache_dir, self.batch_size,
            device, self.progress,
        )  # fmt: skip
        if split == self.reference_split:
            self.reference = {"split": split, "n_real": n, "cache_dir": str(self.cache_dir)}
        return real

    @torch.inference_mode()  # as Lightning runs validation: no autograd bookkeeping
    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, seed: int | None = None
    ) -> dict[str, float]:
        """Metric values of ``num_samples`` fresh samples (drawn under ``seed``) against the
        reference features."""
        seed = self.seed if seed is None else seed
        metrics = self.image_metrics.to(pl_module.device)
        real = self.reference_features(trainer, pl_module.device) if metrics.needs_real else {}
        heldout = None
        if metrics.needs_heldout and self.heldout_split is not None:
            heldout = self.reference_features(trainer, pl_module.device, self.heldout_split)[POOL]
        fake = self.sample_features(trainer, pl_module, seed)
        ifid_pool = ifid_fake_labels = None
        if self.conditional(pl_module):  # StudioGAN's protocol: its own set of fakes per class
            labels = ifid_labels(real["labels"], self.ifid_per_class)
            ifid = self.sample_features(trainer, pl_module, seed + 1_000_003, labels)
            ifid_pool, ifid_fake_labels = ifid[POOL].cpu(), ifid[LABEL].cpu().long()
            real_counts = torch.bincount(real["labels"])
            self.image_metrics.used["ifid_counts"] = {
                "real": real_counts.tolist(),
                "fake": torch.bincount(ifid_fake_labels, minlength=len(real_counts)).tolist(),
            }
        cpu = {k: v.cpu() for k, v in fake.items()}
        results = metrics.compute(
            real.get(POOL),
            cpu.get(POOL),
            cpu.get(LOGITS),
            real_labels=real.get("labels") if ifid_pool is not None else None,
            fake_labels=ifid_fake_labels,
            fake_modes=cpu[MODE].long() if MODE in cpu else None,
            heldout_pool=heldout,
            ifid_pool=ifid_pool,
        )
        if self.ppl is not None:
            results["ppl"] = self.ppl.score(trainer, pl_module, seed)
        return results

    def sample_features(
        self,
        trainer: Any,
        pl_module: pl.LightningModule,
        seed: int | None = None,
        labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Features of ``num_samples`` fresh samples, or one for each of ``labels`` (N,).

        Chunk ``j`` is drawn under ``seed * 1000003 + j``; a conditional model gets its classes
        in turn, so every class gets its share.
        """
        seed = self.seed if seed is None else seed
        n = self.num_samples if labels is None else len(labels)

        def chunk(j: int) -> tuple[Tensor, Tensor | None]:
            start = j * self.batch_size
            rows = torch.arange(start, min(start + self.batch_size, n))
            drawn = None
            if labels is not None:
                drawn = labels[rows].to(pl_module.device)
            elif self.conditional(pl_module):
                drawn = (rows % pl_module.num_classes).to(pl_module.device)
            with seeded(seed * 1_000_003 + j, pl_module.device):
                images = pl_module.sample(len(rows), drawn) if drawn is not None else (
                    pl_module.sample(len(rows))
                )  # fmt: skip
            if self.save_dir is not None and labels is None:
                save_images(images, self.save_dir, start)
            return images, drawn

        return gather(trainer, self.image_metrics, n, chunk, self.batch_size, self.progress)

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
