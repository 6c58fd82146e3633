"""genlab-prepare's format: DIR/manifest.json plus uint8 DIR/SPLIT.npy, memory-mapped to read.

``genlab.preparation`` writes it; ``data=prepared data.path=DIR`` reads it through here.
"""

import contextlib
import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from genlab.atomic import atomic_json
from genlab.data.datasets import Batch
from genlab.data.transforms import to_float
from genlab.errors import GenlabError, GenlabWarning

PREPARED_FORMAT = "genlab-prepared/1"
MANIFEST = "manifest.json"


def manifest_hash(manifest: dict) -> str:
    """sha256 of a prepared dataset's manifest, its creation time left out: the data's identity."""
    body = {k: v for k, v in manifest.items() if k != "created_utc"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def file_sha256(file: Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file's bytes, read in 16 MiB pieces (a prepared array can be gigabytes)."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while piece := f.read(chunk):
            digest.update(piece)
    return digest.hexdigest()


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


def verified_stamp(file: Path) -> list:
    """What identifies one version of ``file``'s bytes without reading them.

    Hashing gigabytes at every start (every rank, every requeue) would cost minutes, so a file
    is hashed once and its stamp remembered. The change time is in it because no user can set it
    (a rewrite that keeps size and mtime, ``cp -p`` or ``touch -d``, still moves it) and the inode
    because a file renamed over this one is another file; a stamp that moved only costs a rehash.
    """
    st = os.stat(file)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def verified_record() -> Path:
    """The per-user file of arrays already hashed and found as their manifest records."""
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        / "genlab"
        / "verified-arrays.json"
    )


def verify_arrays(path: Path, manifest: dict, record: Path | None = None) -> None:
    """Refuse a split array whose bytes are not those the manifest records (its sha256).

    Arrays replaced under a manifest by others of the same shape pass ``check_array``; their
    content does not. Manifests from before the hashes were recorded are taken with a warning.
    ``record`` (default ``verified_record()``) keeps the stamps of files already verified, by
    real path.
    """
    record = record or verified_record()
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}  # none yet, or unreadable: hash again and write it anew
    changed = False
    for split, info in manifest["splits"].items():
        for name, key in (
            (f"{split}.npy", "images_sha256"),
            (f"{split}_labels.npy", "labels_sha256"),
        ):
            want = info.get(key)
            if want is None:
                warnings.warn(
                    f"{path / MANIFEST} records no content hashes (an older genlab-prepare): "
                    "its arrays are not verified; prepare it again to have them checked",
                    GenlabWarning,
                    stacklevel=2,
                )
                return
            file = path / name
            real, stamp = os.path.realpath(file), verified_stamp(file)
            if known.get(real) == {"stamp": stamp, "sha256": want}:
                continue
            got = file_sha256(file)
            if got != want:
                raise GenlabError(
                    f"{file}: its content is not what {path / MANIFEST} records (sha256 "
                    f"{got[:12]}, not {want[:12]}): the data changed after genlab-prepare; "
                    "prepare it again"
                )
            known[real], changed = {"stamp": stamp, "sha256": want}, True
    if changed:
        # a read-only or full home: verified all the same, only hashed again next time
        with contextlib.suppress(OSError, GenlabError):
            atomic_json(known, record)


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
            self._images = np.load(self.file, mmap_mode="r", allow_pickle=False)
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
