"""Losses against values worked out by hand on tiny tensors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genlab import losses
from genlab.errors import GenlabError

REAL = torch.tensor([1.0, -2.0])  # discriminator logits
FAKE = torch.tensor([0.5, -1.0])


def sp(x: float) -> float:
    """softplus(x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


D_EXPECTED = {
    # mean(-log sigmoid(real)) + mean(-log(1 - sigmoid(fake)))
    "ns": (sp(-1) + sp(2)) / 2 + (sp(0.5) + sp(-1)) / 2,  # 1.22010 + 0.64367
    "minimax": (sp(-1) + sp(2)) / 2 + (sp(0.5) + sp(-1)) / 2,
    # mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 3) / 2 + (1.5 + 0) / 2
    "hinge": 2.25,
    # mean(fake) - mean(real) = -0.25 - (-0.5)
    "wgan": 0.25,
    # 0.5 * mean((real - 1)^2) + 0.5 * mean(fake^2) = 0.5 * (0 + 9) / 2 + 0.5 * (0.25 + 1) / 2
    "ls": 2.5625,
}
G_EXPECTED = {
    "ns": (sp(-0.5) + sp(1)) / 2,  # mean(-log sigmoid(fake)) = 0.89367
    "minimax": -(sp(0.5) + sp(-1)) / 2,  # mean(log(1 - sigmoid(fake))) = -0.64367
    "hinge": 0.25,  # -mean(fake)
    "wgan": 0.25,
    "ls": 1.0625,  # 0.5 * mean((fake - 1)^2) = 0.5 * (0.25 + 4) / 2
}


@pytest.mark.parametrize("kind", list(D_EXPECTED))
def test_d_loss_by_hand(kind):
    out = losses.d_loss(kind, REAL, FAKE)
    assert out.shape == ()
    assert out.item() == pytest.approx(D_EXPECTED[kind], rel=1e-6)


@pytest.mark.parametrize("kind", list(G_EXPECTED))
def test_g_loss_by_hand(kind):
    out = losses.g_loss(kind, FAKE)
    assert out.shape == ()
    assert out.item() == pytest.approx(G_EXPECTED[kind], rel=1e-6)


def test_ns_d_loss_is_bce_with_logits():
    bce = F.binary_cross_entropy_with_logits
    expected = bce(REAL, torch.ones(2)) + bce(FAKE, torch.zeros(2))
    assert losses.d_loss("ns", REAL, FAKE).item() == pytest.approx(expected.item(), rel=1e-6)
    assert D_EXPECTED["ns"] == pytest.approx(1.86377, abs=1e-5)


def test_saturating_losses_are_stable_at_large_logits():
    big = torch.tensor([100.0, -100.0])
    # log(1 - sigmoid(100)) = -100 (naively log(0) = -inf), -log(sigmoid(-100)) = 100
    assert losses.g_loss("minimax", big).item() == pytest.approx((-100 + 0) / 2)
    assert losses.g_loss("ns", big).item() == pytest.approx((0 + 100) / 2)
    assert losses.d_loss("ns", big, big).item() == pytest.approx(50 + 50)


def test_unknown_loss_names_the_key():
    with pytest.raises(GenlabError, match=r"model\.loss='bce'"):
        losses.d_loss("bce", REAL, FAKE)
    with pytest.raises(GenlabError, match=r"model\.loss"):
        losses.g_loss("bce", FAKE)


class Linear(nn.Module):
    """D(x) = sum(w * x) per example, so grad_x D = w everywhere."""

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w).view(1, 1, 2, 2))
        self.seen_labels = None

    def forward(self, x, labels=None):
        self.seen_labels = labels
        return (self.w * x).flatten(1).sum(1)


class Quadratic(nn.Module):
    """D(x) = 0.5 * sum(x^2) per example, so grad_x D = x."""

    def forward(self, x, labels=None):
        return 0.5 * x.pow(2).flatten(1).sum(1)


def test_gradient_penalty_linear_by_hand():
    d = Linear([3.0, 4.0, 0.0, 0.0])  # ||w|| = 5
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    labels = torch.tensor([0, 1, 2])
    gp = losses.gradient_penalty(d, real, fake, labels)
    assert gp.item() == pytest.approx((5 - 1) ** 2)
    assert d.seen_labels is labels
    # It trains D: d/dw (||w|| - 1)^2 = 2 * (5 - 1) * w / 5 = 1.6 w
    gp.backward()
    assert d.w.grad.flatten().tolist() == pytest.approx([4.8, 6.4, 0.0, 0.0])


def test_gradient_penalty_at_the_interpolate_by_hand():
    """D(x) = 0.5 * sum(x^2) has grad x, so the penalty depends on where each x lies."""
    real = torch.tensor([[3.0, 0.0], [0.0, 2.0], [2.0, 2.0]]).view(3, 1, 1, 2)
    fake = torch.tensor([[0.0, 0.5], [0.5, 0.0], [0.0, -0.5]]).view(3, 1, 1, 2)
    torch.manual_seed(0)  # eps = (0.50, 0.77, 0.09)
    eps = torch.rand(3, 1, 1, 1)  # the penalty draws its (B, 1, 1, 1) eps first
    torch.manual_seed(0)
    gp = losses.gradient_penalty(Quadratic(), real, fake).item()

    def by_hand(a: torch.Tensor, b: torch.Tensor, e: torch.Tensor) -> float:
        x = e * a + (1 - e) * b  # grad D(x) = x
        return ((x.flatten(1).norm(dim=1) - 1) ** 2).mean().item()

    assert gp == pytest.approx(by_hand(real, fake, eps), rel=1e-6)
    # what plausible mistakes would give: swapped weights, one eps for all, no mixing
    for wrong in (by_hand(fake, real, eps), by_hand(real, fake, eps[:1]), by_hand(real, real, eps)):
        assert abs(wrong - gp) > 0.1


