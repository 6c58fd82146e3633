"""Datasets read as they are stored elsewhere: a StyleGAN dataset zip and a Hugging Face dataset.

``data=zip`` copies the semantics of StyleGAN2-ADA's ``training/dataset.py``
(``ImageFolderDataset`` over a zip): the images are the sorted member names whose extension
PIL knows, labels come from ``dataset.json`` (``{"labels": [[name, label], ...]}`` or null),
matched by name. ``data=hf`` reads a ``datasets`` dataset: a ``save_to_disk`` directory, parquet
files or a Hub id already in the local cache (never downloaded).
"""

import glob
import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from genlab.data.datasets import Batch
from genlab.data.transforms import pil_to_uint8, to_float
from genlab.errors import GenlabError

MAGIC = b"PK\x03\x04"  # a zip member's local file header signature
LABELS_FILE = "dataset.json"  # StyleGAN's dataset_tool.py name for the labels


def image_extensions() -> set[str]:
    """The extensions PIL can open (StyleGAN's ``PIL.Image.EXTENSION`` after ``Image.init()``)."""
    Image.init()
    return set(Image.registered_extensions())


# ---------------------------------------------------------------------------------------- zip


def open_zip(path: Path) -> zipfile.ZipFile:
    """``path`` as a ZipFile, or one line saying why not (missing, not a zip, truncated)."""
    if not path.is_file():
        raise GenlabError(f"data.path={path}: no such file (a StyleGAN dataset zip)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        # a truncated zip loses its central directory at the end: "File is not a zip file"
        raise GenlabError(f"data.path={path}: not a readable zip file ({e})") from None


def check_extents(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse a zip whose central directory does not match its data (bytes lost or cut short).

    Reads no member data: each local header plus its compressed bytes must end before the
    central directory starts, and the first and last members' local headers must be where the
    directory says (a zip that lost bytes in the middle shifts them).
    """
    infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
    end = min(path.stat().st_size, getattr(zf, "start_dir", path.stat().st_size))
    for info in infos:
        stop = info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size
        if stop > end:
            raise GenlabError(
                f"data.path={path}: member {info.filename} runs past the end of the data "
                f"({stop} > {end} bytes; truncated zip)"
            )
    with open(path, "rb") as f:
        for info in infos[:1] + infos[-1:]:
            if info.header_offset < 0 or (f.seek(info.header_offset), f.read(4))[1] != MAGIC:
                raise GenlabError(
                    f"data.path={path}: member {info.filename} is not where the zip's directory "
                    "puts it (bytes missing or damaged); copy the zip again"
                )


def zip_index(path: Path) -> tuple[list[str], Tensor | None, str]:
    """The image members of the zip (sorted), their class labels (or None) and a content hash.

    The hash covers every image member's name, size and CRC-32 plus ``dataset.json``: a zip
    written again with other images gets another reference-statistics cache entry.
    """
    with open_zip(path) as zf:
        check_extents(path, zf)
        infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
        exts = image_extensions()
        names = sorted(n for n in infos if os.path.splitext(n)[1].lower() in exts)
        if not names:
            raise GenlabError(f"data.path={path}: no image files in the zip")
        raw = read_member(path, zf, LABELS_FILE) if LABELS_FILE in infos else None
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\t{infos[name].file_size}\t{infos[name].CRC:08x}\n".encode())
    digest.update(raw or b"")
    labels = None if raw is None else zip_labels(path, raw, names)
    return names, labels, digest.hexdigest()


def zip_labels(path: Path, raw: bytes, names: list[str]) -> Tensor | None:
    """``dataset.json``'s labels in image order as in StyleGAN's ``_load_raw_labels``."""
    where = f"data.path={path}: {LABELS_FILE}"
    try:
        table = json.loads(raw).get("labels")
    except (ValueError, AttributeError) as e:
        raise GenlabError(f"{where} is not a JSON object with 'labels' ({e})") from None
    if table is None:
        return None
    try:
        by_name = {str(n).replace("\\", "/"): label for n, label in table}
    except (TypeError, ValueError):
        raise GenlabError(f"{where}: 'labels' must be a list of [name, label] pairs") from None
    known = set(names)
    stray = [n for n in by_name if n not in known]
    if stray:
        raise GenlabError(f"{where} names {stray[0]}, which is not an image in the zip")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise GenlabError(f"{where} has no label for {missing[0]} ({len(missing)} unlabelled)")
    values = np.asarray([by_name[n] for n in names])
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        # StyleGAN also allows float vectors (N, D); genlab's conditional models take class ids
        raise GenlabError(
            f"{where} holds {values.dtype} labels of shape {values.shape[1:] or 'scalar'}; "
            "genlab needs one integer class id per image"
        )
    if values.min() < 0:
        raise GenlabError(f"{where}: label {values.min()} is negative; class ids start at 0")
    return torch.from_numpy(values.astype(np.int64))


def read_member(path: Path, zf: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes, CRC-checked by zipfile; corruption is one line naming zip and member."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        # BadZipFile: "Bad CRC-32 for file ..." or a broken local header; zlib.error / EOFError:
        # a truncated deflate stream
        raise GenlabError(f"data.path={path}: member {name} is corrupt ({e})") from None


class ZipImages(Dataset):
    """The images of a StyleGAN dataset zip, decoded per item; one open ZipFile per process.

    The ZipFile opens on first read in each process (DataLoader worker, DDP rank) and is never
    pickled: forked workers sharing one file offset would read each other's bytes.
    """

    def __init__(self, path: Path, names: list[str], labels: Tensor | None, size: int, ch: int):
        self.path = path
        self.names = names
        self.labels = labels if labels is not None else torch.zeros(len(names), dtype=torch.long)
        self.image_size = size
        self.channels = ch
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_pid": -1}

    def __len__(self) -> int:
        return len(self.names)

    def zip(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = open_zip(self.path), os.getpid()
        return self._zip

    def pixels(self, i: int) -> Tensor:
        """Item ``i`` as uint8 (C, H, W) at this dataset's size and channels."""
        name = self.names[i]
        data = read_member(self.path, self.zip(), name)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return pil_to_uint8(image, self.image_size, self.channels)
        except (OSError, SyntaxError, ValueError) as e:
            raise GenlabError(
                f"data.path={self.path}: member {name} is not an image ({e})"
            ) from None

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return to_float(self.pixels(i)), self.labels[i]

    def __getitems__(self, indices: list[int]) -> Batch:
        images = torch.stack([self.pixels(i) for i in indices])  # (B, C, H, W) uint8
        return Batch(to_float(images), self.labels[indices])


# ----------------------------------------------------------------------------- Hugging Face


OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def import_datasets() -> Any:
    """The ``datasets`` module, or one line saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise GenlabError("data=hf needs the datasets package: pip install 'genlab[hf]'") from None
    return datasets


@contextmanager
def offline() -> Iterator[Any]:
    """``datasets`` with every Hub access off while the block runs: a Hub id must be cached.

    The variables are read when ``datasets`` and ``huggingface_hub`` are imported, so the
    imported modules' flags are switched too; all of it is restored afterwards.
    """
    saved_env = {k: os.environ.get(k) for k in OFFLINE_VARIABLES}
    os.environ.update(dict.fromkeys(OFFLINE_VARIABLES, "1"))
    datasets = import_datasets()
    import huggingface_hub.constants as hub

    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (hub, "HF_HUB_OFFLINE")]  # fmt: skip
    saved = [getattr(module, name) for module, name in flags]
    for module, name in flags:
        setattr(module, name, True)
    try:
        yield datasets
    finally:
        for (module, name), value in zip(flags, saved, strict=True):
            setattr(module, name, value)
        for key, value in saved_env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def parquet_files(spec: str) -> list[str]:
    """The parquet files ``spec`` names: a file, a glob, or a directory of ``*.parquet``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.parquet"))
    if path.is_file():
        return [str(path)]
    return sorted(glob.glob(str(path), recursive=True)) if glob.has_magic(spec) else []


def load_hf(spec: str) -> Any:
    """``data.path`` as a ``datasets`` Dataset or DatasetDict, without any download."""
    path = Path(spec).expanduser()
    saved = any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))
    with offline() as datasets:
        return load_offline(datasets, spec, path, saved)


