"""Vendi score against hand values and the authors' package ``vendi_score``."""

import math

import numpy as np
import pytest
import torch

from genlab.metrics.vendi import vendi_from_features, vendi_from_kernel


def test_identical_items_count_once_and_orthogonal_items_count_each():
    assert vendi_from_kernel(torch.ones(7, 7)) == pytest.approx(1.0)
    assert vendi_from_kernel(torch.eye(7)) == pytest.approx(7.0)
    assert vendi_from_features(torch.tensor([[1.0, 2.0]]).repeat(9, 1)) == pytest.approx(1.0)
    assert vendi_from_features(torch.eye(5) * 3) == pytest.approx(5.0)  # norm does not matter


def test_two_clusters_by_hand():
    # K = blocks of ones for two groups of sizes a and b: eigenvalues a/n and b/n
    a, b = 3, 5
    x = torch.tensor([[1.0, 0.0]] * a + [[0.0, 1.0]] * b)
    p = np.array([a, b]) / (a + b)
    assert vendi_from_features(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert vendi_from_features(x, q=2) == pytest.approx(1 / (p**2).sum())
    assert vendi_from_features(x, q=math.inf) == pytest.approx(1 / p.max())


def test_dual_and_kernel_paths_agree():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))  # N > D: the dual
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    assert vendi_from_features(x) == pytest.approx(vendi_from_kernel(xn @ xn.T), rel=1e-10)
    assert vendi_from_features(x[:4]) == pytest.approx(vendi_from_kernel(xn[:4] @ xn[:4].T))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # theirs reads scipy.sparse.csr
@pytest.mark.parametrize("n, d", [(20, 8), (8, 20)])
def test_agrees_with_the_authors_package(n, d):
    vendi = pytest.importorskip("vendi_score.vendi")
    x = np.random.default_rng(n).normal(size=(n, d))
    ours = vendi_from_features(torch.from_numpy(x))
    assert ours == pytest.approx(vendi.score_X(x), rel=1e-10)
    assert ours == pytest.approx(vendi.score_dual(x), rel=1e-10)
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / d)  # an RBF similarity, k(x, x) = 1
    for q in (1, 0.5, 2, "inf"):
        theirs = vendi.score_K(k, q=q)
        assert vendi_from_kernel(torch.from_numpy(k), q=math.inf if q == "inf" else q) == (
            pytest.approx(theirs, rel=1e-10)
        )


def test_a_collapsed_set_scores_clearly_lower():
    g = torch.Generator().manual_seed(1)
    diverse = torch.randn(64, 16, generator=g)
    collapsed = diverse[:3].repeat(22, 1)[:64] + 0.05 * torch.randn(64, 16, generator=g)
    assert vendi_from_features(collapsed) < 4 < 10 < vendi_from_features(diverse)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unit"):
        vendi_from_kernel(2 * torch.eye(3))
    with pytest.raises(ValueError, match="zero"):
        vendi_from_features(torch.zeros(3, 2))
