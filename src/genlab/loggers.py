"""Loggers as genlab configures them."""

from typing import Any

from pytorch_lightning.loggers import WandbLogger


class GenlabWandbLogger(WandbLogger):
    """Lightning's WandbLogger without its ``anonymous=None`` argument to ``wandb.init``.

    W&B deprecated the setting and prints "The anonymous setting has no effect" straight to
    stderr at every run start whenever the key is passed, even as None; nothing else changes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
