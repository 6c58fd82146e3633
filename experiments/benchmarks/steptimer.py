"""Timestamps of every training batch, added to genlab-train by the benchmark as a callback.

    PYTHONPATH=experiments/benchmarks genlab-train \
        +callbacks.step_timer._target_=steptimer.StepTimer +callbacks.step_timer.path=t.json

It only reads the clock (and, on a thread, the process RSS), so the run it times is otherwise the
user's run: same CLI, progress bar, loggers and callbacks.

With ``+callbacks.step_timer.pair=true`` it also runs the hand-written step (hand_loop.py) on
copies of the module's networks after every genlab step, on the same batch, and times both: a
pair of steps a few milliseconds apart sees the same machine, so their ratio survives a shared,
noisy machine far better than two separate runs do.
"""

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from peak_rss import PeakRSS


class StepTimer(pl.Callback):
    """Write ``path`` (JSON): wall-clock times of every train batch end, epoch and validation."""

    def __init__(self, path: str | None, pair: bool = False) -> None:
        self.path = Path(path) if path else None  # None: keep the record in memory
        self.pair = pair
        self.twin = None
        self.last_end: float | None = None
        self.pairs: list[tuple[float, float]] = []  # (genlab step s, hand-written step s)
        self.created = time.time()
        self.epochs: list[dict] = []
        self.validation: list[list[float]] = []
        self.fit_start = self.fit_end = None
        self.rss: PeakRSS | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_start = time.time()
        self.rss = PeakRSS()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if self.pair:
            from hand_loop import twin_step

            self.twin = twin_step(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({"start": time.time(), "batch_end": []})
        self.last_end = None  # a pair never spans the loader's epoch start or validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.epochs[-1]["batch_end"].append(time.time())
        if self.twin is None:
            return
        start = self._now(pl_module)
        self.twin(batch[0])
        end = self._now(pl_module)
        if self.last_end is not None:  # genlab's step: from the twin's last end to now
            self.pairs.append((start - self.last_end, end - start))
        self.last_end = end

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validation.append([time.time()])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validation[-1].append(time.time())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_end = time.time()
        if self.path is None:
            self.rss.stop()
            return
        cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "created": self.created,
            "fit_start": self.fit_start,
            "fit_end": self.fit_end,
            "epochs": self.epochs,
            "validation": self.validation,
            "batch_size": trainer.datamodule.batch_size,
            "image_size": trainer.datamodule.image_size,
            "torch_threads": torch.get_num_threads(),
            "peak_rss_fit": self.rss.stop() if self.rss else None,
            "cuda_peak_allocated": cuda,
            "device": str(pl_module.device),
            "pairs": self.pairs,
        }
        self.path.write_text(json.dumps(record))
