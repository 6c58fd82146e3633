"""Sliced Wasserstein distance between two image sets: a cheap, weight-free sample-quality check."""

import torch
from torch import Tensor


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> Tensor:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between projections.

    Args:
        x: (N, ...) samples; flattened to (N, D).
        y: (N, ...) samples of the same count and size.
        n_projections: number of random directions (fixed by ``seed``, so runs compare).
    """
    x, y = x.flatten(1).double(), y.flatten(1).double()  # (N, D)
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {x.shape} and {y.shape}")
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    directions = (directions / directions.norm(dim=0, keepdim=True)).to(x.device)  # (D, P)
    px = (x @ directions).sort(dim=0).values  # (N, P)
    py = (y @ directions).sort(dim=0).values
    return (px - py).abs().mean().float()
