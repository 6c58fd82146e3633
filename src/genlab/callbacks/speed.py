"""The opt-in speed path: channels-last memory and torch.compile of the networks."""

import pytorch_lightning as pl
import torch


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
