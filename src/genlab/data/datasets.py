"""The Dataset classes every source ends in, and batches gathered in one call.

Every item is ``(image, label)``: a float image in [-1, 1] of shape (C, H, W) and a 0-dim LongTensor
label (0 for unlabeled sources).
"""

import os
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset, default_collate

from genlab.data.transforms import pil_to_uint8, to_float
from genlab.errors import GenlabError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class Batch(NamedTuple):
    """A whole batch from one ``__getitems__`` call: images (B, C, H, W) and labels (B,)."""

    images: Tensor
    labels: Tensor


def collate(items: Batch | list[tuple[Tensor, Tensor]]) -> Batch | list[Tensor]:
    """The loaders' collate_fn: a batch a dataset built in one call passes through unchanged."""
    return items if isinstance(items, Batch) else default_collate(items)


def fetch(dataset: Dataset, indices: list[int]) -> Batch:
    """Items ``indices`` of ``dataset`` as one Batch; in one indexing call where it can."""
    getitems = getattr(dataset, "__getitems__", None)
    items = getitems(indices) if callable(getitems) else [dataset[i] for i in indices]
    return items if isinstance(items, Batch) else Batch(*default_collate(items))


def labels_of(dataset: Dataset) -> Tensor:
    """Every label of ``dataset`` (N,), in item order: from memory where a source holds them
    (in-memory and prepared sets, through subsets, binarisation and mirroring), else 0 for the
    unlabelled sources."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, Mirrored):
        return labels_of(dataset.base).repeat(2)
    if isinstance(dataset, Binarized):
        return labels_of(dataset.base)
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, Tensor):
        return labels.long()
    if isinstance(dataset, (FileImages, PILImages)):  # labels dropped to 0
        return torch.zeros(len(dataset), dtype=torch.long)
    return torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))]).long()


class Binarized(Dataset):
    """Stochastic binarisation: each pixel becomes 1 with probability (x + 1) / 2, else -1.

    ``seed=None`` draws afresh on every access (dynamic binarisation for training, as in
    Burda et al. 2016); a seed fixes one draw per item, so a validation bound is comparable
    across epochs and runs.
    """

    def __init__(self, base: Dataset, seed: int | None = None):
        self.base = base
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, label = self.base[i]
        g = None if self.seed is None else torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        on = torch.rand(image.shape, generator=g) < (image + 1) / 2  # (C, H, W)
        return on.float() * 2 - 1, label

    def __getitems__(self, indices: list[int]) -> Batch:
        if self.seed is not None:  # one generator per item: keep the per-item draw
            return Batch(*default_collate([self[i] for i in indices]))
        images, labels = fetch(self.base, indices)
        on = torch.rand(images.shape) < (images + 1) / 2  # (B, C, H, W)
        return Batch(on.float() * 2 - 1, labels)


class Mirrored(Dataset):
    """The images and then their x-flipped copies, twice as many items (StyleGAN's --mirror).

    As StyleGAN2-ADA's ``Dataset(xflip=True)``: item i + N is item i flipped left to right, so an
    epoch sees each image once each way. The label goes with the image.
    """

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        n = len(self.base)
        image, label = self.base[i % n]
        return (image.flip(-1) if i >= n else image), label

    def __getitems__(self, indices: list[int]) -> Batch:
        n = len(self.base)
        images, labels = fetch(self.base, [i % n for i in indices])
        flipped = torch.as_tensor(indices) >= n
        return Batch(torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images), labels)


class TensorImages(Dataset):
    """Images held in memory as uint8 (N, C, H, W), already at the final size and channels."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return to_float(self.images[i]), self.labels[i]

    def __getitems__(self, indices: list[int]) -> Batch:
        """A batch in one gather (the DataLoader calls this instead of B ``__getitem__``)."""
        idx = torch.as_tensor(indices)
        return Batch(to_float(self.images[idx]), self.labels[idx])


class FileImages(Dataset):
    """Unlabeled image files decoded with PIL per item."""

    def __init__(self, paths: list[Path], image_size: int, channels: int):
        self.paths = paths
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        path = self.paths[i]
        try:
            with Image.open(path) as image:
                pixels = pil_to_uint8(image, self.image_size, self.channels)
        except (OSError, SyntaxError, ValueError) as e:
            # verify() at setup misses some damage (e.g. a truncated JPEG), found only on decode
            raise GenlabError(f"cannot read image {path}: {e}") from None
        return to_float(pixels), torch.tensor(0)


class PILImages(Dataset):
    """A torchvision dataset that yields PIL images, converted per item; labels dropped to 0."""

    def __init__(self, base: Dataset, image_size: int, channels: int):
        self.base = base
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = self.base[i][0]
        return to_float(pil_to_uint8(image, self.image_size, self.channels)), torch.tensor(0)


def image_files(root: Path) -> list[Path]:
    """Image files below ``root``, recursively and sorted; hidden files and folders are skipped."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(folder) / name)
    return found


def verify_images(paths: list[Path]) -> None:
    """Raise GenlabError naming the first file PIL cannot identify or whose structure is broken."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            raise GenlabError(f"data.root: cannot read image {path}: {e}") from None
