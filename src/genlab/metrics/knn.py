"""Blocked Euclidean k-NN in feature space: never more than (block, N) distances at once."""

from collections.abc import Iterator

import torch
from torch import Tensor

from genlab.console import track
from genlab.errors import GenlabError

DEFAULT_BLOCK = 1024  # rows of the distance matrix held at once: 1024 x 10k float64 = 80 MB
# multiply-adds (rows x reference rows x dims) past which a search reports its progress: about
# 4 s of float64 on 2 CPU cores (1024 x 10k x 2048 took 1.5 s); 50k x 50k x 2048 takes minutes
SLOW_SEARCH = 5 * 10**10


def sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances (B, M) between rows of (B, D) x and (M, D) y, float64."""
    x, y = x.double(), y.double()
    # |x|^2 + |y|^2 - 2 x.y is one matmul; the clamp drops round-off below 0
    d = x.square().sum(1, keepdim=True) + y.square().sum(1) - 2 * x @ y.T
    return d.clamp_(min=0)


def row_blocks(x: Tensor, block: int) -> Iterator[tuple[int, Tensor]]:
    """(start row, rows) of x in blocks of ``block`` rows."""
    if block < 1:
        raise GenlabError(f"metrics.knn_block={block} must be >= 1")
    for start in range(0, len(x), block):
        yield start, x[start : start + block]


def search_blocks(x: Tensor, ref: Tensor, block: int, what: str) -> Iterator[tuple[int, Tensor]]:
    """``row_blocks`` of a search of (N, D) x against (M, D) ref, reported when it is slow."""
    blocks = row_blocks(x, block)
    if len(x) * len(ref) * x.shape[1] >= SLOW_SEARCH:
        blocks = track(blocks, what, len(x), unit="rows", per_step=block)
    return blocks


def knn_radii(x: Tensor, ks: set[int], block: int = DEFAULT_BLOCK) -> dict[int, Tensor]:
    """Squared distance (N,) of each row of (N, D) x to its k-th nearest other row, per k in ks.

    The nearest "neighbour" of a row is itself at distance 0, so the k-th other row is the
    (k + 1)-th smallest, as torch-fidelity's ``kthvalue(k + 1)`` and prdc's partition take it.
    """
    kmax = max(ks)
    if len(x) <= kmax:
        raise GenlabError(
            f"k-NN metrics with k={kmax} need more than {kmax} images per set, got {len(x)} "
            "(metrics.num_samples, metrics.num_real)"
        )
    parts = [
        sq_dists(rows, x).topk(kmax + 1, dim=1, largest=False).values  # (b, kmax + 1) ascending
        for _, rows in search_blocks(x, x, block, f"k-NN radii of {len(x):,} features")
    ]
    smallest = torch.cat(parts)  # (N, kmax + 1)
    return {k: smallest[:, k] for k in ks}


def nearest(x: Tensor, ref: Tensor, block: int = DEFAULT_BLOCK) -> tuple[Tensor, Tensor]:
    """Distance (N,) and index (N,) of the nearest row of (M, D) ref to each row of (N, D) x."""
    dists, index = [], []
    what = f"nearest of {len(ref):,} features to each of {len(x):,}"
    for _, rows in search_blocks(x, ref, block, what):
        d, i = sq_dists(rows, ref).min(1)
        dists.append(d)
        index.append(i)
    return torch.cat(dists).sqrt(), torch.cat(index)
