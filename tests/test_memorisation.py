"""Memorisation against held-out data: calibrated copies, C_T and authenticity on features.

Agreement: C_T and authenticity equal dgm-eval's on the same features (reference numbers below,
produced once by its own code; dgm-eval is not on PyPI). The calibrated ``copies`` has no
reference implementation: a simulation with known truth checks that fresh draws score 0.
"""

import math

import pytest
import torch
from scipy.stats import mannwhitneyu
from torch import Tensor

from genlab.errors import GenlabError
from genlab.metrics.knn import knn_radii, nearest
from genlab.metrics.memorisation import (
    authenticity,
    authenticity_from_neighbours,
    calibrated_copies,
    calibrated_from_distances,
    copies_floor,
    copies_fraction,
    ct_cells,
    ct_score,
    kmeans,
    mann_whitney_z,
    pca_project,
    protocol,
)

# Produced by layer6ai-labs/dgm-eval at commit 74c79f7527fbf38fdccfbac51f25d759bc02ab07:
# dgm_eval/metrics/ct.py compute_CTscore(train, test, fake) and dgm_eval/metrics/authpct.py
# compute_authpct(train, fake), run once on ct_features(...) and auth_features() below (as
# float64 numpy) with scikit-learn 1.9.1, scipy 1.17.1, torch 2.14.1. Its k-means is unseeded:
# these blobs are so far apart that every start finds the same cells (three runs agreed).
# dgm-eval's Zu returns a (1,) array that NumPy 2.4 refuses to store as a float, so the run
# wrapped ct.Zu to return ``.item()``; nothing else was changed.
DGM_EVAL_CT = {16: -4.538057411385472, 128: -2.94216914660498}
DGM_EVAL_AUTHPCT = 56.3636360168457  # percent, computed in float32: 124 of 220 fakes


def blobs(n: int, d: int, g: torch.Generator, scale: float = 1.0) -> Tensor:
    """(3n, d) points, n around each of three centres 20 apart."""
    centres = torch.zeros(3, d, dtype=torch.float64)
    centres[1, 0], centres[2, 1] = 20.0, 20.0
    return (
        centres[:, None] + scale * torch.randn(3, n, d, generator=g, dtype=torch.float64)
    ).reshape(-1, d)


