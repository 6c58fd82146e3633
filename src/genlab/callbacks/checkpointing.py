"""Checkpoints: atomic writes, the run config and RNG state inside them, one owner of last.ckpt."""

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.seed import isolate_rng

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

    Lightning saves no RNG state: without this the noise after a resume differs from the
    uninterrupted run. Stored as tensors so checkpoints load with ``weights_only=True``. Restored
    at ``on_fit_start``, before Lightning builds the training iterator (the data order itself is
    a function of seed and epoch, and the loader's position is in the checkpoint: see
    ``genlab.data.ResumableLoader``).
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

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        s, self._loaded = self._loaded, None
        if s is None:
            return
        torch.set_rng_state(s["torch"])
        keys = s["numpy"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, s["numpy_pos"], *s["numpy_gauss"]))
        random.setstate((s["python_version"], tuple(s["python"].tolist()), s["python_gauss"]))
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])


def flush_loggers(trainer: pl.Trainer) -> None:
    """Write the loggers' buffered rows: a run resumed from the checkpoint about to be saved
    continues the CSV from its step, so every row before that step must be on disk."""
    for logger in trainer.loggers:
        logger.save()


class LastCheckpoint(pl.Callback):
    """The one owner of ``last.ckpt``: its path, its regular writes and its write at a signal.

    Writes ``{dirpath}/last.ckpt`` at the end of every epoch (after its validation), and at a
    preemption signal (SIGTERM; SIGUSR1/SIGUSR2 in a SLURM job: ``preemption.Preemption``):
    training stops at the end of the current batch with Lightning's SIGTERMException, and this
    saves through the trainer (atomic IO) before the process exits. ``genlab-train auto_resume``
    reads ``path``. Lightning's ModelCheckpoint writes
    ``last`` only alongside a top-k save, so a best-only checkpoint on a metric that runs every
    few epochs would leave ``last`` stale.

    Args:
        every_epoch: False keeps only the write at a signal (``callbacks=none``).
    """

    def __init__(self, dirpath: str, every_epoch: bool = True) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_epoch = every_epoch
        self._saved_step = -1

    def _save(self, trainer: pl.Trainer, again: bool = False) -> None:
        if not self.every_epoch:
            return
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        if again or trainer.global_step != self._saved_step:
            self._saved_step = trainer.global_step  # first: the checkpoint carries it
            flush_loggers(trainer)
            # the whole state (optimizers, loops), said explicitly: Lightning logs a line otherwise
            trainer.save_checkpoint(self.path, weights_only=False)

    def rewrite(self, trainer: pl.Trainer) -> None:
        """Write again at the same step: the final validation changed the callbacks' state."""
        self._save(trainer, again=True)

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
            flush_loggers(trainer)
            trainer.save_checkpoint(self.path, weights_only=False)
            log.info(
                f"stopped by a signal: saved {self.path} at step {trainer.global_step}; "
                f"resume with ckpt_path={self.path} (or auto_resume=true in the same run directory)"
            )


def fit_ends(trainer: pl.Trainer) -> bool:
    """True from the batch that ends fit: ``max_steps`` or the last epoch's end, or a stop asked."""
    last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    max_epochs = trainer.max_epochs or -1
    last_epoch = last_batch and 0 < max_epochs <= trainer.current_epoch + 1
    return last_epoch or 0 < trainer.max_steps <= trainer.global_step or trainer.should_stop


class FinalValidation(pl.Callback):
    """Score the final model at the end of fit, then offer it to the best checkpoint.

    When ``max_steps`` (or ``max_time``) ends fit inside an epoch, or the last epoch is not one
    of ``check_val_every_n_epoch``, Lightning runs no validation: the last scores would be
    stale, ``train()`` would return them, and the best checkpoint could never be the final model.
    Then this runs the validation loop once more (SampleMetrics is due: see ``fit_ends``), logged
    at the last batch's step as an epoch-end validation is, with the RNG isolated so a
    continued run draws what an uninterrupted one would. ModelCheckpoint saves only on its
    ``every_n_epochs``, so the final model is offered to it here, and ``last.ckpt`` rewritten
    with the updated best. A fit that ended on a validation is not validated again, unless the
    sample metrics skipped it (early stopping decides after they ran, on an epoch they were not
    due).

    Args:
        metrics: the SampleMetrics callback, if any (its ``evaluated_step`` is read).
    """

    def __init__(self, last: LastCheckpoint, metrics: pl.Callback | None = None) -> None:
        self.last, self.metrics = last, metrics
        self._validated_step = -1

    def _stale(self, trainer: pl.Trainer) -> bool:
        step = trainer.global_step
        skipped = self.metrics is not None and self.metrics.evaluated_step != step
        return self._validated_step != step or skipped

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.enable_validation:
            return
        if self._stale(trainer):
            with isolate_rng():
                self._validate(trainer)
        for best in trainer.checkpoint_callbacks:
            if isinstance(best, ModelCheckpoint):
                self._offer(trainer, best)
        self.last.rewrite(trainer)

    @staticmethod
    def _validate(trainer: pl.Trainer) -> None:
        """Run the fit's validation loop now; its values are logged at the last batch's step."""
        epoch_loop = trainer.fit_loop.epoch_loop
        # Lightning steps this back for epoch-end logging too: the last batch's step, not one past
        epoch_loop._batches_that_stepped -= 1
        trainer.validating = True
        try:
            epoch_loop.val_loop.run()
        finally:
            trainer.training = True
            epoch_loop._batches_that_stepped += 1

    @staticmethod
    def _offer(trainer: pl.Trainer, best: ModelCheckpoint) -> None:
        """Let ``best`` keep the final model if it scores among its top k (no-op if it saved it).

        Named after the epoch its last batch ran in (0-based, as an epoch-end save names it):
        by ``on_train_end`` Lightning has counted that epoch complete and ``current_epoch`` is
        one more, which named a 1-epoch run's best ``best-epoch001.ckpt``.
        """
        if best._last_global_step_saved == trainer.global_step:
            return
        if best.monitor is not None and best.monitor not in trainer.callback_metrics:
            return
        candidates = best._monitor_candidates(trainer)
        candidates["epoch"] = torch.tensor(max(trainer.current_epoch - 1, 0))
        best._save_topk_checkpoint(trainer, candidates)
