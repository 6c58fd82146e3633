"""Sliced Wasserstein distance against hand-computed cases."""

import torch

from genlab.metrics.swd import sliced_wasserstein


def test_one_dimensional_shift_is_the_shift():
    x = torch.tensor([[0.0], [1.0], [3.0]])
    # in 1-D every unit direction is +-1, so W1 of a shift by 0.5 is exactly 0.5
    assert torch.isclose(sliced_wasserstein(x, x + 0.5), torch.tensor(0.5))


def test_order_does_not_matter_and_same_set_is_zero():
    x = torch.randn(50, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert sliced_wasserstein(x, x.flip(0)) < 1e-6


def test_farther_set_scores_higher():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    near, far = sliced_wasserstein(x, y), sliced_wasserstein(x, y * 3 + 1)
    assert far > 3 * near
