"""MNIST's IDX format, read by genlab itself (gzipped or not): Debian's recompressed .gz files
fail torchvision's checksums."""

import gzip
import math
from pathlib import Path

import numpy as np

from genlab.errors import GenlabError

# The four IDX files of MNIST and Fashion-MNIST, found in data.root or torchvision's
# data.root/<Set>/raw.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's class names


def read_idx(path: Path) -> np.ndarray:
    """A uint8 IDX file (the MNIST format) as an array; gzipped when the name ends in .gz."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise GenlabError(f"{path}: not readable ({e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or len(data) < 4 + 4 * data[3]:
        raise GenlabError(f"{path}: not an IDX file (bad header)")
    if data[2] != 0x08:
        raise GenlabError(f"{path}: IDX element type 0x{data[2]:02x}, genlab reads uint8 (0x08)")
    start = 4 + 4 * data[3]
    shape = tuple(int(n) for n in np.frombuffer(data[4:start], ">i4"))
    if len(data) - start != math.prod(shape):
        raise GenlabError(
            f"{path}: {len(data) - start} bytes of data where its shape {shape} needs "
            f"{math.prod(shape)} (truncated or not an IDX file)"
        )
    # a bytearray is writable, so torch can take the array without copying or warning
    return np.frombuffer(bytearray(data), np.uint8, offset=start).reshape(shape)


class IDXSet:
    """An MNIST-format split as torchvision's MNIST holds it: ``data`` (N, H, W), ``targets``."""

    def __init__(self, data: np.ndarray, targets: np.ndarray, name: str):
        self.data, self.targets, self.name = data, targets, name

    def __len__(self) -> int:
        return len(self.targets)