def load_offline(datasets: Any, spec: str, path: Path, saved: bool) -> Any:
    """``load_hf``'s work, inside ``offline()``."""
    try:
        if path.is_dir() and saved:
            return datasets.load_from_disk(str(path))
        files = parquet_files(spec)
        if files:
            return datasets.load_dataset("parquet", data_files={"train": files})
        if path.exists() or glob.has_magic(spec):
            raise GenlabError(
                f"data.path={spec}: neither a save_to_disk directory nor parquet files"
            )
        return datasets.load_dataset(spec)
    except GenlabError:
        raise
    except Exception as e:  # datasets' own errors: offline Hub misses, broken Arrow files, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise GenlabError(
            f"data.path={spec}: cannot load it as a Hugging Face dataset offline (a save_to_disk "
            f"directory, parquet files or a Hub id in the local cache): {first}"
        ) from None


class HFImages(Dataset):
    """One split of a ``datasets`` dataset: images decoded with PIL per item, labels in memory.

    The image column is read undecoded (``Image(decode=False)``: the stored bytes or path), so a
    batch is one Arrow gather and genlab's own conversion; a pickled copy carries the Arrow
    files' paths (memory-mapped), not the images.
    """

    def __init__(self, table: Any, column: str, labels: Tensor, size: int, ch: int, what: str):
        self.table = table
        self.column = column
        self.labels = labels
        self.image_size = size
        self.channels = ch
        self.what = what  # names the dataset in errors

    def __len__(self) -> int:
        return len(self.table)

    def decode(self, cell: dict, i: int) -> Tensor:
        try:
            source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
            with Image.open(source) as image:
                return pil_to_uint8(image, self.image_size, self.channels)
        except (OSError, SyntaxError, ValueError, TypeError, KeyError) as e:
            raise GenlabError(
                f"{self.what}: row {i} of {self.column} is not an image ({e})"
            ) from None

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        images, labels = self.__getitems__([i])
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        cells = self.table[indices][self.column]
        images = torch.stack([self.decode(c, i) for c, i in zip(cells, indices, strict=True)])
        return Batch(to_float(images), self.labels[indices])  # (B, C, H, W)


