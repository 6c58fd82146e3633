"""Axes common to every run: images seen and generator steps, logged with every row.

Lightning's step counts optimizer steps (a GAN batch with one D and one G step is 2), so runs
with other batch sizes or ``n_critic`` do not line up on it; these two do.
"""

import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.seed import isolate_rng

from genlab.callbacks.images import grid_uint8
from genlab.callbacks.sample_metrics import SampleMetrics
from genlab.keys import G_STEPS, IMAGES_SEEN, TRAIN_TIME
from genlab.loggers import log_reference
from genlab.models.loop import logs_written


def generator_steps(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """GAN: generator steps (one per ``n_critic`` batches); other models: optimizer steps."""
    n_critic = getattr(pl_module, "hparams", {}).get("n_critic")
    if n_critic and hasattr(pl_module, "batches_seen"):
        return pl_module.batches_seen // n_critic
    return trainer.global_step


class CommonAxes(pl.Callback):
    """Log ``trainer/images_seen``, ``trainer/g_steps`` and ``trainer/time`` in every row.

    Images seen are the real images shown to the model (to D, for a GAN), summed over ranks:
    each rank's batches have equal sizes (DistributedSampler pads), so the local count times
    the world size. Time is seconds of fit, summed over the fragments of a resumed run. Both
    are kept in checkpoints, so a resumed run continues them.
    """

    def __init__(self) -> None:
        self.images_seen = 0
        self.seconds_before = 0.0  # fit time of the fragments before this one
        self._start = time.monotonic()

    def seconds(self) -> float:
        """Seconds of fit so far, earlier fragments included."""
        return self.seconds_before + time.monotonic() - self._start

    def state_dict(self) -> dict:
        return {"images_seen": self.images_seen, "seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.images_seen = int(state_dict["images_seen"])
        self.seconds_before = float(state_dict.get("seconds", 0.0))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: bool = False) -> None:
        """Log the three; at epoch level (validation) synced as their maximum over ranks.

        Every rank holds the same counts, but Lightning warns about each epoch-level value
        logged without ``sync_dist``; a step-level value is never reduced.
        """
        # float64: float32 counts exactly only up to 2**24 (16.8M) images
        counts = {
            IMAGES_SEEN: self.images_seen,
            G_STEPS: generator_steps(trainer, pl_module),
            TRAIN_TIME: self.seconds(),
        }
        sync = epoch and trainer.world_size > 1
        device = pl_module.device if sync else None  # NCCL reduces on the GPU
        for key, value in counts.items():
            value = torch.tensor(value, dtype=torch.float64, device=device)
            pl_module.log(key, value, sync_dist=sync, reduce_fx="max")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.images_seen += len(batch[0]) * trainer.world_size
        if logs_written(trainer):
            self._log(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._log(trainer, pl_module, epoch=True)


def wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    """The trainer's W&B logger, if any."""
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class EvaluationTable(pl.Callback):
    """A W&B table ``evaluations``: a row per validation of fit (step, images seen, generator
    steps, every ``val/*`` value, the fixed-noise grid), so the runs of a sweep compare side by
    side at equal images seen. The first evaluation with sample metrics also logs the reference
    statistics it used as an artifact (see ``log_reference``).

    The numbers of earlier rows travel in checkpoints, the grids (large) do not: a resumed run's
    table shows earlier rows without their grid (the earlier fragment's table has them).
    """

    KEY = "evaluations"

    def __init__(self, axes: CommonAxes) -> None:
        self.axes = axes
        self.rows: list[dict[str, float]] = []
        self._grids: dict[int, object] = {}  # row index -> (H, W, 3) uint8 grid, this process
        self._reference_logged = False

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = wandb_logger(trainer)
        if trainer.sanity_checking or trainer.state.fn != "fit" or logger is None:
            return
        if not trainer.is_global_zero:
            return
        import wandb

        row = {
            "step": float(trainer.global_step),
            "images_seen": float(self.axes.images_seen),
            "g_steps": float(generator_steps(trainer, pl_module)),
        }
        metrics = dict(trainer.callback_metrics)
        sample = next((c for c in trainer.callbacks if isinstance(c, SampleMetrics)), None)
        if sample is not None and sample.evaluated_step != trainer.global_step:
            for key in sample.logged_keys():  # not due this time: earlier values, not this row's
                metrics.pop(key, None)
        row.update({k: float(v) for k, v in metrics.items() if k.startswith("val/")})
        if self.rows and self.rows[-1]["step"] == row["step"]:
            self.rows.pop()  # the final validation scored this step again (FinalValidation)
        self.rows.append(row)
        with torch.no_grad(), isolate_rng():  # the training noise stays what it would be
            self._grids[len(self.rows) - 1] = grid_uint8(pl_module.grid_images()["samples"])
        columns = ["step", "images_seen", "g_steps"]
        columns += sorted({k for r in self.rows for k in r} - set(columns))
        data = [
            [r.get(c) for c in columns]
            + [wandb.Image(self._grids[i]) if i in self._grids else None]
            for i, r in enumerate(self.rows)
        ]
        logger.experiment.log({self.KEY: wandb.Table(columns=[*columns, "samples"], data=data)})
        if not self._reference_logged:
            self._reference_logged = log_reference(logger.experiment, trainer)
