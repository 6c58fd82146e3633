"""Likelihoods of 8-bit images: normalised over the 256 levels, equal to reference formulas."""

import math

import pytest
import torch

from genlab import losses

LEVELS = torch.arange(256, dtype=torch.float64)
GRID = (2 * LEVELS / 255 - 1).view(256, 1, 1, 1)  # every 8-bit value as a (1, 1, 1) image


def _probs(nll_fn, params: torch.Tensor, *rest) -> torch.Tensor:
    """P(v) for v = 0..255 under one pixel's parameters (1, P, 1, 1): (256,)."""
    return torch.exp(-nll_fn(params.expand(256, -1, -1, -1), GRID, *rest))


@pytest.mark.parametrize(
    ("mean", "std"),
    [(0.0, 0.05), (0.3, 1e-4), (-0.99, 0.01), (1.0, 0.5), (-3.0, 0.2), (2.0, 30.0), (0.5, 3e-3)],
)
def test_discretized_gaussian_sums_to_one_over_the_256_levels(mean, std):
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 1, 1, 1)
    log_std = torch.tensor(math.log(std), dtype=torch.float64).view(1, 1, 1, 1)
    p = _probs(losses.discretized_gaussian_nll, mean_t, log_std)
    assert (p >= 0).all() and p.sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_gaussian_equals_the_normal_cdf_over_each_bin():
    """Bins of width 2/255 around 2 v / 255 - 1, the edge bins open to -inf and +inf."""
    torch.manual_seed(0)
    x = (torch.randint(0, 256, (64, 3, 2, 2)).float() * 2 / 255 - 1).double()
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -1.0, 1.0  # both edge bins
    log_std = torch.empty_like(x).uniform_(math.log(0.005), math.log(0.5))
    # within two scales of the data, where the plain float64 difference of CDFs is accurate
    mean = x + 2 * log_std.exp() * torch.empty_like(x).uniform_(-1, 1)
    normal = torch.distributions.Normal(mean, log_std.exp())
    upper = torch.where(x > 0.999, torch.ones_like(x), normal.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), normal.cdf(x - 1 / 255))
    expected = -torch.log(upper - lower).flatten(1).sum(1)
    got = losses.discretized_gaussian_nll(mean, x, log_std)
    assert torch.allclose(got, expected, rtol=1e-6), (got - expected).abs().max()
    # float32 as training runs it agrees too
    got32 = losses.discretized_gaussian_nll(mean.float(), x.float(), log_std.float())
    assert torch.allclose(got32.double(), expected, rtol=1e-4)


def test_discretized_gaussian_far_in_the_tails_matches_50_digit_arithmetic():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    cases = [(0.0, 40 / 255, 0.01), (0.0, -40 / 255, 0.01), (-1.0, 1.0, 0.05), (1.0, 0.3, 0.02)]
    cases += [(1 - 2 / 255, -0.5, 0.1), (-1 + 2 / 255, 0.9, 0.1), (0.5, 0.5 + 1e-3, 1e-4)]
    cases += [(0.2, -0.1, 30.0), (0.0, 0.0, 3.0)]  # bins far narrower than the scale
    for x, mean, std in cases:
        lo = -mpmath.inf if x < -0.999 else (mpmath.mpf(x) - mpmath.mpf(1) / 255 - mean) / std
        hi = mpmath.inf if x > 0.999 else (mpmath.mpf(x) + mpmath.mpf(1) / 255 - mean) / std
        if lo > 0:  # 1 - ncdf would round away the tail: take the mirror image
            lo, hi = -hi, -lo
        expected = float(-mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))
        args = (torch.tensor(v, dtype=torch.float64).view(1, 1, 1, 1) for v in (mean, x))
        got = losses.discretized_gaussian_nll(*args, math.log(std)).item()
        assert got == pytest.approx(expected, rel=1e-9), (x, mean, std)


def test_discretized_gaussian_hand_value():
    # mean on level 128, std one bin: P = Phi(0.5) - Phi(-0.5)
    x = torch.tensor(2 * 128 / 255 - 1).view(1, 1, 1, 1)
    got = losses.discretized_gaussian_nll(x, x, math.log(2 / 255))
    assert got.item() == pytest.approx(-math.log(math.erf(0.5 / math.sqrt(2))), rel=1e-5)
    # an edge level takes the whole tail beyond it: P(v = 255 | mean 5) is 1
    one = torch.ones(1, 1, 1, 1)
    assert losses.discretized_gaussian_nll(5 * one, one, math.log(0.1)).item() < 1e-6


def test_discretized_gaussian_is_finite_with_finite_gradients_far_in_the_tails():
    x = torch.tensor([-1.0, -1 + 2 / 255, 0.0, 1 - 2 / 255, 1.0]).view(1, 5, 1, 1)
    mean = torch.tensor([3.0, -3.0, 2.0, -2.0, -3.0]).view(1, 5, 1, 1).requires_grad_()
    log_std = torch.tensor(math.log(1e-3), requires_grad=True)
    nll = losses.discretized_gaussian_nll(mean, x, log_std)
    nll.sum().backward()
    assert torch.isfinite(nll).all() and nll.item() > 1e4
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_std.grad)


def test_discretized_gaussian_is_continuous_density_times_bin_when_wide():
    """A scale far wider than a bin: P(bin) -> p(x) * 2/255, 7 bits above the [-1, 1] density."""
    torch.manual_seed(1)
    x = torch.randint(1, 255, (4, 1, 8, 8)).double() * 2 / 255 - 1
    mean = torch.zeros_like(x)
    discrete = losses.discretized_gaussian_nll(mean, x, math.log(0.5))
    density = losses.gaussian_nll(mean, x, math.log(0.5))
    assert torch.allclose(discrete, density + 64 * math.log(255 / 2), rtol=1e-5)


def test_categorical_uniform_logits_give_8_bits_and_sum_to_one():
    logits = torch.zeros(2, 3 * 256, 4, 4)
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    assert torch.allclose(losses.categorical_nll(logits, x), torch.full((2,), 48 * math.log(256)))
    torch.manual_seed(2)
    one = torch.randn(1, 256, 1, 1).double()  # one pixel's logits
    p = _probs(losses.categorical_nll, one)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(p, torch.softmax(one.flatten(), 0))


def test_categorical_reads_each_channel_and_level():
    logits = torch.full((1, 2 * 256, 1, 1), -1e4)
    logits[0, 7], logits[0, 256 + 200] = 0.0, 0.0  # channel 0 -> level 7, channel 1 -> 200
    x = torch.tensor([7.0, 200.0]).view(1, 2, 1, 1) * 2 / 255 - 1
    assert losses.categorical_nll(logits, x).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.categorical_nll(logits, x.flip(1)).item() > 1e3


def test_levels_round_like_to_uint8():
    from genlab.metrics import to_uint8

    x = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.equal(losses.to_levels(x), to_uint8(x)[:, :1].long())
