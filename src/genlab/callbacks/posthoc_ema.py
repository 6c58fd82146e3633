"""EDM2's post-hoc EMA while training: power-function EMA profiles of the sampling networks,
snapshotted to ``RUN/ema_snapshots`` (``genlab.models.posthoc_ema`` rebuilds any length later)."""

from pathlib import Path

import pytorch_lightning as pl

from genlab.callbacks.checkpointing import fit_ends
from genlab.errors import GenlabError
from genlab.models.posthoc_ema import (
    PowerEMA,
    check_sigma,
    model_name,
    sampling_tensors,
    snapshot_name,
    write_snapshot,
)

KEY = "callbacks.posthoc_ema"


class PostHocEMA(pl.Callback):
    """Track the ``sigma_rels`` profiles of the model's ``sampling_state``; snapshot them every
    ``every_n_images`` real images seen (all ranks) and at the end of fit.

    The profiles travel in checkpoints (exact resume); the snapshots do not: they are
    safetensors files, one per snapshot, written atomically by rank 0. Every rank averages (the
    weights are the same on all), so a resumed run with another world size goes on alike.

    Args:
        every_n_images: images between snapshots; 0 turns post-hoc EMA off.
        sigma_rels: the tracked profiles' relative lengths (EDM2: 0.05 and 0.10).
        dirpath: where the snapshots go.
    """

    def __init__(
        self,
        every_n_images: int = 0,
        sigma_rels: tuple[float, ...] = (0.05, 0.10),
        dirpath: str = "ema_snapshots",
    ) -> None:
        if not (isinstance(every_n_images, int) and every_n_images >= 0):
            raise GenlabError(f"{KEY}.every_n_images={every_n_images} must be an integer >= 0")
        sigma_rels = tuple(float(s) for s in sigma_rels)
        for s in sigma_rels:
            check_sigma(s, f"{KEY}.sigma_rels")
        if len(set(sigma_rels)) < 2:
            raise GenlabError(
                f"{KEY}.sigma_rels={list(sigma_rels)}: rebuilding needs two different profiles"
            )
        self.every, self.sigma_rels, self.dir = every_n_images, sigma_rels, Path(dirpath)
        self.ema: PowerEMA | None = None
        self.images = 0  # real images seen, all ranks: the profiles' time axis
        self.index = 0  # the next snapshot's number
        self._loaded: dict | None = None

    def state_dict(self) -> dict:
        if self.ema is None:
            return self._loaded or {}
        return {
            "images": self.images,
            "index": self.index,
            "sigma_rels": list(self.sigma_rels),
            "averages": [{k: v.clone() for k, v in a.items()} for a in self.ema.averages],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict or None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.every:
            return
        if not hasattr(pl_module, "sampling_state"):
            raise GenlabError(f"{KEY}: {type(pl_module).__name__} names no sampling_state")
        resumed = trainer.ckpt_path is not None
        state, self._loaded = self._loaded, None
        if resumed and state is None:
            raise GenlabError(
                f"{KEY}.every_n_images={self.every}: the checkpoint trained without post-hoc "
                "EMA; its profiles cannot start in the middle of a run"
            )
        self.ema = PowerEMA(self.sigma_rels, sampling_tensors(pl_module))
        if state is None:
            return
        if [float(s) for s in state["sigma_rels"]] != list(self.sigma_rels):
            raise GenlabError(
                f"{KEY}.sigma_rels={list(self.sigma_rels)}: the checkpoint tracks "
                f"{state['sigma_rels']}"
            )
        self.images, self.index = int(state["images"]), int(state["index"])
        for average, stored in zip(self.ema.averages, state["averages"], strict=True):
            for k, v in average.items():
                v.copy_(stored[k])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self.ema is None:
            return
        new = len(batch[0]) * trainer.world_size
        before, self.images = self.images, self.images + new
        self.ema.update(sampling_tensors(pl_module), self.images, new)
        if self.images // self.every > before // self.every or fit_ends(trainer):
            if trainer.is_global_zero:
                path = self.dir / snapshot_name(self.index)
                model = model_name(pl_module)
                write_snapshot(path, self.ema, self.images, self.index, model, self.every)
            self.index += 1
