"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real and fake images.

Every op draws fresh per-example randomness from torch's global RNG, so a seeded run repeats.
Images are (B, C, H, W) in [-1, 1]; padding and cutout fill with 0 (mid-grey), as in the paper.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.errors import GenlabError

TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


def _uniform(x: Tensor) -> Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)  # (B, 1, 1, 1)


def brightness(x: Tensor) -> Tensor:
    """Add one offset in [-0.5, 0.5) per image."""
    return x + (_uniform(x) - 0.5)


def saturation(x: Tensor) -> Tensor:
    """Scale each pixel's distance from its channel mean by a factor in [0, 2)."""
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - mean) * (_uniform(x) * 2) + mean


def contrast(x: Tensor) -> Tensor:
    """Scale each image's distance from its overall mean by a factor in [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_uniform(x) + 0.5) + mean


def translation(x: Tensor, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift each image by up to ``ratio`` of its size in x and y, filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    # output[i, j] = x[i - dy, j - dx], read from the zero-padded image
    rows = torch.arange(h, device=x.device).view(1, h, 1) + sh - dy  # (B, H, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + sw - dx  # (B, 1, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    padded = F.pad(x, [sw, sw, sh, sh]).permute(0, 2, 3, 1)  # (B, H + 2sh, W + 2sw, C)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


def cutout(x: Tensor, ratio: float = CUTOUT_RATIO) -> Tensor:
    """Zero one square of ``ratio`` times the image size per image, centred anywhere."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # Centres may sit on the border, so a square can be cut down to a quarter of its area.
    top = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


OPS = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str) -> list[str]:
    """Split a comma-separated policy, raising GenlabError on unknown items."""
    items = [item.strip() for item in policy.split(",") if item.strip()]
    for item in items:
        if item not in OPS:
            raise GenlabError(
                f"model.diffaugment={policy!r}: unknown item {item!r} (known: {', '.join(OPS)})"
            )
    return items


def diff_augment(x: Tensor, policy: str = "color,translation,cutout") -> Tensor:
    """Apply the ops of ``policy`` in order to (B, C, H, W) images; "" is the identity."""
    for item in parse_policy(policy):
        for op in OPS[item]:
            x = op(x)
    return x
