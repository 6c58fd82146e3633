"""Bootstrap confidence intervals: the fake features resampled with replacement B times.

The real set stays fixed (it is the reference the model is compared with). FID and precision of
each resample are computed as for the full sample (precision reweighs which fakes lie inside the
fixed real manifold). KID is the unbiased MMD^2 over all pairs of distinct fake images, with the
resampling counts as weights, instead of random subsets: a duplicate paired with itself would
inflate it. Recall is the exception: the fake set *is* its manifold, and a resample either loses
a third of its k-NN balls (the images not drawn) or, with radii recomputed, shrinks the balls of
duplicates to 0, so either way recall falls by construction. Its interval resamples the real
images scored against the full fake manifold instead: the spread that comes from the finite set
of real images.
"""

import torch
from torch import Tensor

from genlab.metrics.fid import feature_stats, fid_from_stats, sqrtm_psd
from genlab.metrics.kid import poly_kernel
from genlab.metrics.knn import DEFAULT_BLOCK, row_blocks
from genlab.metrics.prdc import PRDC

LEVEL = 0.95
SEED = 2020


def resample_counts(m: int, b: int, seed: int = SEED) -> Tensor:
    """How often each of m fake images is drawn in each of b resamples of size m: (m, b)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(m, (b, m), generator=gen)  # (b, m)
    counts = torch.zeros(b, m, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts.T.contiguous()


def fid_resamples(real: Tensor, fake: Tensor, counts: Tensor) -> Tensor:
    """FID of each resample (B,): weighted fake mean and covariance against fixed real stats."""
    mu1, sigma1 = feature_stats(real)
    root1 = sqrtm_psd(sigma1)
    fake = fake.double()
    out = []
    for c in counts.T:  # (M,)
        mu2 = (c[:, None] * fake).sum(0) / c.sum()
        centred = fake - mu2
        sigma2 = (centred.T * c) @ centred / (c.sum() - 1)  # the resample's unbiased covariance
        out.append(fid_from_stats(mu1, sigma1, mu2, sigma2, root1=root1))
    return torch.tensor(out, dtype=torch.float64)


def kid_resamples(real: Tensor, fake: Tensor, counts: Tensor, block: int = DEFAULT_BLOCK) -> Tensor:
    """Unbiased MMD^2 (B,) of each resample against the real set, over distinct-image pairs."""
    real, fake = real.double(), fake.double()
    n, m = len(real), len(fake)
    ff = torch.zeros(counts.shape[1], dtype=torch.float64)
    fake_real = torch.zeros(m, dtype=torch.float64)  # sum over real i of k(f_j, r_i)
    for start, rows in row_blocks(fake, block):
        k = poly_kernel(rows, fake)  # (b, M)
        k[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = 0
        ff += (counts[start : start + len(rows)] * (k @ counts)).sum(0)
        fake_real[start : start + len(rows)] = poly_kernel(rows, real).sum(1)
    rr = sum(
        poly_kernel(rows, real).sum() - poly_kernel(rows, rows).diagonal().sum()
        for _, rows in row_blocks(real, block)
    )
    pairs = counts.sum(0) ** 2 - counts.square().sum(0)  # weighted pairs of distinct images
    fr = (counts * fake_real[:, None]).sum(0) / (counts.sum(0) * n)
    return ff / pairs + rr / (n * (n - 1)) - 2 * fr


def precision_resamples(prdc: PRDC, counts: Tensor) -> Tensor:
    """Precision (B,) of each resample: the real manifold is fixed, so it reweighs fakes."""
    inside = prdc.fake_in_real.double().cpu()
    return (counts * inside[:, None]).sum(0) / counts.sum(0)


def recall_resamples(prdc: PRDC, real_counts: Tensor) -> Tensor:
    """Recall (B,) of resampled real images against the full fake manifold."""
    inside = prdc.real_in_fake.double().cpu()
    return (real_counts * inside[:, None]).sum(0) / real_counts.sum(0)


def interval(values: Tensor, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values."""
    tail = (1 - level) / 2
    low, high = torch.quantile(values.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(low), float(high)
