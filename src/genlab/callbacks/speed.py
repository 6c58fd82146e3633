"""The opt-in speed path: channels-last memory and torch.compile of the networks."""

import logging

import pytorch_lightning as pl
import torch
from torch import nn

log = logging.getLogger("genlab")


def compile_plan(module: pl.LightningModule) -> tuple[list[nn.Module], dict[str, nn.Module]]:
    """The networks to compile, and those left out, by the reason they are.

    torch.compile (aot_autograd) cannot differentiate a compiled network's gradients again, so
    networks a penalty double-backwards through (``module.double_backward_networks()``, e.g.
    the GAN's discriminator under WGAN-GP or R1) stay eager.
    """
    left = getattr(module, "double_backward_networks", dict)()
    left_ids = {id(net) for net in left.values()}
    return [net for net in module.networks() if id(net) not in left_ids], left


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
            compiled, left = compile_plan(pl_module)
            for net in compiled:
                net.compile()  # in place: state_dict keys are unchanged
            for reason in left:
                log.warning("speed.compile: %s left uncompiled (double backward)", reason)
