"""genlab-prepare format=litdata's format: LitData's optimised chunks plus genlab's manifest,
in a directory or on S3; ``data=streaming`` (``genlab.data.streaming``) reads it.

``write_litdata`` writes one split: LitData's ``chunk-*.bin`` and ``index.json``, then
``genlab.json`` beside them, last, holding what LitData's index has not: the format name, size,
channels, count, class count, the source's identity and every chunk's sha256. A split without
``genlab.json`` reads as not written, so a preparation cut short is never trained on. Items are
stored in a seeded permutation of the source order (item ``i`` keeps its source position in
``index``), so any leading run of them is a uniform sample.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from litdata.streaming.writer import BinaryWriter

from genlab.atomic import atomic_json
from genlab.data.prepared import file_sha256
from genlab.errors import GenlabError

STREAM_FORMAT = "genlab-litdata/1"
STREAM_MANIFEST = "genlab.json"  # beside LitData's index.json
INDEX = "index.json"
ORDER_SEED = 0


def is_remote(path: str) -> bool:
    return "://" in path


def s3_client(storage_options: Mapping[str, Any] | None) -> Any:
    """A boto3 S3 client from ``storage_options`` (endpoint_url, keys, region_name, ...)."""
    import boto3

    return boto3.client("s3", **dict(storage_options or {}))


def split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (bucket, ``a/b``)."""
    if not url.startswith("s3://"):
        raise GenlabError(f"{url}: only local directories and s3:// URLs are supported")
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key.strip("/")


def s3_key(prefix: str, name: str) -> str:
    """The key of ``name`` under ``prefix`` (split_s3's second part; "" is the bucket's root)."""
    return f"{prefix}/{name}" if prefix else name


def write_litdata(
    images: np.ndarray,
    labels: np.ndarray,
    out: str,
    manifest: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
    num_workers: int = 1,
    chunk_bytes: str | int = "16MB",
) -> None:
    """Write one split as LitData chunks plus ``genlab.json`` to ``out`` (a directory or s3://).

    Args:
        images: uint8 (N, H, W, C); stored raw (a decode-free read; PNG would cost CPU per item).
        labels: int64 (N,).
        manifest: what the split was made from (genlab-prepare's manifest); kept under "source".
        storage_options: boto3 client options for s3:// (endpoint_url, aws_access_key_id, ...).
        num_workers: parallel uploads to s3://.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise GenlabError(f"{out}: images must be uint8 (N, H, H, C), got {images.dtype} "
                          f"{images.shape}")  # fmt: skip
    if labels.shape != (len(images),):
        raise GenlabError(f"{out}: {len(labels)} labels for {len(images)} images")
    out = out.rstrip("/")
    remote = is_remote(out)
    stage_parent = None if remote else Path(out).expanduser().parent
    if stage_parent is not None:
        stage_parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".genlab-litdata-", dir=stage_parent))
    try:
        # a seeded permutation: the first items (the held-out val split) are a uniform sample
        order = np.random.default_rng(ORDER_SEED).permutation(len(images))
        writer = BinaryWriter(str(stage), chunk_bytes=chunk_bytes)
        for i, j in enumerate(order):
            writer[i] = {"image": images[j], "label": int(labels[j]), "index": int(j)}
        writer.done()
        writer.merge()
        chunks = sorted(p.name for p in stage.glob("chunk-*.bin"))
        body = {
            "format": STREAM_FORMAT,
            "image_size": int(images.shape[1]),
            "channels": int(images.shape[3]),
            "count": len(images),
            "num_classes": int(manifest.get("num_classes") or 0),
            "order": f"numpy default_rng({ORDER_SEED}).permutation(count); item field index = "
            "position in the source",
            "source": {k: v for k, v in manifest.items() if k not in ("format", "created_utc")},
            "index_sha256": file_sha256(stage / INDEX),
            "chunks": {name: file_sha256(stage / name) for name in chunks},
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
        if remote:
            upload(stage, [*chunks, INDEX], body, out, storage_options, num_workers)
        else:
            publish(stage, [*chunks, INDEX], body, Path(out).expanduser())
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, files: list[str], body: dict, out: Path) -> None:
    """Move staged files into ``out``; the old manifest goes first and the new one comes last."""
    out.mkdir(parents=True, exist_ok=True)
    (out / STREAM_MANIFEST).unlink(missing_ok=True)
    for name in files:
        os.replace(stage / name, out / name)
    atomic_json(body, out / STREAM_MANIFEST)


def upload(
    stage: Path,
    files: list[str],
    body: dict,
    out: str,
    storage_options: Mapping[str, Any] | None,
    num_workers: int,
) -> None:
    """Upload staged files to s3://; the old manifest is deleted first, the new one put last."""
    bucket, prefix = split_s3(out)
    client = s3_client(storage_options)
    try:
        client.delete_object(Bucket=bucket, Key=s3_key(prefix, STREAM_MANIFEST))
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            list(pool.map(lambda n: client.upload_file(str(stage / n), bucket, s3_key(prefix, n)),
                          files))  # fmt: skip
        client.put_object(Bucket=bucket, Key=s3_key(prefix, STREAM_MANIFEST),
                          Body=json.dumps(body, indent=1).encode())  # fmt: skip
    except Exception as e:  # botocore's errors are long: the one line names the URL
        raise GenlabError(f"out={out}: cannot write ({type(e).__name__}: {e})") from None


def read_stream_manifest(
    path: str, storage_options: Mapping[str, Any] | None = None, missing_ok: bool = False
) -> dict | None:
    """``path``/genlab.json (a directory or s3://), or a one-line GenlabError naming it (None
    where it is missing and ``missing_ok``)."""
    where = f"{path.rstrip('/')}/{STREAM_MANIFEST}"
    hint = "write it with genlab-prepare format=litdata"
    if is_remote(path):
        bucket, prefix = split_s3(path)
        try:
            got = s3_client(storage_options).get_object(
                Bucket=bucket, Key=s3_key(prefix, STREAM_MANIFEST)
            )
            text = got["Body"].read()
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
            if code in ("NoSuchKey", "404"):
                if missing_ok:
                    return None
                raise GenlabError(
                    f"data.path={path}: no {STREAM_MANIFEST} there ({hint})"
                ) from None
            raise GenlabError(f"data.path={path}: cannot read {where} ({code}: {e}); check "
                              "data.storage_options") from None  # fmt: skip
    else:
        file = Path(path).expanduser() / STREAM_MANIFEST
        if not file.is_file():
            if missing_ok:
                return None
            raise GenlabError(f"data.path={path}: no {STREAM_MANIFEST} there ({hint})")
        text = file.read_bytes()
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise GenlabError(f"{where}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STREAM_FORMAT:
        raise GenlabError(f"{where}: not a genlab-prepare format=litdata manifest")
    return manifest
