"""What the LightningModules read of, and decide with, Lightning's training loop."""

import pytorch_lightning as pl
import torch

from genlab.errors import GenlabError

NONFINITE = ("stop", "skip", "off")  # model.nonfinite: what a NaN/inf loss does (finite_or_skip)


def logs_written(trainer: pl.Trainer) -> bool:
    """True on steps whose logged values reach the loggers (every ``log_every_n_steps``).

    Each ``self.log`` costs ~0.5 ms on a small CPU, so modules log secondary values only then.
    Lightning's own test for it is private; without it, every step counts.
    """
    return getattr(trainer._logger_connector, "should_update_logs", True)


def finite_or_skip(module, loss, name: str, policy: str) -> bool:
    """True when ``loss`` is finite on every rank; else False ("skip") or GenlabError ("stop").

    ``policy="off"`` skips the check.

    One host sync per step: the price of stopping at the step a loss diverges, before NaNs
    spread into every weight and the next checkpoint. Ranks decide together, so under DDP all
    of them skip or stop at the same step instead of hanging in the next all-reduce.
    """
    if policy == "off":  # no check, no host sync: the fastest step
        return True
    finite = bool(torch.isfinite(loss.detach()).all())
    trainer = module.trainer
    finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    if finite:
        return True
    if policy == "skip":
        return False
    value = float(loss.detach())
    raise GenlabError(
        f"non-finite {name}={value} at step {trainer.global_step}; training stopped with the "
        "last checkpoint untouched (lower the learning rate, or set model.nonfinite=skip)"
    )
