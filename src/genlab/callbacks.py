"""Callbacks Lightning lacks: image grids, FID/IS/KID of samples, the run config in checkpoints."""

import logging
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.utilities.exceptions import SIGTERMException
from rich.progress import track
from torch import Tensor
from torchvision.utils import make_grid

from genlab.atomic import atomic_torch_save
from genlab.data import fetch
from genlab.errors import GenlabError
from genlab.metrics import (
    LOGITS,
    POOL,
    ImageMetrics,
    load_reference,
    store_reference,
    to_uint8,
)

log = logging.getLogger("genlab")


def logs_written(trainer: pl.Trainer) -> bool:
    """True on steps whose logged values reach the loggers (every ``log_every_n_steps``).

    Each ``self.log`` costs ~0.5 ms on a small CPU, so modules log secondary values only then.
    Lightning's own test for it is private; without it, every step counts.
    """
    return getattr(trainer._logger_connector, "should_update_logs", True)


def grid_uint8(images: Tensor, nrow: int = 8) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> one (H', W', 3) uint8 grid, rounded as the metrics round."""
    grid = make_grid(
        images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=2, pad_value=1.0
    )
    return to_uint8(grid[None])[0].permute(1, 2, 0).numpy()  # (H', W', 3)


def save_images(images: Tensor, directory: Path, start: int) -> None:
    """Write (B, C, H, W) [-1, 1] images as lossless PNGs ``{start + i:06d}.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()):
        save_png(image, directory / f"{start + i:06d}.png")


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an (H, W, C) uint8 array as PNG (grayscale when C == 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


class ImageGrid(pl.Callback):
    """After validation, save ``pl_module.grid_images()`` as PNGs and log them to image loggers.

    Files: ``{dirpath}/{name}_epoch{E:03d}.png`` (``samples``, and ``reconstructions`` for VAEs).
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 1, nrow: int = 8) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        with torch.no_grad():
            grids = {k: grid_uint8(v, self.nrow) for k, v in pl_module.grid_images().items()}
        for name, grid in grids.items():
            save_png(grid, self.dirpath / f"{name}_epoch{trainer.current_epoch:03d}.png")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(f"images/{name}", [grid], step=trainer.global_step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(
                        f"images/{name}", grid, trainer.global_step, dataformats="HWC"
                    )


class RunConfig(pl.Callback):
    """Store the run's resolved config in each checkpoint: eval and sampling rebuild from it."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint["genlab_config"] = self.config


def data_key(datamodule: pl.LightningDataModule) -> dict:
    """The data settings that change real images, for the reference-statistics cache key."""
    names = ("source", "image_size", "channels", "val_fraction", "split_seed", "limit", "binarize")
    key = {n: getattr(datamodule, n, None) for n in names}
    if key["source"] == "synthetic":
        key.update(size=datamodule.synthetic_size, classes=datamodule.synthetic_classes)
    if key["source"] != "mnist5k":
        key["root"] = str(Path(getattr(datamodule, "root", "")).expanduser().resolve())
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

    Runs after validation every ``every_n_epochs`` epochs (and at the last epoch). Samples are
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
        self.reference: dict = {}

    @staticmethod
    def logged_keys() -> set[str]:
        """The ``val/...`` keys this callback logs."""
        return set(LOGGED.values())

    def due(self, trainer: pl.Trainer) -> bool:
        """True on epochs where the metrics run: every n-th, the last, and always outside fit."""
        if trainer.state.fn != "fit":
            return True
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.due(trainer):
            return
        self.results = self.evaluate(trainer, pl_module)
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
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        start = chunk * self.batch_size
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + chunk)
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that a kill cannot truncate: temp file beside the target, fsync, rename.

    Lightning's own write goes through a temp file in the system temp dir and a move, which
    across filesystems is a copy: a kill during it leaves a truncated ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint: dict, path: str, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)


class ResumeState(pl.Callback):
    """RNG states in every checkpoint, restored on resume, so a resumed run repeats exactly.

    Lightning saves no RNG state: without this the data order and the noise after a resume
    differ from the uninterrupted run. Stored as tensors so checkpoints load with
    ``weights_only=True``. Restored at ``on_train_start``, just before the first batch is drawn.
    """

    def __init__(self) -> None:
        self._loaded: dict | None = None

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        py_version, py_state, py_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": np_state[2],
            "numpy_gauss": [np_state[3], np_state[4]],
            "python": torch.tensor(py_state, dtype=torch.int64),
            "python_version": py_version,
            "python_gauss": py_gauss,
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        s, self._loaded = self._loaded, None
        if s is None:
            return
        torch.set_rng_state(s["torch"])
        keys = s["numpy"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, s["numpy_pos"], *s["numpy_gauss"]))
        random.setstate((s["python_version"], tuple(s["python"].tolist()), s["python_gauss"]))
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])


class SaveOnSigterm(pl.Callback):
    """On SIGTERM (what SLURM sends before preemption) write ``last.ckpt`` before exiting.

    Lightning stops at the end of the current batch and raises SIGTERMException; this saves
    through the trainer (atomic IO), so the job can be resumed or requeued from there.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(path)
            log.info(f"SIGTERM: saved {path} at step {trainer.global_step}; resume with ckpt_path=")


class LastCheckpoint(pl.Callback):
    """``last.ckpt`` at the end of every epoch (after its validation): what a resume starts from.

    Lightning's ModelCheckpoint writes ``last`` only alongside a top-k save, so a best-only
    checkpoint on a metric that runs every few epochs would leave ``last`` stale.
    """

    def __init__(self, dirpath: str) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self._saved_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        if trainer.global_step != self._saved_step:
            self._saved_step = trainer.global_step  # first: the checkpoint carries it
            trainer.save_checkpoint(self.path)

    def state_dict(self) -> dict:
        return {"saved_step": self._saved_step}

    def load_state_dict(self, state_dict: dict) -> None:
        # a resumed run finishes the restored epoch first: do not write the same step again
        self._saved_step = state_dict["saved_step"]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)  # epochs without validation


class GANMixedPrecision(MixedPrecision):
    """16-mixed for the GAN's two optimizers: one GradScaler update per iteration, not per step.

    Lightning's plugin calls ``scaler.update()`` after every optimizer step, so a D step that
    overflows lowers the scale before G has stepped with it. PyTorch's recipe for several
    optimizers is ``step`` each, then ``update`` once; ``GAN.training_step`` calls
    ``update_scaler`` after its last step.
    """

    def optimizer_step(self, optimizer, model, closure, **kwargs):
        if self.scaler is None:  # bf16: no scaler
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        closure()
        self.scaler.unscale_(optimizer)  # here, so gradient clipping sees true gradients
        self._after_closure(model, optimizer)
        return self.scaler.step(optimizer, **kwargs)  # skips the step on inf/NaN gradients

    def update_scaler(self) -> None:
        """Adjust the loss scale once, after all of this iteration's optimizer steps."""
        if self.scaler is not None:
            self.scaler.update()


class FastPath(pl.Callback):
    """Opt-in speed-ups that may change numerics: channels-last memory, torch.compile.

    Compiles the networks (``module.networks()``), never the LightningModule, so checkpoints
    keep their keys and the manual GAN step stays ordinary Python.
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last, self.compile = channels_last, compile

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            for net in pl_module.networks():
                net.compile()  # in place: state_dict keys are unchanged
