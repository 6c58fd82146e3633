"""Kernel Inception Distance: unbiased MMD^2 under a cubic polynomial kernel (Binkowski et al.)."""

import warnings

import numpy as np
import torch
from torch import Tensor

from genlab.errors import GenlabWarning
from genlab.metrics.fid import check_counts

SEED = 2020  # torch-fidelity's rng_seed: the same KID subsets and IS splits, so the same numbers
KID_DEGREE = 3


def poly_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(a, b) = (a.b / D + 1)^3 between rows of (K, D) x and (L, D) y: (K, L)."""
    return (x @ y.T / x.shape[1] + 1) ** KID_DEGREE


def _mmd2_poly(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 between (K, D) subsets under the polynomial kernel."""
    k = len(x)
    kxx, kyy, kxy = poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y)  # (K, K)
    within = kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()
    return within / (k * (k - 1)) - 2 * kxy.sum() / k**2


def kid_from_features(
    real: Tensor, fake: Tensor, subset_size: int = 1000, subsets: int = 100, seed: int = SEED
) -> tuple[float, float]:
    """KID mean and std over random subsets of (N, D) real and (M, D) fake features."""
    n, m = len(real), len(fake)
    check_counts("KID", n, m)
    if subset_size > min(n, m):
        warnings.warn(
            f"KID subset size {subset_size} > {min(n, m)} samples: using {min(n, m)} "
            f"(lower metrics.kid_subset_size or raise metrics.num_samples)",
            GenlabWarning,
            stacklevel=2,
        )
        subset_size = min(n, m)
    real, fake = real.double(), fake.double()
    # torch-fidelity's draws, fake (its input1) first: the same subsets give the same numbers.
    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        j = torch.from_numpy(rng.choice(m, subset_size, replace=False)).to(fake.device)
        i = torch.from_numpy(rng.choice(n, subset_size, replace=False)).to(real.device)
        mmds.append(_mmd2_poly(fake[j], real[i]))
    mmd = torch.stack(mmds)
    return float(mmd.mean()), float(mmd.std(correction=0))
