"""The on-disk cache of real features, keyed by everything that changes them."""

import hashlib
import json
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlab.atomic import atomic_torch_save, computing
from genlab.errors import GenlabWarning

CACHE_VERSION = 2  # 2: labels stored beside the features (iFID), backbone in the key


def _reference_path(key: dict[str, Any], cache_dir: str | Path) -> tuple[Path, str]:
    text = json.dumps({**key, "genlab_cache_version": CACHE_VERSION}, sort_keys=True)
    return Path(cache_dir) / f"ref-{hashlib.sha256(text.encode()).hexdigest()[:32]}.pt", text


def reference_lock(key: dict[str, Any], cache_dir: str | Path) -> AbstractContextManager[None]:
    """Hold while looking up and computing `key`'s entry: concurrent jobs compute it once."""
    return computing(_reference_path(key, cache_dir)[0])


def load_reference_entry(key: dict[str, Any], cache_dir: str | Path) -> dict[str, Tensor] | None:
    """Cached {"pool": (N, D), "labels": (N,) or absent} for `key`, or None when absent or bad."""
    path, text = _reference_path(key, cache_dir)
    if not path.exists():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored["key"] == text:
            return {k: v for k, v in stored.items() if k != "key" and v is not None}
        warnings.warn(
            f"{path}: stored key differs from the one asked; recomputing",
            GenlabWarning,
            stacklevel=2,
        )
    except Exception as err:  # truncated or garbage files raise many types
        reason = type(err).__name__
        warnings.warn(
            f"{path}: unreadable reference cache ({reason}); recomputing",
            GenlabWarning,
            stacklevel=2,
        )
    return None


def load_reference(key: dict[str, Any], cache_dir: str | Path) -> Tensor | None:
    """Cached real pool features (N, D) for `key`, or None when absent, stale or unreadable."""
    entry = load_reference_entry(key, cache_dir)
    return None if entry is None else entry["pool"]


def store_reference(
    key: dict[str, Any], cache_dir: str | Path, pool: Tensor, labels: Tensor | None = None
) -> Path:
    """Write real pool features (and their labels) for `key` atomically; returns the file."""
    path, text = _reference_path(key, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"key": text, "pool": pool.detach().double().cpu()}
    if labels is not None:
        entry["labels"] = labels.detach().long().cpu()
    atomic_torch_save(entry, path)
    return path


def reference_features(
    key: dict[str, Any], cache_dir: str | Path, compute: Callable[[], Tensor]
) -> Tensor:
    """Real pool features (N, D) for `key` from `cache_dir`, calling `compute` only on a miss.

    Args:
        key: JSON-able description of everything that changes the real features (dataset, split,
            image size, channels, number of images, backbone, resize, weights sha256, device
            type, fp32 precision settings).
        compute: returns the (N, D) features when the cache has none.
    """
    with reference_lock(key, cache_dir):  # a job that computes it meanwhile is waited for
        pool = load_reference(key, cache_dir)
        if pool is None:
            pool = compute().detach().double().cpu()  # (N, D)
            store_reference(key, cache_dir, pool)
    return pool