def hf_split(
    data: Any, spec: str, split: str, image_column: str, label_column: str | None
) -> tuple[Any, Tensor | None, list[str] | None]:
    """The split's table (images undecoded), its labels and class names, checked.

    Labels: a ClassLabel feature gives names and count; plain integers count max + 1.
    """
    datasets = import_datasets()
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise GenlabError(f"data.split={split}: data.path={spec} has splits {', '.join(data)}")
        data = data[split]
    columns = list(data.column_names)
    for key, name in (("image_column", image_column), ("label_column", label_column)):
        if name is not None and name not in columns:
            raise GenlabError(
                f"data.{key}={name}: data.path={spec} has no such column (columns: "
                f"{', '.join(columns)})"
            )
    feature = data.features[image_column]
    if not isinstance(feature, datasets.Image):
        raise GenlabError(
            f"data.image_column={image_column}: data.path={spec} stores "
            f"{type(feature).__name__} there, not an Image feature"
        )
    table = data.select_columns([image_column]).cast_column(
        image_column, datasets.Image(decode=False)
    )
    if label_column is None:
        return table, None, None
    label = data.features[label_column]
    values = np.asarray(data.with_format("numpy")[label_column])
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise GenlabError(
            f"data.label_column={label_column}: data.path={spec} holds {values.dtype} "
            f"{values.shape[1:] or 'scalar'} values there; genlab needs integer class ids"
        )
    if len(values) and values.min() < 0:
        raise GenlabError(
            f"data.label_column={label_column}: label {values.min()} in data.path={spec} is "
            "negative; class ids start at 0"
        )
    names = list(label.names) if isinstance(label, datasets.ClassLabel) else None
    return table, torch.from_numpy(values.astype(np.int64)), names
