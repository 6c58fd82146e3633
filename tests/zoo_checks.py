"""Helpers of the network tests: parameter counts, batch limits, val/swd around a short fit."""

import torch

from genlab.training import build
from tests.conftest import fit_built


def count(net: torch.nn.Module) -> int:
    """The number of parameters of ``net``."""
    return sum(p.numel() for p in net.parameters())


def limit(cfg, epochs: int, batches: int | float, val_batches: int = 0):
    """Set the trainer's epochs and per-epoch train/val batch limits; returns ``cfg``."""
    cfg.trainer.max_epochs = epochs
    cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches = batches, val_batches
    return cfg


def swd_before_after(cfg) -> tuple[float, float]:
    """val/swd of the untrained model and after fitting ``cfg``."""
    objs = build(cfg)

    def swd() -> float:
        out = objs["trainer"].validate(objs["model"], datamodule=objs["datamodule"], verbose=False)
        return out[0]["val/swd"]

    start = swd()
    fit_built(objs)
    return start, swd()