def test_r1_penalty_by_hand():
    d = Linear([3.0, 4.0, 0.0, 0.0])
    real = torch.randn(3, 1, 2, 2, requires_grad=True)
    r1 = losses.r1_penalty(d(real), real)
    assert r1.item() == pytest.approx(25.0)  # ||w||^2
    r1.backward()  # d/dw ||w||^2 = 2w
    assert d.w.grad.flatten().tolist() == pytest.approx([6.0, 8.0, 0.0, 0.0])

    real = torch.tensor([[1.0, 2.0], [3.0, 0.0]]).view(2, 1, 1, 2).requires_grad_(True)
    # grad = x: (||(1, 2)||^2 + ||(3, 0)||^2) / 2 = (5 + 9) / 2
    assert losses.r1_penalty(Quadratic()(real), real).item() == pytest.approx(7.0)


def test_kl_normal_by_hand():
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]])
    # row 2: 0.5 * (1 + 2 - 1 - log 2) + 0.5 * (4 + 1 - 1 - 0) = 0.65343 + 2
    expected = [0.0, 0.5 * (2 - math.log(2)) + 2]
    assert losses.kl_normal(mu, logvar).tolist() == pytest.approx(expected)


def test_bernoulli_nll_by_hand():
    logits = torch.tensor([[0.0, 2.0], [0.0, 0.0]]).view(2, 1, 1, 2)
    x = torch.tensor([[-1.0, 1.0], [0.0, 0.0]]).view(2, 1, 1, 2)  # targets (0, 1), (.5, .5)
    # BCE(0, 0) = log 2, BCE(2, 1) = log(1 + e^-2); BCE(0, 0.5) = log 2 each
    expected = [math.log(2) + sp(-2), 2 * math.log(2)]
    assert losses.bernoulli_nll(logits, x).tolist() == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.82008, abs=1e-5)


def test_gaussian_nll_by_hand():
    x = torch.tensor([1.0, -1.0, 0.0, 0.5]).view(2, 1, 1, 2)
    mean = torch.tensor([0.0, 0.0, 0.0, 0.5]).view(2, 1, 1, 2)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    # sigma = 1: 0.5 * z^2 + 0 + 0.5 log 2 pi per pixel
    assert losses.gaussian_nll(mean, x, 0.0).tolist() == pytest.approx(
        [2 * (0.5 + half_log_2pi), 2 * half_log_2pi]
    )
    # sigma = 2: z = 1/2 for the first example's pixels, 0.125 + log 2 + 0.5 log 2 pi each
    log_scale = torch.tensor(math.log(2.0), requires_grad=True)
    nll = losses.gaussian_nll(mean, x, log_scale)
    assert nll.tolist() == pytest.approx(
        [2 * (0.125 + math.log(2) + half_log_2pi), 2 * (math.log(2) + half_log_2pi)]
    )
    normal = torch.distributions.Normal(mean, 2.0)
    assert nll.tolist() == pytest.approx((-normal.log_prob(x)).flatten(1).sum(1).tolist())
    # d/ds sum(0.5 z^2 e^-2s + s) = sum(1 - z^2 / sigma^2) = (1 - 0.25) * 2 + 1 * 2
    nll.sum().backward()
    assert log_scale.grad.item() == pytest.approx(3.5)


def test_log_normal_by_hand():
    z = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, math.log(4.0)]])
    log_2pi = math.log(2 * math.pi)
    # -0.5 * (2 log 2 pi + log 4 + 1 + 0) for both rows (z - mu = (1, 0))
    expected = -0.5 * (2 * log_2pi + math.log(4) + 1)
    assert losses.log_normal(z, mu, logvar).tolist() == pytest.approx([expected] * 2)
    assert expected == pytest.approx(-3.03102, abs=1e-5)
    # -0.5 * (2 log 2 pi + 1), -0.5 * (2 log 2 pi + 4 + 1)
    assert losses.log_standard_normal(z).tolist() == pytest.approx(
        [-0.5 * (2 * log_2pi + 1), -0.5 * (2 * log_2pi + 5)]
    )


def test_log_normal_matches_kl_by_monte_carlo():
    # E_q[log q(z) - log p(z)] = KL(q || p); 20k draws bring the estimate within ~1%.
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3, -0.7]])
    z = mu + torch.randn(20000, 2) * (0.5 * logvar).exp()
    mc = (losses.log_normal(z, mu, logvar) - losses.log_standard_normal(z)).mean()
    assert mc.item() == pytest.approx(losses.kl_normal(mu, logvar).item(), rel=0.02)
