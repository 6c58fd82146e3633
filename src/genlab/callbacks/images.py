"""Image grids after validation, and lossless PNG files of images in [-1, 1]."""

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid

from genlab.metrics import to_uint8


def grid_uint8(images: Tensor, nrow: int = 8) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> one (H', W', 3) uint8 grid, rounded as the metrics round."""
    grid = make_grid(
        images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=2, pad_value=1.0
    )
    return to_uint8(grid[None])[0].permute(1, 2, 0).numpy()  # (H', W', 3)


def save_images(images: Tensor, directory: Path, start: int) -> None:
    """Write (B, C, H, W) [-1, 1] images as lossless PNGs ``{start + i:06d}.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()):
        save_png(image, directory / f"{start + i:06d}.png")


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an (H, W, C) uint8 array as PNG (grayscale when C == 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


class ImageGrid(pl.Callback):
    """After validation, save ``pl_module.grid_images()`` as PNGs and log them to image loggers.

    Files: ``{dirpath}/{name}_epoch{E:03d}.png`` (``samples``, and ``reconstructions`` for VAEs).
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 1, nrow: int = 8) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        with torch.no_grad():
            grids = {k: grid_uint8(v, self.nrow) for k, v in pl_module.grid_images().items()}
        for name, grid in grids.items():
            save_png(grid, self.dirpath / f"{name}_epoch{trainer.current_epoch:03d}.png")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(f"images/{name}", [grid], step=trainer.global_step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(
                        f"images/{name}", grid, trainer.global_step, dataformats="HWC"
                    )
