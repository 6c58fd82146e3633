"""Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from genlab.errors import GenlabError, GenlabWarning


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def sqrtm_psd(sigma: Tensor) -> Tensor:
    """Symmetric square root (D, D) of a symmetric PSD matrix, round-off negatives dropped."""
    evals, evecs = torch.linalg.eigh(sigma.double())
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def fid_from_stats(
    mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, root1: Tensor | None = None
) -> float:
    """Frechet distance between the Gaussians (mu1, sigma1) and (mu2, sigma2).

    Args:
        root1: ``sqrtm_psd(sigma1)`` when the caller already has it (FID_inf reuses it).
    """
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    # sqrt(S1) S2 sqrt(S1) is symmetric PSD with the eigenvalues of S1 S2, so two symmetric
    # eigendecompositions replace TTUR's slower general eig; clamping drops round-off negatives.
    root1 = sqrtm_psd(sigma1) if root1 is None else root1
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


def check_counts(name: str, n: int, m: int) -> None:
    """A one-line error when a two-sample metric gets fewer than 2 images on a side."""
    if min(n, m) < 2:
        raise GenlabError(
            f"{name} needs at least 2 real and 2 fake images (metrics.num_samples): {n}, {m}"
        )


def fid_from_features(real: Tensor, fake: Tensor, warn: bool = True) -> float:
    """FID between (N, D) real and (M, D) fake features; warns when N or M < D."""
    (n, d), m = real.shape, fake.shape[0]
    check_counts("FID", n, m)
    if warn and min(n, m) < d:
        warnings.warn(
            f"FID from {n} real and {m} fake samples of {d}-d features: the covariance is singular "
            f"(fewer samples than dimensions) and FID is biased upward; compare equal counts only",
            GenlabWarning,
            stacklevel=2,
        )
    if max(n, m) > d:
        return fid_from_stats(*feature_stats(real), *feature_stats(fake))
    # With centred features A (N, D), B (M, D) the covariances are A^T A and B^T B, and the nonzero
    # eigenvalues of A^T A B^T B are the squared singular values of A B^T (N, M): the same trace,
    # exactly, from a small SVD instead of two (D, D) eigendecompositions.
    real, fake = real.double(), fake.double()
    a = (real - real.mean(0)) / math.sqrt(n - 1)  # (N, D)
    b = (fake - fake.mean(0)) / math.sqrt(m - 1)  # (M, D)
    tr_covmean = torch.linalg.svdvals(a @ b.T).sum()
    diff = real.mean(0) - fake.mean(0)
    return float(diff @ diff + a.square().sum() + b.square().sum() - 2 * tr_covmean)


def ifid_from_features(
    real: Tensor, real_labels: Tensor, fake: Tensor, fake_labels: Tensor
) -> float:
    """Intra-class FID: the mean over classes of FID(class-c real, class-c fake).

    Classes with fewer than 2 images on either side are left out (with a warning); the
    per-class sets are small, so each FID is biased upward as FID from few samples is.
    """
    scores, skipped = [], []
    for c in torch.unique(real_labels).tolist():
        r, f = real[real_labels == c], fake[fake_labels == c]
        if min(len(r), len(f)) < 2:
            skipped.append(c)
            continue
        scores.append(fid_from_features(r, f, warn=False))
    if skipped:
        warnings.warn(
            f"iFID leaves out classes with < 2 real or fake images: {skipped}",
            GenlabWarning,
            stacklevel=2,
        )
    if not scores:
        raise GenlabError("iFID: no class has 2 real and 2 fake images (metrics.num_samples)")
    return sum(scores) / len(scores)


def fid_infinity(
    real: Tensor, fake: Tensor, points: int = 15, min_fake: int = 5000, seed: int = 0
) -> dict[str, Any]:
    """FID extrapolated to infinitely many fakes (Chong & Forsyth 2020, FID_inf).

    As their ``calculate_FID_infinity_path``: the real statistics stay those of all of ``real``;
    FID of ``points`` random subsets of the fakes, sized evenly from ``min_fake`` (at most half
    the fakes) to all of them, fitted linearly against 1 / size; FID_inf is the intercept.

    Returns:
        ``value`` (the intercept), ``slope``, ``r2`` of the fit and its ``sizes`` and ``fids``.
    """
    m = len(fake)
    low = min(min_fake, m // 2)
    check_counts("FID_inf", len(real), low)
    sizes = torch.linspace(low, m, points).long().tolist()
    mu1, sigma1 = feature_stats(real)
    root1 = sqrtm_psd(sigma1)
    gen = torch.Generator().manual_seed(seed)
    fids = []
    for size in sizes:
        subset = fake[torch.randperm(m, generator=gen)[:size]]
        fids.append(fid_from_stats(mu1, sigma1, *feature_stats(subset), root1=root1))
    x = 1 / torch.tensor(sizes, dtype=torch.float64)
    y = torch.tensor(fids, dtype=torch.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum())
    intercept = float(y.mean() - slope * x.mean())
    residual = y - (intercept + slope * x)
    r2 = 1 - float(residual.square().sum() / (y - y.mean()).square().sum())
    return {"value": intercept, "slope": slope, "r2": r2, "sizes": sizes, "fids": fids}
