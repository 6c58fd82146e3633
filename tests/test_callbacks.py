"""Image grids: rounding to uint8 and the PNG files the callback writes."""

import numpy as np
import torch
from PIL import Image

from genlab.callbacks.images import grid_uint8, save_png


def test_grid_rounds_to_nearest():
    # 255 * (x + 1) / 2: -1 -> 0, 1 -> 255, 0.0 -> 127.5 -> 128 (round half to even gives 128)
    x = torch.tensor([-1.0, 1.0, 0.0, 2 * 100.6 / 255 - 1]).view(1, 1, 2, 2)
    grid = grid_uint8(torch.cat([x, x]), nrow=1)  # (10, 6, 3): two images, padding 2
    assert grid.shape == (10, 6, 3)
    inner = grid[2:4, 2:4, 0]
    assert inner.tolist() == [[0, 255], [128, 101]]


def test_save_png_roundtrip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    save_png(rgb, tmp_path / "a" / "x.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "x.png")), rgb)
    gray = rgb[..., :1]
    save_png(gray, tmp_path / "g.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), gray[..., 0])
