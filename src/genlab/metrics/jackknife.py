"""Delete-a-group jackknife intervals: the population FID and KID, each with a 95% interval.

Both feature sets are cut into the same number of groups (a seeded random assignment), and
group g of the real set is paired with group g of the fake set: the K pairs are independent
and identically distributed, so a metric is a symmetric function of K such pairs. Leaving out
one pair at a time gives K values theta_(g). Then (Quenouille, Tukey; Efron & Stein 1981):

- bias-corrected estimate   theta_J = K theta - (K - 1) mean_g theta_(g)
- standard error            se_J = sqrt((K - 1) / K sum_g (theta_(g) - mean_g theta_(g))^2)
- interval                  theta_J -/+ t_(K-1, 0.975) se_J

FID's bias is a/N + O(1/N^2) (Chong & Forsyth 2020), which theta_J removes to first order, so
its interval covers the population FD (the Frechet distance of the Gaussians fitted to the two
feature distributions), not the plug-in FID at N, which sits above it. KID is an unbiased
U-statistic: its interval is around the all-pairs estimate and covers the population MMD^2.
The Efron-Stein inequality makes the jackknife variance conservative. The coverage of both,
simulated against closed-form truths, is in experiments/intervals/.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from genlab.errors import GenlabError
from genlab.metrics.fid import fid_from_features, fid_from_stats
from genlab.metrics.knn import DEFAULT_BLOCK, row_blocks

LEVEL = 0.95
SEED = 2020
MIN_GROUPS = 10  # the standard error from fewer leave-outs is too noisy to trust


class Jackknife(NamedTuple):
    """A jackknifed statistic: its plug-in value, bias-corrected value, standard error, interval."""

    value: float  # the statistic on all the data
    estimate: float  # bias-corrected: K value - (K - 1) mean(leave-outs)
    se: float
    low: float
    high: float
    groups: int


def check_groups(groups: int) -> None:
    """A one-line error for too few groups to trust the standard error."""
    if not (isinstance(groups, int) and groups >= MIN_GROUPS):
        raise GenlabError(f"metrics.jackknife={groups}: use 0 (off) or >= {MIN_GROUPS} groups")


def check_sizes(groups: int, n: int, m: int) -> None:
    """A one-line error for fewer than 2 images per group on a side."""
    check_groups(groups)
    if 2 * groups > min(n, m):
        raise GenlabError(
            f"metrics.jackknife={groups} groups need >= 2 images per group per set; "
            f"got {n} real and {m} fake"
        )


def assign_groups(n: int, groups: int, seed: int) -> Tensor:
    """Group (n,) of each of n rows: a seeded random split into ``groups`` near-equal parts.

    Random, not by position: a reference set in dataset order may be sorted by class.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(n, dtype=torch.long)
    out[order] = torch.arange(n) % groups
    return out


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def summarise(
    value: float, leave_outs: Tensor, debias: bool = True, level: float = LEVEL
) -> Jackknife:
    """The jackknife estimate, standard error and ``level`` interval from K leave-out values.

    ``debias=False`` centres the interval on ``value``, for a statistic that is unbiased already.
    """
    k = len(leave_outs)
    mean = leave_outs.mean()
    estimate = float(k * value - (k - 1) * mean) if debias else value
    se = math.sqrt((k - 1) / k * float((leave_outs - mean).square().sum()))
    half = t_quantile(0.5 + level / 2, k - 1) * se
    return Jackknife(value, estimate, se, estimate - half, estimate + half, k)


def _leave_out_stats(x: Tensor, groups: Tensor, k: int) -> list[tuple[Tensor, Tensor]]:
    """Mean (D,) and unbiased covariance (D, D) of x without each group in turn.

    From the sums of the whole set minus those of the group: one (D, D) product per group, so
    memory stays at a few (D, D) matrices whatever K is.
    """
    x = x.double()
    centre = x.mean(0)
    x = x - centre  # small sums: the covariance by subtraction keeps its digits
    total_sum, total_outer, n = x.sum(0), x.T @ x, len(x)
    out = []
    for g in range(k):
        rows = x[groups == g]
        size = n - len(rows)
        s = total_sum - rows.sum(0)
        mean = s / size
        cov = (total_outer - rows.T @ rows - size * torch.outer(mean, mean)) / (size - 1)
        out.append((mean + centre, cov))
    return out


