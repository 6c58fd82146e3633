"""Features of samples and real images, computed across DDP ranks and gathered in chunk order;
real features cached on disk by everything that changes them."""

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from genlab.console import track
from genlab.data.datasets import fetch
from genlab.metrics import LABEL, LOGITS, POOL, load_reference_entry, store_reference
from genlab.metrics.cache import reference_lock

Chunk = Callable[[int], tuple[Tensor, Tensor | None]]  # chunk index -> images, labels


def data_key(datamodule: pl.LightningDataModule) -> dict:
    """The data settings that change real images, for the reference-statistics cache key."""
    names = ("source", "image_size", "channels", "val_fraction", "split_seed", "limit", "binarize")
    key = {n: getattr(datamodule, n, None) for n in names}
    if key["source"] == "synthetic":
        key.update(size=datamodule.synthetic_size, classes=datamodule.synthetic_classes)
    if key["source"] == "stacked_mnist":
        key.update(size=datamodule.stacked_size)
    if key["source"] not in ("mnist5k", "stacked_mnist"):
        key["root"] = str(Path(getattr(datamodule, "root", "")).expanduser().resolve())
    if key["source"] == "prepared":  # a directory prepared again holds other images
        key["manifest"] = datamodule.manifest_sha256
    if key["source"] in ("zip", "hf", "streaming"):  # written again: other images, same path
        key["content"] = datamodule.content_sha256
    return key


def single_process(datamodule: pl.LightningDataModule) -> SimpleNamespace:
    """What the feature passes read of a Trainer, for use outside one (genlab-sample)."""
    return SimpleNamespace(
        datamodule=datamodule,
        world_size=1,
        global_rank=0,
        is_global_zero=True,
        strategy=SimpleNamespace(broadcast=lambda x: x),
    )


def gather(
    trainer: Any,
    image_metrics: Any,
    n: int,
    chunk_fn: Chunk,
    batch: int,
    progress: bool,
    what: str = "sample features",
) -> dict[str, Tensor]:
    """Features of chunks 0..ceil(n / batch) - 1, rank r doing r, r + W, ...; all ranks get all.

    Every rank runs the same number of chunk slots (padding ranks repeat the last chunk), and
    under DDP a short chunk's features are padded, so the gathered rows in chunk order start
    with the n wanted ones. Only the images asked for go through the networks. Rank 0 reports
    the pass (``genlab.console.track``): a bar in a terminal where ``progress``, else lines.
    """
    world, rank = trainer.world_size, trainer.global_rank
    chunks = -(-n // batch)
    slots = -(-chunks // world)
    parts: dict[str, list[Tensor]] = {}
    steps = range(slots)
    if trainer.is_global_zero:  # the images of all ranks: they run in step
        steps = track(steps, what, n, per_step=batch * world, bar=progress)
    for s in steps:
        images, labels = chunk_fn(min(s * world + rank, chunks - 1))
        features = image_metrics.features(images)
        if labels is not None:
            features[LABEL] = labels
        for name, f in features.items():
            f = f.double().reshape(len(f), -1)  # (b, D); labels and modes as (b, 1)
            if world > 1 and len(f) < batch:  # the last chunk: equal shapes for all_gather
                f = torch.cat([f, f[:1].expand(batch - len(f), -1)])
            parts.setdefault(name, []).append(f)
    out = {}
    for name, fs in parts.items():
        local = torch.cat(fs)  # (slots * batch, D)
        if world > 1:
            every = trainer.strategy.all_gather(local)  # (W, slots * batch, D)
            local = every.reshape(world, slots, batch, -1).transpose(0, 1)
            local = local.reshape(-1, local.shape[-1])
        out[name] = local[:n] if name in (POOL, LOGITS) else local[:n, 0]
    return out


def real_features(
    trainer: Any,
    image_metrics: Any,
    split: str,
    num_real: int | None,
    cache_dir: Path,
    batch: int,
    device: torch.device,
    progress: bool = False,
) -> tuple[dict[str, Tensor], int]:
    """Real {"pool": (N, D), "labels": (N,)} of ``split``, from the cache or computed across
    ranks and cached by rank 0; and N."""
    dataset = trainer.datamodule.dataset(split)
    n = len(dataset) if num_real is None else min(num_real, len(dataset))
    key = image_metrics.reference_key(**data_key(trainer.datamodule), split=split, n_real=n)
    # rank 0 holds the entry's lock while it looks and computes: a sweep job computing the same
    # features meanwhile is waited for, and its file read (other ranks wait at the broadcast)
    with reference_lock(key, cache_dir) if trainer.is_global_zero else nullcontext():
        cached = load_reference_entry(key, cache_dir) if trainer.is_global_zero else None
        # rank 0 decides, so every rank takes the same branch of the collective below
        if trainer.strategy.broadcast(cached is not None):
            return (cached if cached is not None else load_reference_entry(key, cache_dir)), n

        def real_chunk(j: int) -> tuple[Tensor, Tensor]:
            items = fetch(dataset, list(range(j * batch, min(n, (j + 1) * batch))))
            return items.images.to(device), items.labels.to(device)

        what = f"reference features of {split} (cached for later runs)"
        real = gather(trainer, image_metrics, n, real_chunk, batch, progress, what)
        out = {POOL: real[POOL].cpu(), "labels": real[LABEL].cpu().long()}
        if trainer.is_global_zero:
            store_reference(key, cache_dir, out[POOL], out["labels"])
    return out, n
