"""Memorisation: do samples sit nearer the training images than held-out real images do?

Three tests on features: ``copies`` (near-duplicates of training images, calibrated on held-out
real images), C_T (Meehan et al. 2020, data copying) and authenticity (Alaa et al. 2022), the
last two as dgm-eval computes them (github.com/layer6ai-labs/dgm-eval at 74c79f7).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.errors import GenlabError
from genlab.metrics.knn import DEFAULT_BLOCK, knn_radii, nearest, row_blocks, sq_dists

COPIES = "copies"
COPIES_FLOOR = "copies_floor"
COPIES_EXCESS = "copies_excess"
COPIES_EXCESS_SE = "copies_excess_se"
CT = "ct"
AUTHENTICITY = "authenticity"

COPY_QUANTILE = 0.01  # the train-train 1st percentile of nearest-neighbour distances

# C_T as Meehan et al. ran it on ImageNet (BigGan_test.py) and dgm-eval's compute_CTscore runs it
CT_PCA_DIM = 64  # features wider than this are projected on the training set's top 64 axes
CT_CELLS = 3  # k-means cells on the (projected) training features
CT_MIN_FAKES = 21  # a cell counts with at least 21 fakes: their tau = 20 / m with a strict >
CT_RESTARTS = 10  # k-means++ starts, the lowest inertia kept (sklearn's n_init=10)
CT_SEED = 0  # dgm-eval leaves k-means unseeded; genlab fixes it so a run repeats
KMEANS_ITERS = 300  # sklearn's max_iter
KMEANS_TOL = 1e-4  # sklearn's tol: centre shift relative to the mean feature variance


def copy_threshold(train: Tensor, block: int = DEFAULT_BLOCK) -> float:
    """The 1st percentile of each (N, D) training feature's distance to its nearest other one."""
    return threshold_of(knn_radii(train, {1}, block)[1].sqrt())


def threshold_of(train_to_train: Tensor) -> float:
    """The 1st percentile of training images' (N,) nearest-other-image distances."""
    return float(torch.quantile(train_to_train, COPY_QUANTILE))


def copies_from_distances(sample_to_train: Tensor, train_to_train: Tensor) -> float:
    """Fraction of samples (M,) nearer to a training image than the threshold."""
    return float((sample_to_train < threshold_of(train_to_train)).double().mean())


def copies_fraction(train: Tensor, samples: Tensor, block: int = DEFAULT_BLOCK) -> float:
    """Fraction of (M, D) samples nearer to some training feature than ``copy_threshold``."""
    dist, _ = nearest(samples, train, block)
    return float((dist < copy_threshold(train, block)).double().mean())


@dataclass(frozen=True)
class CalibratedCopies:
    """``copies`` of the fakes, its held-out floor, and the excess over that floor."""

    copies: float  # fraction of fakes under the train-train threshold
    floor: float  # the same fraction for held-out real images: what fresh samples score
    excess: float  # copies - floor: 0 in expectation for fresh samples, > 0 for copying
    se: float  # standard error of excess for fresh samples, given the training set

    def values(self) -> dict[str, float]:
        """The four numbers under their metrics.json keys."""
        return {
            COPIES: self.copies,
            COPIES_FLOOR: self.floor,
            COPIES_EXCESS: self.excess,
            COPIES_EXCESS_SE: self.se,
        }


def calibrated_from_distances(
    fake_to_train: Tensor, test_to_train: Tensor, train_to_train: Tensor
) -> CalibratedCopies:
    """Copies of fakes (M,) and of held-out images (N_test,) under one threshold from (N,)."""
    threshold = threshold_of(train_to_train)
    m, n = len(fake_to_train), len(test_to_train)
    copies = float((fake_to_train < threshold).double().mean())
    floor = float((test_to_train < threshold).double().mean())
    # given the training set the threshold is fixed and fake and held-out images are drawn
    # independently, so the two fractions are independent binomials with the same mean when
    # fakes are fresh draws: their difference is unbiased, not clipped at 0 (that would bias it)
    pooled = (copies * m + floor * n) / (m + n)
    # the pooled (null) variance: with ~1% rates the unpooled one covered 0 in 92% of 1000
    # simulated fresh-sample runs at a nominal 95%, the pooled one in 95%
    se = math.sqrt(pooled * (1 - pooled) * (1 / m + 1 / n))
    return CalibratedCopies(copies, floor, copies - floor, se)


def calibrated_copies(
    train: Tensor, test: Tensor, fake: Tensor, block: int = DEFAULT_BLOCK
) -> CalibratedCopies:
    """``copies`` of (M, D) fakes against (N, D) train, less that of (N_test, D) held-out real."""
    train_to_train = knn_radii(train, {1}, block)[1].sqrt()  # (N,)
    fake_to_train, _ = nearest(fake, train, block)  # (M,)
    test_to_train, _ = nearest(test, train, block)  # (N_test,)
    return calibrated_from_distances(fake_to_train, test_to_train, train_to_train)


def copies_floor(train: Tensor, test: Tensor, block: int = DEFAULT_BLOCK) -> float:
    """What fresh samples score on ``copies``: the fraction for (N_test, D) held-out real."""
    return copies_fraction(train, test, block)