def fid_jackknife(
    real: Tensor, fake: Tensor, groups: int, seed: int = SEED, value: float | None = None
) -> Jackknife:
    """FID of (N, D) real and (M, D) fake features, jackknifed over ``groups`` pairs of groups.

    Args:
        value: the plug-in FID when the caller has it (it is one more pair of eigensolves).
    """
    check_sizes(groups, len(real), len(fake))
    g_real = assign_groups(len(real), groups, seed)
    g_fake = assign_groups(len(fake), groups, seed + 1)
    if value is None:
        value = fid_from_features(real, fake, warn=False)
    if max(len(real), len(fake)) <= real.shape[1]:
        # fewer images than dimensions (a class, a quick check): each leave-out's FID from its
        # rows, one small (N, M) SVD (fid_from_features), where the sums below cost two (D, D)
        # eigensolves a group: ~130 s for 20 groups of 2048-d Inception features on one core
        leaves = [
            fid_from_features(real[g_real != g], fake[g_fake != g], warn=False)
            for g in range(groups)
        ]
    else:
        leave_real = _leave_out_stats(real, g_real, groups)
        leave_fake = _leave_out_stats(fake, g_fake, groups)
        leaves = [fid_from_stats(*r, *f) for r, f in zip(leave_real, leave_fake, strict=True)]
    values = torch.tensor(leaves, dtype=torch.float64)
    out = summarise(value, values)
    # an FD is never negative: the interval is cut to [0, inf) (both ends 0 when all of it lies
    # below 0, as for fakes that replay the real images); the centre is left as computed
    return out._replace(low=max(out.low, 0.0), high=max(out.high, 0.0))


def _group_sums(x: Tensor, y: Tensor, gx: Tensor, gy: Tensor, k: int, block: int) -> Tensor:
    """(K, K) sums of the polynomial kernel between group a of x and group b of y."""
    out = torch.zeros(k, k, dtype=torch.float64)
    onehot_y = torch.nn.functional.one_hot(gy, k).double()  # (M, K)
    for start, rows in row_blocks(x, block):
        k = (rows @ y.T).div_(x.shape[1]).add_(1)  # KID's (x.y / D + 1)^3, in place
        per_col = (k * k * k) @ onehot_y  # (b, K): row i against each group of y
        out.index_add_(0, gx[start : start + len(rows)], per_col)
    return out


def _self_kernel(x: Tensor) -> Tensor:
    """k(x_i, x_i) for each row (N,)."""
    return (x.square().sum(1) / x.shape[1] + 1) ** 3


def kid_jackknife(
    real: Tensor, fake: Tensor, groups: int, seed: int = SEED, block: int = DEFAULT_BLOCK
) -> Jackknife:
    """The all-pairs unbiased MMD^2 under KID's kernel, jackknifed over ``groups`` group pairs.

    Its ``value`` and ``estimate`` agree: an unbiased U-statistic has no bias to remove. It
    differs from KID's subset mean only by the subsets' sampling noise.
    """
    check_sizes(groups, len(real), len(fake))
    real, fake = real.double(), fake.double()
    g_real = assign_groups(len(real), groups, seed)
    g_fake = assign_groups(len(fake), groups, seed + 1)
    rr = _group_sums(real, real, g_real, g_real, groups, block)
    ff = _group_sums(fake, fake, g_fake, g_fake, groups, block)
    rf = _group_sums(real, fake, g_real, g_fake, groups, block)
    # pairs of an image with itself are not in the U-statistic
    rr.diagonal().sub_(
        torch.zeros(groups, dtype=torch.float64).index_add_(0, g_real, _self_kernel(real))
    )
    ff.diagonal().sub_(
        torch.zeros(groups, dtype=torch.float64).index_add_(0, g_fake, _self_kernel(fake))
    )
    n_g = torch.bincount(g_real, minlength=groups).double()
    m_g = torch.bincount(g_fake, minlength=groups).double()

    def mmd(keep: Tensor) -> float:
        n, m = float(n_g[keep].sum()), float(m_g[keep].sum())
        xx = rr[keep][:, keep].sum() / (n * (n - 1))
        yy = ff[keep][:, keep].sum() / (m * (m - 1))
        xy = rf[keep][:, keep].sum() / (n * m)
        return float(xx + yy - 2 * xy)

    everything = torch.ones(groups, dtype=torch.bool)
    leave_outs = []
    for g in range(groups):
        keep = everything.clone()
        keep[g] = False
        leave_outs.append(mmd(keep))
    return summarise(mmd(everything), torch.tensor(leave_outs, dtype=torch.float64), debias=False)
