"""Progress as log lines: epoch, step, images seen, speed, latest losses and metrics, time left."""

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer

from genlab.callbacks.checkpointing import fit_ends
from genlab.console import clock, eta

log = logging.getLogger("genlab")


def batch_len(batch: Any) -> int:
    """Images in one ``(images, labels)`` batch (or a bare tensor of images)."""
    return len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)


def done_fraction(trainer: pl.Trainer, epoch: int, batches: int) -> float:
    """How much of fit is done, by whichever of max_steps / max_epochs ends it first (0 to 1)."""
    fractions = [0.0]
    if trainer.max_steps > 0:
        fractions.append(trainer.global_step / trainer.max_steps)
    per_epoch = trainer.num_training_batches
    if (trainer.max_epochs or -1) > 0 and 0 < per_epoch < math.inf:
        fractions.append((epoch + batches / per_epoch) / trainer.max_epochs)
    return min(max(fractions), 1.0)


def metrics_text(trainer: pl.Trainer) -> str:
    """The latest headline training values (the progress bar's) and every validation metric."""
    train = {k: v for k, v in trainer.progress_bar_metrics.items() if k.startswith("train/")}
    val = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    groups = [" ".join(f"{k} {float(v):.4g}" for k, v in sorted(d.items())) for d in (train, val)]
    return " | ".join(g for g in groups if g)


class LogProgress(pl.Callback):
    """One progress line per epoch (after validation) and every ``every_minutes`` inside one.

    The line goes through the ``genlab`` logger, so it reaches ``train.log`` and stdout even
    without a terminal (a batch job), where the progress bar draws nothing. Losses are the
    values last logged (every ``trainer.log_every_n_steps``). Rank 0 only; images count all
    ranks. ``step`` is ``trainer.global_step``, which for a GAN counts D and G steps.
    """

    def __init__(self, every_minutes: float = 5.0) -> None:
        self.every = every_minutes * 60.0
        self.images = 0  # over the whole run, resumed ones included (checkpoint state)
        self._epoch = self._batches = 0

    def state_dict(self) -> dict:
        return {"images": self.images}

    def load_state_dict(self, state_dict: dict) -> None:
        self.images = state_dict["images"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._start_fraction = done_fraction(trainer, trainer.current_epoch, 0)
        self._restart(self._start)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.images += batch_len(batch) * trainer.world_size
        self._epoch, self._batches = trainer.current_epoch, i + 1
        # an epoch's last batch is written at epoch end, with that epoch's validation
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if time.monotonic() - self._last >= self.every and not last_batch and not fit_ends(trainer):
            self._write(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_time += time.monotonic() - self._val_start
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the epoch that ends fit is written at train end, after FinalValidation's scores
        if not fit_ends(trainer):
            self._write(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # nothing new when a stop came after this epoch's line was written
        if self.images != self._last_images or self._validated:
            self._write(trainer, final=True)

    def _write(self, trainer: pl.Trainer, final: bool = False) -> None:
        """Log one line and start the next speed interval."""
        now = time.monotonic()
        if trainer.is_global_zero:
            log.info(self.line(trainer, now, final))
        self._restart(now)

    def _restart(self, now: float) -> None:
        """Start the interval the next line's speed is measured over."""
        self._last, self._last_images = now, self.images
        self._val_time, self._validated = 0.0, False

    def line(self, trainer: pl.Trainer, now: float, final: bool = False) -> str:
        """The progress line; speed is of training alone (validation time left out)."""
        epochs = f"/{trainer.max_epochs}" if (trainer.max_epochs or -1) > 0 else ""
        per_epoch = trainer.num_training_batches
        batches = f"/{per_epoch}" if per_epoch < math.inf else ""
        steps = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        train_time = max(now - self._last - self._val_time, 1e-9)
        speed = (self.images - self._last_images) / train_time
        elapsed = now - self._start
        parts = [
            f"epoch {self._epoch + 1}{epochs} batch {self._batches}{batches}",
            f"step {trainer.global_step}{steps}",
            f"images {self.images:,}",
            f"{speed:,.1f} img/s",
            metrics_text(trainer),
            f"elapsed {clock(elapsed)}",
            "done" if final else f"ETA {self._eta(trainer, elapsed)}",
        ]
        return " | ".join(p for p in parts if p)

    def _eta(self, trainer: pl.Trainer, elapsed: float) -> str:
        """Time left by steps or epochs, or by ``max_time`` when that ends fit sooner."""
        left = eta(
            elapsed, self._start_fraction, done_fraction(trainer, self._epoch, self._batches)
        )
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None:
            left = remaining if left is None else min(left, remaining)
        return "unknown" if left is None else clock(max(left, 0.0))