def ct_features(d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Train, test, fake with three clear cells: fresh and wider, copying, too few to count."""
    g = torch.Generator().manual_seed(d)
    latent = min(d, 64)  # wider features live in a 64-d subspace: any exact PCA keeps distances
    train = blobs(200, latent, g)  # (600, latent)
    test = blobs(80, latent, g)[30:]  # (210, latent): cells hold 50, 80, 80 (unequal weights)
    wide = 1.2 * torch.randn(40, latent, generator=g, dtype=torch.float64)  # cell 0, underfits
    copied = train[200:240] + 0.05 * torch.randn(40, latent, generator=g, dtype=torch.float64)
    few = train[400:415] + 0.01 * torch.randn(15, latent, generator=g, dtype=torch.float64)
    fake = torch.cat([wide, copied, few])  # (95, latent); cell 2 has 15 < 21 fakes
    if d > latent:
        embed = torch.linalg.qr(torch.randn(d, latent, generator=g, dtype=torch.float64)).Q
        train, test, fake = train @ embed.T, test @ embed.T, fake @ embed.T
    return train, test, fake


def auth_features() -> tuple[Tensor, Tensor]:
    """Train (400, 32); fake: 150 fresh, 50 near copies, 20 exact copies."""
    g = torch.Generator().manual_seed(7)
    train = torch.randn(400, 32, generator=g, dtype=torch.float64)
    fresh = torch.randn(150, 32, generator=g, dtype=torch.float64)
    near = train[:50] + 0.01 * torch.randn(50, 32, generator=g, dtype=torch.float64)
    return train, torch.cat([fresh, near, train[100:120]])


def gaussian(n: int, d: int, g: torch.Generator) -> Tensor:
    """(n, d) standard normal features."""
    return torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("d", [16, 128])
def test_ct_agrees_with_dgm_eval(d):
    train, test, fake = ct_features(d)
    ours = ct_cells(train, test, fake)
    assert ours.ct == pytest.approx(DGM_EVAL_CT[d], abs=1e-9)
    # the fixture exercises all three cases: fresh but wider (z > 0), copying, too few fakes
    assert ours.fakes == [40, 40, 15] and ours.counted == [True, True, False]
    assert ours.z[0] > 2 and ours.z[1] < -5


def test_authenticity_agrees_with_dgm_eval():
    assert 100 * authenticity(*auth_features()) == pytest.approx(DGM_EVAL_AUTHPCT, abs=1e-4)


def test_mann_whitney_z_by_hand_and_against_scipy():
    # fakes 1 and 3 against test 2: one pair with the fake farther, U = 1
    expected = (1 - (1 * 2 / 2 - 0.5)) / math.sqrt(1 * 2 * 4 / 12)
    assert mann_whitney_z(torch.tensor([1.0, 3.0]), torch.tensor([2.0])) == pytest.approx(expected)
    g = torch.Generator().manual_seed(0)
    fake = torch.randint(0, 20, (37,), generator=g).double()  # ties within and across the sets
    test = torch.randint(0, 20, (23,), generator=g).double()
    u = mannwhitneyu(fake.numpy(), test.numpy()).statistic
    z = (u - (37 * 23 / 2 - 0.5)) / math.sqrt(37 * 23 * 61 / 12)
    assert mann_whitney_z(fake, test) == pytest.approx(z, abs=1e-12)


def test_ct_with_one_cell_is_the_global_z_and_needs_enough_fakes():
    g = torch.Generator().manual_seed(1)
    train, test, fake = gaussian(200, 8, g), gaussian(100, 8, g), gaussian(50, 8, g)
    fake_to_train, _ = nearest(fake, train)
    test_to_train, _ = nearest(test, train)
    z = mann_whitney_z(fake_to_train, test_to_train)
    assert ct_score(train, test, fake, cells=1) == pytest.approx(z, abs=1e-12)
    # a cell counts from min_fakes fakes on (dgm-eval's tau = 20 / m: more than 20)
    assert ct_score(train, test, fake, cells=1, min_fakes=50) == pytest.approx(z, abs=1e-12)
    assert math.isnan(ct_score(train, test, fake, cells=1, min_fakes=51))
    train, test, fake = ct_features(16)
    with pytest.raises(GenlabError, match="no held-out"):
        ct_score(train, test[:50], fake)  # held-out images from the first cell only


def test_ct_separates_copies_from_fresh_samples():
    g = torch.Generator().manual_seed(2)
    train, test, fresh = gaussian(600, 128, g), gaussian(300, 128, g), gaussian(300, 128, g)
    copies = train[:300] + 0.01 * gaussian(300, 128, g)
    assert abs(ct_score(train, test, fresh)) < 3  # about N(0, 1) for fresh draws
    assert ct_score(train, test, copies) < -10


def test_pca_keeps_distances_in_a_subspace_and_leaves_narrow_features():
    g = torch.Generator().manual_seed(3)
    embed = torch.linalg.qr(gaussian(100, 10, g)).Q  # (100, 10) orthonormal columns
    train, other = gaussian(50, 10, g) @ embed.T, gaussian(20, 10, g) @ embed.T
    p_train, p_other = pca_project(train, [other], dim=12, block=7)
    assert p_train.shape == (50, 12)
    assert torch.cdist(p_other, p_train) == pytest.approx(torch.cdist(other, train), abs=1e-10)
    narrow = pca_project(train[:, :12], [other[:, :12]], dim=12)
    assert torch.equal(narrow[0], train[:, :12])


def test_kmeans_finds_separated_blobs_and_repeats_with_its_seed():
    x = blobs(50, 4, torch.Generator().manual_seed(4))
    centres = kmeans(x, 3, restarts=2, seed=5)
    labels = torch.cdist(x, centres).argmin(1).reshape(3, 50)
    assert all(len(row.unique()) == 1 for row in labels) and len(labels[:, 0].unique()) == 3
    assert torch.equal(centres, kmeans(x, 3, restarts=2, seed=5))
    with pytest.raises(GenlabError, match="cells"):
        kmeans(x[:2], 3, restarts=1, seed=0)


def test_authenticity_by_hand():
    train = torch.tensor([[0.0], [1.0], [3.0], [3.0]])  # own nearest distances 1, 1, 0, 0
    # authentic when farther than the nearest training image's own distance: 0.2 < 1 no,
    # 2.5 > 0 yes, 0 = 0 no (a copy of a duplicated image, strict as dgm-eval), 2 > 1 yes
    fake = torch.tensor([[0.2], [5.5], [3.0], [-2.0]])
    assert authenticity(train, fake) == 0.5
    dist, index = nearest(fake, train)
    own = knn_radii(train, {1})[1].sqrt()
    assert authenticity_from_neighbours(dist, index, own) == 0.5


def test_authenticity_separates_copies_from_fresh_samples():
    g = torch.Generator().manual_seed(6)
    train, fresh = gaussian(500, 64, g), gaussian(500, 64, g)
    assert authenticity(train, fresh) > 0.3
    assert authenticity(train, train[:200] + 0.01 * gaussian(200, 64, g)) == 0


def test_calibrated_copies_by_hand():
    train_to_train = torch.arange(1.0, 101.0)  # 1st percentile 1.99 (linear interpolation)
    fake_to_train = torch.tensor([0.5, 1.5, 2.5, 3.0])  # 2 of 4 below
    test_to_train = torch.tensor([1.0, 5.0, 5.0, 5.0, 5.0])  # 1 of 5 below
    out = calibrated_from_distances(fake_to_train, test_to_train, train_to_train)
    assert (out.copies, out.floor) == (0.5, 0.2)
    assert out.excess == pytest.approx(0.3)
    assert out.se == pytest.approx(math.sqrt(1 / 3 * 2 / 3 * (1 / 4 + 1 / 5)))  # 3 of 9
    assert set(out.values()) == {"copies", "copies_floor", "copies_excess", "copies_excess_se"}


def test_calibrated_copies_match_the_uncalibrated_functions():
    g = torch.Generator().manual_seed(8)
    train, test, fake = gaussian(300, 16, g), gaussian(200, 16, g), gaussian(150, 16, g)
    out = calibrated_copies(train, test, fake, block=33)
    assert out.copies == copies_fraction(train, fake)
    assert out.floor == copies_floor(train, test) == copies_fraction(train, test)


def test_calibrated_copies_score_zero_for_fresh_draws_and_not_for_copies():
    """Known truth: fresh draws from the data distribution score 0 on average, copies do not."""
    g = torch.Generator().manual_seed(9)
    reps, n, d = 200, 400, 8
    raw, excess, covered = [], [], 0
    for _ in range(reps):
        train, test, fake = gaussian(n, d, g), gaussian(n, d, g), gaussian(n, d, g)
        out = calibrated_copies(train, test, fake)
        raw.append(out.copies)
        excess.append(out.excess)
        covered += abs(out.excess) <= 1.96 * out.se
    excess_t = torch.tensor(excess)
    # the uncalibrated fraction has a floor above 0; the calibrated one is centred on 0
    assert sum(raw) / reps > 0.005
    assert abs(excess_t.mean()) < 3 * excess_t.std() / math.sqrt(reps)
    assert 0.9 <= covered / reps <= 0.99  # the 95% interval from ``se`` covers 0
    train, test = gaussian(n, d, g), gaussian(n, d, g)
    copied = calibrated_copies(train, test, train[:200] + 1e-3 * gaussian(200, d, g))
    assert copied.excess > 0.9 and copied.excess > 10 * copied.se


def test_protocol_names_the_settings():
    settings = protocol(cells=5, seed=3)
    assert settings["ct_cells"] == 5 and settings["ct_kmeans_seed"] == 3
    assert settings["ct_pca_dim"] == 64 and settings["ct_min_fakes_per_cell"] == 21
    assert all(isinstance(v, str | int | float) for v in settings.values())
    assert not set(settings) & {"copies", "copies_floor", "copies_excess", "ct", "authenticity"}
