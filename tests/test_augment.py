"""DiffAugment: each op does what the paper says, differentiably and reproducibly."""

import pytest
import torch

from genlab.augment import brightness, contrast, cutout, diff_augment, saturation, translation
from genlab.errors import GenlabError

POLICIES = ["color", "translation", "cutout", "color,translation,cutout"]


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(16, 3, 16, 16) * 2 - 1  # (B, C, H, W) in [-1, 1]


@pytest.mark.parametrize("policy", POLICIES)
def test_shape_kept_and_gradient_flows(x, policy):
    x = x.clone().requires_grad_(True)
    out = diff_augment(x, policy)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_deterministic_under_seed(x, policy):
    torch.manual_seed(1)
    a = diff_augment(x, policy)
    torch.manual_seed(1)
    b = diff_augment(x, policy)
    c = diff_augment(x, policy)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("policy", ["", " ", ", ,"])
def test_empty_policy_is_identity(x, policy):
    assert torch.equal(diff_augment(x, policy), x)


def test_unknown_item_names_the_key(x):
    with pytest.raises(GenlabError, match=r"model\.diffaugment=.*'flip'"):
        diff_augment(x, "color,flip")


def test_brightness_adds_one_offset_per_image(x):
    delta = brightness(x) - x  # (B, C, H, W)
    per_image = delta.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    offsets = per_image[:, 0]
    assert offsets.min() >= -0.5 and offsets.max() < 0.5
    assert offsets.unique().numel() == len(x)  # drawn per image


def test_saturation_scales_around_the_channel_mean(x):
    out = saturation(x)
    mean = x.mean(1, keepdim=True)
    assert torch.allclose(out.mean(1, keepdim=True), mean, atol=1e-6)
    factor = (out - mean).flatten(1)[:, 0] / (x - mean).flatten(1)[:, 0]  # (B,)
    assert torch.allclose(out - mean, (x - mean) * factor.view(-1, 1, 1, 1), atol=1e-5)
    assert factor.min() >= 0 and factor.max() < 2 and factor.std() > 0


def test_contrast_scales_around_the_image_mean(x):
    out = contrast(x)
    mean = x.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(out.mean((1, 2, 3), keepdim=True), mean, atol=1e-6)
    factor = (out - mean).flatten(1)[:, 0] / (x - mean).flatten(1)[:, 0]
    assert torch.allclose(out - mean, (x - mean) * factor.view(-1, 1, 1, 1), atol=1e-5)
    assert factor.min() >= 0.5 and factor.max() < 1.5


def _shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img (C, H, W) moved down dy and right dx, zeros filling the gap (the reference)."""
    _, h, w = img.shape
    out = torch.zeros_like(img)
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_translation_is_a_zero_padded_shift_of_at_most_an_eighth(x):
    out = translation(x)
    shifts = set()
    for img, res in zip(x, out, strict=True):
        # 16 px / 8 = 2: the result must equal one of the 25 shifts by -2..2 in y and x
        match = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(res, _shifted(img, dy, dx))
        ]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 1 and shifts != {(0, 0)}


def test_cutout_zeros_one_square_of_half_the_size():
    x = torch.rand(32, 3, 16, 16) + 0.5  # no zeros of its own
    torch.manual_seed(0)
    out = cutout(x)
    for img, res in zip(x, out, strict=True):
        cut = res[0] == 0  # (H, W)
        assert torch.equal(res == 0, cut.expand_as(res))  # the same hole in every channel
        assert torch.equal(res[:, ~cut], img[:, ~cut])  # the rest untouched
        rows, cols = cut.any(1).nonzero().flatten(), cut.any(0).nonzero().flatten()
        # one filled rectangle, 8 x 8 (16 / 2) unless clipped by the border to no less than 4
        assert cut.sum() == len(rows) * len(cols)
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
        assert 4 <= len(rows) <= 8 and 4 <= len(cols) <= 8
    assert (out == 0).flatten(1).any(1).all()
