"""Pixel conversions shared by every source: channels, size, uint8 <-> [-1, 1] float, PIL."""

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights PIL's convert("L") uses


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Repeat grayscale to RGB or reduce RGB to luminance; uint8 in, uint8 out, (N, C, H, W)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor(LUMA).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def fit_size(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Resize the shorter side to ``size`` (bilinear, antialiased) and center-crop to a square."""
    n, c, h, w = images.shape
    if h == size and w == size:
        return images
    # chunked: a float copy of all of MNIST at 64x64 would need ~1 GB at once
    out = torch.empty(n, c, size, size, dtype=torch.uint8)
    for i in range(0, n, chunk):
        x = images[i : i + chunk].float()
        x = TF.resize(x, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        out[i : i + chunk] = TF.center_crop(x, size).round().clamp(0, 255).to(torch.uint8)
    return out


def to_float(image: Tensor) -> Tensor:
    """uint8 [0, 255] to float [-1, 1]."""
    return image.float().div(127.5).sub(1.0)


def pil_to_uint8(image: Image.Image, size: int, channels: int) -> Tensor:
    """Any PIL image to a (C, size, size) uint8 tensor."""
    image = ImageOps.exif_transpose(image)  # phone photos store rotation in EXIF
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit grayscale: convert("L") would clip everything above 255 to white
        array = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(array.round().clip(0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    tensor = TF.pil_to_tensor(image).unsqueeze(0)  # (1, C, H, W)
    return fit_size(tensor, size)[0]
