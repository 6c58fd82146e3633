"""Draws under a fixed seed that leave the training RNG as it was."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Draw under ``seed`` on the CPU and ``device``, then restore both RNGs' states.

    Only ``device`` is forked on a GPU: forking every CUDA device would create a context on
    each of them in every DDP rank.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