def authenticity_from_neighbours(
    fake_to_train: Tensor, nearest_train: Tensor, train_to_train: Tensor
) -> float:
    """Fraction of fakes (M,) farther from their nearest training image than it is from its own.

    Args:
        fake_to_train: (M,) distance of each fake to its nearest training image.
        nearest_train: (M,) index of that training image.
        train_to_train: (N,) distance of each training image to its nearest other one.
    """
    # strict <, as dgm-eval: an exact copy of a duplicated training image is not authentic
    return float((train_to_train[nearest_train] < fake_to_train).double().mean())


def authenticity(train: Tensor, fake: Tensor, block: int = DEFAULT_BLOCK) -> float:
    """Authentic fraction of (M, D) fakes against (N, D) train: dgm-eval's ``authpct`` / 100."""
    train_to_train = knn_radii(train, {1}, block)[1].sqrt()  # (N,)
    fake_to_train, index = nearest(fake, train, block)  # (M,), (M,)
    return authenticity_from_neighbours(fake_to_train, index, train_to_train)


def pca_project(
    train: Tensor, others: list[Tensor], dim: int, block: int = DEFAULT_BLOCK
) -> list[Tensor]:
    """(N, D) train and each (M, D) other on train's top ``dim`` principal axes, float64."""
    if train.shape[1] <= dim:  # dgm-eval projects only features wider than ``dim``
        return [x.double() for x in (train, *others)]
    mean = sum(rows.double().sum(0) for _, rows in row_blocks(train, block)) / len(train)  # (D,)
    cov = torch.zeros(train.shape[1], train.shape[1], dtype=torch.float64, device=train.device)
    for _, rows in row_blocks(train, block):
        centred = rows.double() - mean
        cov += centred.T @ centred
    # exact axes: sklearn's randomized solver approximates these, and signs do not matter for
    # the distances and clusters computed in the projection
    axes = torch.linalg.eigh(cov).eigenvectors[:, -dim:]  # (D, dim), eigenvalues ascending
    return [
        torch.cat([(rows.double() - mean) @ axes for _, rows in row_blocks(x, block)])
        for x in (train, *others)
    ]


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(k, D) starting centres for (N, D) x by greedy k-means++ (sklearn's default)."""
    trials = 2 + int(math.log(k))  # candidates per centre, sklearn's choice
    first = int(torch.randint(len(x), (1,), generator=generator))
    centres = [x[first]]
    closest = sq_dists(x, x[first : first + 1])[:, 0]  # (N,) squared distance to nearest centre
    for _ in range(1, k):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        # the seeded generator lives on the CPU, whatever device the features are on
        candidates = torch.multinomial(weights.cpu(), trials, replacement=True, generator=generator)
        potential = torch.minimum(closest[:, None], sq_dists(x, x[candidates]))  # (N, trials)
        best = int(potential.sum(0).argmin())
        closest = potential[:, best]
        centres.append(x[candidates[best]])
    return torch.stack(centres)


def kmeans(x: Tensor, k: int, restarts: int, seed: int) -> Tensor:
    """(k, D) centres of Lloyd's k-means on (N, D) x, the best of ``restarts`` seeded starts."""
    if not 1 <= k <= len(x):
        raise GenlabError(f"C_T needs 1 <= cells <= training images, got {k} and {len(x)}")
    x = x.double()
    generator = torch.Generator().manual_seed(seed)
    tol = KMEANS_TOL * float(x.var(0, correction=0).mean())
    x_sq = x.square().sum(1, keepdim=True)  # (N, 1)
    best, best_inertia = x[:k], math.inf
    for _ in range(restarts):
        centres = kmeans_plus_plus(x, k, generator)
        labels = torch.full((len(x),), -1, device=x.device)
        for _ in range(KMEANS_ITERS):
            # |x|^2 does not change which centre is nearest
            new_labels = (centres.square().sum(1) - 2 * x @ centres.T).argmin(1)  # (N,)
            member = torch.nn.functional.one_hot(new_labels, k).double()  # (N, k)
            counts = member.sum(0)  # (k,)
            sums = member.T @ x  # (k, D): one matmul, far faster than index_add_ on CPU
            # an emptied centre stays where it was
            moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
            shift = float((moved - centres).square().sum())
            converged = torch.equal(new_labels, labels) or shift <= tol  # sklearn's two tests
            centres, labels = moved, new_labels
            if converged:
                break
        inertia = float((x_sq + centres.square().sum(1) - 2 * x @ centres.T).min(1).values.sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


def mann_whitney_z(fake_to_train: Tensor, test_to_train: Tensor) -> float:
    """Meehan et al.'s z-scored Mann-Whitney U of (m,) fake vs (n,) test distances to train.

    U counts the (fake, test) pairs where the fake is the farther (ties count half), as scipy's
    ``mannwhitneyu(fake, test).statistic``; z < 0 means fakes sit nearer the training images.
    """
    m, n = len(fake_to_train), len(test_to_train)
    test_sorted = test_to_train.double().sort().values
    fake = fake_to_train.double()
    below = torch.searchsorted(test_sorted, fake)  # (m,) test distances < each fake's
    upto = torch.searchsorted(test_sorted, fake, right=True)  # (m,) test distances <= it
    u = float((below + upto).sum()) / 2
    # Meehan's normalisation: mean nm/2 - 0.5 ("continuity correction"), no tie correction
    return (u - (n * m / 2 - 0.5)) / math.sqrt(n * m * (n + m + 1) / 12)


@dataclass(frozen=True)
class CTCells:
    """C_T and its per-cell parts; a cell counts when it holds at least ``min_fakes`` fakes."""

    ct: float  # test-mass-weighted mean z over the counted cells; nan if no cell counts
    z: list[float]  # per cell; 0 where a cell has no fakes (dgm-eval's convention)
    test_mass: list[float]  # fraction of held-out images in each cell
    fakes: list[int]  # fakes in each cell
    counted: list[bool]


def ct_cells(
    train: Tensor,
    test: Tensor,
    fake: Tensor,
    cells: int = CT_CELLS,
    pca_dim: int = CT_PCA_DIM,
    min_fakes: int = CT_MIN_FAKES,
    restarts: int = CT_RESTARTS,
    seed: int = CT_SEED,
    block: int = DEFAULT_BLOCK,
) -> CTCells:
    """Meehan et al.'s C_T of (M, D) fakes, (N_test, D) held-out and (N, D) train, per cell."""
    train, test, fake = pca_project(train, [test, fake], pca_dim, block)
    centres = kmeans(train, cells, restarts, seed)  # (cells, dim)
    train_cell, test_cell, fake_cell = (
        torch.cat([sq_dists(rows, centres).argmin(1) for _, rows in row_blocks(x, block)])
        for x in (train, test, fake)
    )
    z, test_mass, fakes = [], [], []
    for c in range(cells):
        train_c, test_c, fake_c = train[train_cell == c], test[test_cell == c], fake[fake_cell == c]
        if not len(test_c) or not len(train_c):
            raise GenlabError(
                f"C_T cell {c} of {cells} holds no held-out or no training images: "
                "use more held-out images or fewer cells"
            )
        # nearest neighbours are searched within the cell's own training images, as Meehan's
        test_to_train, _ = nearest(test_c, train_c, block)
        if len(fake_c):
            fake_to_train, _ = nearest(fake_c, train_c, block)
            z.append(mann_whitney_z(fake_to_train, test_to_train))
        else:
            z.append(0.0)
        test_mass.append(len(test_c) / len(test))
        fakes.append(len(fake_c))
    counted = [f >= min_fakes for f in fakes]
    mass = sum(w for w, keep in zip(test_mass, counted, strict=True) if keep)
    weighted = sum(w * s for w, s, keep in zip(test_mass, z, counted, strict=True) if keep)
    return CTCells(weighted / mass if mass else math.nan, z, test_mass, fakes, counted)


def ct_score(
    train: Tensor,
    test: Tensor,
    fake: Tensor,
    cells: int = CT_CELLS,
    pca_dim: int = CT_PCA_DIM,
    min_fakes: int = CT_MIN_FAKES,
    restarts: int = CT_RESTARTS,
    seed: int = CT_SEED,
    block: int = DEFAULT_BLOCK,
) -> float:
    """C_T (Meehan et al. 2020): < 0 when fakes copy training images, > 0 when they underfit."""
    return ct_cells(train, test, fake, cells, pca_dim, min_fakes, restarts, seed, block).ct


def protocol(
    cells: int = CT_CELLS,
    pca_dim: int = CT_PCA_DIM,
    min_fakes: int = CT_MIN_FAKES,
    restarts: int = CT_RESTARTS,
    seed: int = CT_SEED,
) -> dict[str, str | int | float]:
    """The settings behind copies, C_T and authenticity, for metrics.json (no metric's key)."""
    return {
        "copies_threshold": f"train-train nearest-neighbour {COPY_QUANTILE:.0%} quantile",
        "copies_calibration": "copies_floor: copies of held-out real images under the same "
        "threshold; copies_excess = copies - copies_floor, 0 in expectation for fresh samples; "
        "copies_excess_se: pooled two-binomial standard error given the training set",
        "ct_method": "Meehan et al. 2020 C_T as dgm-eval 74c79f7 compute_CTscore: "
        "< 0 copying, > 0 underfitting",
        "ct_pca_dim": pca_dim,
        "ct_pca_fit": "training features, exact eigenvectors; none when D <= ct_pca_dim",
        "ct_cells": cells,
        "ct_kmeans": "greedy k-means++ then Lloyd on training features, lowest inertia kept",
        "ct_kmeans_restarts": restarts,
        "ct_kmeans_seed": seed,
        "ct_min_fakes_per_cell": min_fakes,
        "ct_weights": "held-out fraction of each counted cell",
        "ct_cell_z": "Mann-Whitney U of fake vs held-out nearest-train distances in the cell, "
        "mean nm/2 - 0.5, no tie correction",
        "authenticity_method": "fraction of fakes farther from their nearest training image "
        "than it is from its nearest other training image (dgm-eval 74c79f7 authpct / 100)",
    }
