"""Checkpoints: atomic writes, the run config and RNG state inside them, one owner of last.ckpt."""

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from genlab.atomic import atomic_torch_save

log = logging.getLogger("genlab")


class RunConfig(pl.Callback):
    """Store the run's resolved config in each checkpoint: eval and sampling rebuild from it."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint["genlab_config"] = self.config


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


class LastCheckpoint(pl.Callback):
    """The one owner of ``last.ckpt``: its path, its regular writes and its SIGTERM write.

    Writes ``{dirpath}/last.ckpt`` at the end of every epoch (after its validation), and on
    SIGTERM (what SLURM sends before preemption): Lightning stops at the end of the current
    batch and raises SIGTERMException, and this saves through the trainer (atomic IO) before the
    process exits. ``genlab-train auto_resume`` reads ``path``. Lightning's ModelCheckpoint writes
    ``last`` only alongside a top-k save, so a best-only checkpoint on a metric that runs every
    few epochs would leave ``last`` stale.

    Args:
        every_epoch: False keeps only the SIGTERM write (``callbacks=none``).
    """

    def __init__(self, dirpath: str, every_epoch: bool = True) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_epoch = every_epoch
        self._saved_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        if not self.every_epoch:
            return
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

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self._saved_step = trainer.global_step
            trainer.save_checkpoint(self.path)
            log.info(
                f"SIGTERM: saved {self.path} at step {trainer.global_step}; resume with ckpt_path="
            )
