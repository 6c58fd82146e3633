"""What every backbone shares: the one uint8 conversion, the resize modes, file hashes, numerics."""

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from genlab.errors import GenlabError

Resize = Literal["tf1", "clean"]
RESIZES = ("tf1", "clean")


class MetricsUnavailable(GenlabError):
    """The sample metrics cannot run: a backbone's weights are missing, unreadable or wrong."""


def to_uint8(images: Tensor) -> Tensor:
    """Map [-1, 1] float images (B, 1 or 3, H, W) to uint8 RGB (B, 3, H, W), rounding half up."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"to_uint8 expects (B, 1 or 3, H, W) images, got {tuple(images.shape)}")
    # Round half up, as StyleGAN's (x * 127.5 + 128).clamp(0, 255) does; a bare cast truncates,
    # which darkens every pixel by half a level on average and shifts FID.
    x = ((images.float() + 1) * 127.5 + 0.5).floor().clamp(0, 255).to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def clean_resize(images: Tensor, size: int) -> Tensor:
    """clean-fid's resize: PIL bicubic on each channel as a float32 image, clipped to [0, 255].

    uint8 (B, 3, H, W) -> float32 (B, 3, size, size) in [0, 255], never re-quantised (Parmar et
    al. 2022: the TF1 bilinear resize aliases, and quantising after resizing adds error).
    """
    planes = images.cpu().numpy().astype(np.float32)  # (B, 3, H, W)
    out = np.empty((*planes.shape[:2], size, size), dtype=np.float32)
    for b, image in enumerate(planes):
        for c, plane in enumerate(image):
            resized = Image.fromarray(plane, mode="F").resize((size, size), Image.BICUBIC)
            out[b, c] = np.asarray(resized).clip(0, 255)
    return torch.from_numpy(out).to(images.device)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, sha256: str, expected: str | None, key: str) -> None:
    """One-line error when a weights file's sha256 does not start with ``expected`` (None: off)."""
    if expected is not None and not sha256.startswith(str(expected).lower()):
        raise MetricsUnavailable(
            f"{path}: sha256 {sha256[:16]}... is not the published {str(expected)[:16]}... "
            f"(metrics.{key}; null turns the check off)"
        )


def reject_pickled_code(path: Path, key: str) -> None:
    """One-line error for a weights file that holds pickled code, before a library unpickles it.

    Some loaders (torch-fidelity's Inception) call ``torch.load(weights_only=False)``: opened
    first with ``weights_only=True``, a file that would run code on load never reaches them.
    """
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise MetricsUnavailable(
            f"metrics.{key}: {path} holds pickled code{what}, which would run on load"
        ) from None
    except Exception:  # not a torch file at all: the library's own load says what is wrong
        pass


def local_file(path: str | None, key: str) -> Path:
    """A weights file that must exist, or a one-line error naming the config key."""
    if path is None:
        raise MetricsUnavailable(f"metrics.{key} is not set: point it at the weights file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise MetricsUnavailable(f"metrics.{key}: {file} does not exist")
    return file


def numerics(device: torch.device) -> dict[str, Any]:
    """What besides data and weights changes features: device type and fp32 precision."""
    out = {
        "device_type": device.type,
        # "high"/"medium" let fp32 matmuls use TF32 on CUDA and bf16 via oneDNN on CPU
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        # convolutions use TF32 by cuDNN's own flag (on by default)
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return out


inception_numerics = numerics  # the name the rest of genlab knew it by


class LazyNetwork:
    """A backbone's network built on first use: pickling (ddp_spawn, deepcopy) drops it."""

    device: torch.device
    _net: Any = None

    def build(self) -> Any:
        """The network from the weights file (each backbone says how)."""
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_net": None}

    @property
    def net(self) -> Any:
        """The network, (re)loaded from the weights file when not held."""
        if self._net is None:
            self._net = self.build().to(self.device)
        return self._net

    def to(self, device: torch.device) -> None:
        self.device = device
        if self._net is not None:
            self._net.to(device)
