"""ADA (Karras et al. 2020): each transform against a hand check, the per-image probability,
range and gradients, the adaptive p rule, and p in training, checkpoints, resume and DDP.

Reference: NVlabs/stylegan2-ada-pytorch, training/augment.py (transforms, strengths, the bgc
groups of train.py's augpipe_specs) and training/training_loop.py (p += sign(r_t - target) *
batch * interval / (ada_kimg * 1000), every ada_interval=4 batches; target 0.6, ada_kimg 500).
"""

import math
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from genlab.augment import ADA, ada
from genlab.augment.ada import (
    Draw,
    apply,
    augment,
    cut,
    flip_luma,
    recolour,
    rotate2d,
    rotate_luma,
    scale2d,
    scale3d,
    scale_chroma,
    translate2d,
    translate3d,
    warp,
)
from genlab.errors import GenlabError
from genlab.models.gan import GAN
from genlab.training import build, train
from tests.conftest import BIN, REPO, TINY, cli_env, compose_train, fit_built, load_ckpt, ok
from tests.test_reliability import _same_training_state, _signal_at

B = 4


def _ones(value: float = 1.0) -> torch.Tensor:
    return torch.full((B,), float(value))


def _image(c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, c, h, w, generator=g) * 2 - 1  # (B, C, H, W) in [-1, 1]


def _ramps(h: int = 16, w: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose two channels are x and y / 10 (pixels about the centre): bilinear is exact."""
    x = (torch.arange(w) - (w - 1) / 2).view(1, w).expand(h, w)
    y = (torch.arange(h) - (h - 1) / 2).view(h, 1).expand(h, w)
    return torch.stack([x, y]).div(10).expand(B, 2, h, w), x, y


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding of the sampling positions (pixel moves are exact in theory)."""
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# -- blit and geometric: the reference's resampling ----------------------------------------

REFERENCE = Path(__file__).parent / "fixtures/references/ada_stylegan2.pt"
GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
CASES = {name: (name,) for name in GEOMETRIC}
CASES.update(bg=GEOMETRIC, bgc=GEOMETRIC + COLOUR, bgco=(*GEOMETRIC, *COLOUR, "cutout"))


def _percentile_draw(names: tuple[str, ...], q: float, shape: torch.Size) -> Draw:
    """The transforms AugmentPipe applies with ``debug_percentile=q``: each parameter of a
    transform in ``names`` a fixed function of q (the post-rotation 0), the others the identity."""
    b, c, h, w = shape
    q = torch.tensor(q)
    normal = torch.erfinv(2 * q - 1)  # the q-th percentile of a standard normal

    def full(name: str, value: torch.Tensor | float, identity: float) -> torch.Tensor:
        return torch.full((b,), float(value) if name in names else identity)

    shift = (2 * q - 1) * ada.XINT_MAX if "xint" in names else 0.0
    g = ada.blit(
        full("xflip", torch.floor(2 * q), 0.0), full("rotate90", torch.floor(4 * q), 0).long(),
        torch.full((b, 2), float(shift)), h, w,
    )  # fmt: skip
    g = g @ ada.geometric(
        full("scale", torch.exp2(normal * ada.SCALE_STD), 1.0),
        full("rotate", (2 * q - 1) * math.pi * ada.ROTATE_MAX, 0.0),
        full("aniso", torch.exp2(normal * ada.ANISO_STD), 1.0),
        torch.zeros(b),
        torch.full((b, 2), float(normal * ada.XFRAC_STD) if "xfrac" in names else 0.0), h, w,
    )  # fmt: skip
    out = Draw(geometry=g)
    if "brightness" in names:
        out.colour = ada.colour(
            full("brightness", normal * ada.BRIGHTNESS_STD, 0.0),
            full("contrast", torch.exp2(normal * ada.CONTRAST_STD), 1.0),
            full("lumaflip", torch.floor(2 * q), 0.0),
            full("hue", (2 * q - 1) * math.pi * ada.HUE_MAX, 0.0),
            full("saturation", torch.exp2(normal * ada.SATURATION_STD), 1.0), c,
        )  # fmt: skip
    if "cutout" in names:
        out.cutout_centre = torch.full((b, 2), float(q))
        out.cutout_size = torch.full((b,), ada.CUTOUT_SIZE)
    return out


@pytest.mark.parametrize("kind", ["rgb", "grey"])
@pytest.mark.parametrize("case", list(CASES))
def test_equal_to_stylegan2_ada_augment_pipe_on_the_same_parameters(case, kind):
    # The fixture is AugmentPipe's output (NVlabs/stylegan2-ada-pytorch training/augment.py at
    # the commit it records, run unmodified by experiments/references/ada_stylegan2.py) for
    # debug_percentile q: every parameter a fixed function of q, rebuilt here by hand.
    ref = torch.load(REFERENCE, weights_only=True)
    x = ref["images"][kind]
    for q, want in zip(ref["percentiles"], ref["outputs"][case, kind], strict=True):
        got = apply(x, _percentile_draw(CASES[case], q, x.shape))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{case} {kind} q={q}")


def test_the_reference_comparison_can_fail():
    ref = torch.load(REFERENCE, weights_only=True)
    x = ref["images"]["rgb"]
    want = ref["outputs"]["xfrac", "rgb"][2]  # a shift by 0.16 of the image
    g = _percentile_draw(("xfrac",), ref["percentiles"][2], x.shape).geometry
    assert (warp(x, g) - want).abs().max() < 1e-5
    one_bilinear = F.grid_sample(
        x, F.affine_grid(g[:, :2] * torch.tensor([[1.0, 1.0, 2 / 16]]), x.shape, False),
        padding_mode="reflection", align_corners=False,
    )  # fmt: skip
    assert (one_bilinear - want).abs().max() > 0.1


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Index reflected about the border pixel, which is not repeated: -1 -> 1, n -> n - 2."""
    i = i % (2 * n - 2)
    return torch.where(i < n, i, 2 * n - 2 - i)


def test_integer_translation_is_exact_and_reflects():
    x = _image(h=16, w=16)
    dx, dy = 3, -2
    out = warp(x, translate2d(_ones(-dx), _ones(-dy)))  # content moves right 3, up 2
    rows = _reflect(torch.arange(16) - dy, 16)
    cols = _reflect(torch.arange(16) - dx, 16)
    torch.testing.assert_close(out, x[:, :, rows][:, :, :, cols], atol=1e-5, rtol=0)


def test_identity_is_exact():
    # up- then down-sampling with an orthogonal wavelet's low-pass filter gives the image back
    x = _image(h=16, w=16)
    torch.testing.assert_close(warp(x, torch.eye(3).expand(B, 3, 3)), x, atol=1e-5, rtol=0)


def _ramps(h: int = 24, w: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose two channels are x and y / 10 (pixels about the centre)."""
    x = (torch.arange(w) - (w - 1) / 2).view(1, w).expand(h, w)
    y = (torch.arange(h) - (h - 1) / 2).view(h, 1).expand(h, w)
    return torch.stack([x, y]).div(10).expand(B, 2, h, w), x, y


INSIDE = (slice(None), slice(None), slice(6, -6), slice(6, -6))  # beyond the filter's reach


def test_fractional_translation_shifts_a_ramp():
    img, x, _ = _ramps()
    out = warp(img, translate2d(_ones(-0.25), _ones(0.0)))
    torch.testing.assert_close(out[INSIDE][:, 0], ((x - 0.25) / 10)[6:-6, 6:-6].expand(B, -1, -1))


@pytest.mark.parametrize(
    ("g", "slopes"),
    [
        (scale2d(_ones(0.5), _ones(0.5)), ((0.5, 0), (0, 0.5))),  # zoom x2
        (scale2d(_ones(0.5), _ones(2.0)), ((0.5, 0), (0, 2.0))),  # anisotropic
        (rotate2d(_ones(math.cos(0.3)), _ones(math.sin(0.3))), None),
    ],
    ids=["scale", "aniso", "rotate"],
)
def test_a_linear_ramp_keeps_the_mapped_slope(g, slopes):
    # q reads the input at g q, so a ramp a . p comes out as a . (g q): its slope is a^T g
    img, _, _ = _ramps(48, 48)
    out = warp(img, g)[:, :, 16:-16, 16:-16]  # where g q and the filter stay inside the image
    for channel in range(2):
        dx = out[:, channel, :, 1:] - out[:, channel, :, :-1]
        dy = out[:, channel, 1:] - out[:, channel, :-1]
        want = g[0, channel, :2] / 10 if slopes is None else torch.tensor(slopes[channel]) / 10
        torch.testing.assert_close(dx, torch.full_like(dx, want[0].item()), atol=2e-4, rtol=0)
        torch.testing.assert_close(dy, torch.full_like(dy, want[1].item()), atol=2e-4, rtol=0)


def _high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    spectrum = torch.fft.rfft(x, dim=-1).abs().square()  # along rows
    return spectrum[..., spectrum.shape[-1] // 2 :].sum()  # the upper half of the frequencies


def test_a_half_pixel_shift_keeps_high_frequencies():
    # energy in the upper half of the row frequencies of white noise after a shift by half a
    # pixel: one bilinear pass at 1x averages neighbours and keeps 0.19 of it (genlab before it
    # followed the reference); the reference's 2x-upsampled resampling keeps 0.58
    x = torch.randn(B, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    out = warp(x, translate2d(_ones(0.5), _ones(0.0)))
    kept = _high_frequency_energy(out[INSIDE]) / _high_frequency_energy(x[INSIDE])
    assert 0.5 < kept < 0.65


def test_warp_is_differentiable():
    x = _image(h=8, w=8).double().requires_grad_(True)
    g = (scale2d(_ones(0.8), _ones(1.1)) @ rotate2d(_ones(0.96), _ones(0.28))).double()
    assert torch.autograd.gradcheck(lambda v: warp(v, g), (x,))


# -- colour: constant images -----------------------------------------------------------------

RGB = (0.2, -0.4, 0.6)


def _constant(rgb: tuple[float, ...] = RGB) -> torch.Tensor:
    return torch.tensor(rgb).view(1, -1, 1, 1).expand(B, -1, 3, 3).contiguous()


@pytest.mark.parametrize(
    ("name", "colour", "want"),
    [
        ("brightness", translate3d(_ones(0.1)), (0.3, -0.3, 0.7)),
        ("contrast", scale3d(_ones(0.5)), (0.1, -0.2, 0.3)),
        # reflection through the plane orthogonal to grey: x - 2/3 (r + g + b)
        ("lumaflip", flip_luma(_ones(1.0)), (0.2 - 0.8 / 3, -0.4 - 0.8 / 3, 0.6 - 0.8 / 3)),
        # 120 degrees about the grey axis moves red to green, green to blue, blue to red
        ("hue", rotate_luma(_ones(2 * math.pi / 3)), (0.6, 0.2, -0.4)),
        ("saturation-0", scale_chroma(_ones(0.0)), (0.4 / 3,) * 3),
        ("saturation-2", scale_chroma(_ones(2.0)), tuple(2 * v - 0.4 / 3 for v in RGB)),
    ],
)
def test_colour_transform_of_a_constant_image(name, colour, want):
    torch.testing.assert_close(recolour(_constant(), colour), _constant(want))


@pytest.mark.parametrize(
    ("colour", "want"),
    [(translate3d(_ones(0.1)), 0.4), (scale3d(_ones(2.0)), 0.6), (flip_luma(_ones(1.0)), -0.3)],
    ids=["brightness", "contrast", "lumaflip"],
)
def test_colour_transform_of_a_grey_image(colour, want):
    torch.testing.assert_close(recolour(_constant((0.3,)), colour), _constant((want,)))


def test_hue_and_saturation_leave_grey_alone():
    grey = _constant((0.3, 0.3, 0.3))
    for colour in (rotate_luma(_ones(1.0)), scale_chroma(_ones(3.0))):
        torch.testing.assert_close(recolour(grey, colour), grey)


def test_cutout_zeros_the_centred_square():
    out = cut(torch.ones(B, 1, 8, 8), torch.full((B, 2), 0.5), _ones(0.5))
    want = torch.ones(8, 8)
    want[2:6, 2:6] = 0  # pixel centres within 0.25 of the middle
    assert torch.equal(out, want.expand(B, 1, 8, 8))
    ones = torch.ones(B, 1, 8, 8)
    assert torch.equal(cut(ones, torch.rand(B, 2), _ones(0.0)), ones)  # size 0: nothing cut


# -- the sampled pipeline --------------------------------------------------------------------


def test_p0_is_the_identity():
    x = _image(h=16, w=16)
    assert augment(x, 0.0, "bgcno") is x
    assert ADA("bgcno", p=0.0, target=0.6)(x) is x


@pytest.mark.parametrize("policy", ["b", "g", "c", "n", "o", "bgc", "bgcno"])
def test_p1_changes_every_image(policy):
    torch.manual_seed(0)
    x = torch.randn(256, 3, 16, 16).sign() * 0.9  # near the range's ends
    out = augment(x, 1.0, policy)
    changed = ((out - x).flatten(1).abs().amax(1) > 1e-3).float().mean()
    # blit alone draws the identity 1/2 (no flip) x 1/4 (no turn) x 1/16 (shifts round to 0)
    assert changed == 1 if policy != "b" else 0.97 < changed < 1


def test_the_result_is_not_clamped_as_theirs():
    # brightness and contrast push colours beyond [-1, 1], and the filtered resampling overshoots
    # at edges; AugmentPipe passes both on to D (clamping would also stop their gradients)
    torch.manual_seed(0)
    x = torch.full((256, 3, 4, 4), 0.9)
    assert augment(x, 1.0, "c").amax() > 1.5
    edges = torch.randn(64, 1, 16, 16).sign()
    assert augment(edges, 1.0, "g").abs().amax() > 1.05


@pytest.mark.parametrize("policy", ["o", "n"])
def test_each_image_is_augmented_with_probability_p(policy):
    torch.manual_seed(1)
    x = torch.rand(4000, 1, 8, 8) * 0.5
    changed = (augment(x, 0.3, policy) != x).flatten(1).any(1).float().mean()
    assert abs(changed - 0.3) < 0.03  # binomial std 0.007


def test_a_group_multiplier_scales_its_probability():
    # AugmentPipe: each transform with probability p times its multiplier (R3GAN: colour 0.5)
    torch.manual_seed(2)
    x = torch.rand(4000, 1, 8, 8) * 0.5
    changed = (augment(x, 0.6, "o", {"o": 0.5}) != x).flatten(1).any(1).float().mean()
    assert abs(changed - 0.3) < 0.03  # binomial std 0.007
    assert augment(x, 0.6, "no", {"n": 0.0, "o": 0.0}).equal(x)


@pytest.mark.parametrize(
    ("multipliers", "match"),
    [
        ({"c": 0.5}, r"model.ada.multipliers.c: not a group of model.ada.policy='bg'"),
        ({"b": -1}, r"model.ada.multipliers.b=-1 must be a number >= 0"),
        ({"g": "half"}, r"model.ada.multipliers.g='half' must be a number >= 0"),
    ],
)
def test_bad_multipliers_name_their_key(multipliers, match):
    with pytest.raises(GenlabError, match=match):
        ADA("bg", p=0.5, multipliers=multipliers)


def test_gradient_reaches_the_generator_and_r1_works():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(8, 3 * 16 * 16), nn.Tanh(), nn.Unflatten(1, (3, 16, 16)))
    d = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Flatten(), nn.LazyLinear(1))
    ada = ADA("bgcno", p=1.0)
    d(ada(g(torch.randn(8, 8)))).sum().backward()
    assert g[0].weight.grad.abs().sum() > 0
    # R1 through the augmentation: the gradient w.r.t. the un-augmented real, differentiated again
    real = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(ada(real)).sum(), real, create_graph=True)
    d.zero_grad()
    grad.square().sum().backward()
    assert grad.abs().sum() > 0 and d[0].weight.grad.abs().sum() > 0


# -- the adaptive p ----------------------------------------------------------------------------


def _step(ada: ADA, sign: float, batch: int = 10) -> None:
    ada.update(ADA.real_signs(torch.full((batch,), sign), batch))


def test_p_rule_by_hand():
    ada = ADA(target=0.6, interval=4, kimg=1)  # p moves 40 / 1000 per update of 4 x 10 images
    for _ in range(3):
        _step(ada, 2.0)
    assert ada.p.item() == 0 and ada.rt.item() == 0  # not yet an interval
    _step(ada, -0.5)
    torch.testing.assert_close(ada.rt, torch.tensor(0.5))  # (3 - 1) / 4 < 0.6: p would fall
    assert ada.p.item() == 0  # clamped at 0
    for _ in range(8):
        _step(ada, 1.0)  # r_t = 1 > 0.6 twice
    torch.testing.assert_close(ada.p, torch.tensor(0.08))
    torch.testing.assert_close(ada.signs, torch.zeros(3))  # sums restart after each update
    ada = ADA(p=0.99, target=0.0, interval=1, kimg=1)
    _step(ada, 1.0)
    assert ada.p.item() == 1.0  # clamped at 1


def test_p_rule_counts_images_not_packed_logits():
    ada = ADA(target=0.6, interval=1, kimg=1)
    ada.update(ADA.real_signs(torch.ones(5), images=10))  # PacGAN m=2: 5 logits for 10 images
    torch.testing.assert_close(ada.p, torch.tensor(0.01))


def test_fixed_p_stays_and_still_measures_rt():
    ada = ADA(p=0.2, target=None, interval=1)
    _step(ada, -1.0)
    assert ada.p.item() == pytest.approx(0.2) and ada.rt.item() == -1


def test_nonfinite_logits_are_left_out():
    ada = ADA(target=0.6, interval=1)
    ada.update(ADA.real_signs(torch.tensor([1.0, float("nan"), -1.0, 1.0]), 4))
    torch.testing.assert_close(ada.rt, torch.tensor(1 / 3))


def test_state_travels_in_state_dict():
    ada = ADA(target=0.6, interval=2, kimg=1)
    for _ in range(3):
        _step(ada, 1.0)
    state = ada.state_dict()
    assert set(state) == {"p", "rt", "signs", "d_steps"}
    fresh = ADA(target=0.6, interval=2, kimg=1)
    fresh.load_state_dict(state)
    assert fresh.p.item() == pytest.approx(0.02) and fresh.d_steps.item() == 3
    _step(fresh, 1.0)  # completes the interval begun before saving
    assert fresh.p.item() == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"policy": "bgcf"}, "model.ada.policy"),
        ({"policy": ""}, "model.ada.policy"),
        ({"p": 1.5}, "model.ada.p"),
        ({"target": 2.0}, "model.ada.target"),
        ({"interval": 0}, "model.ada.interval"),
        ({"kimg": 0}, "model.ada.kimg"),
    ],
)
def test_bad_values_name_their_key(kwargs, key):
    with pytest.raises(GenlabError, match=key.replace(".", r"\.")):
        ADA(**kwargs)


def test_colour_needs_one_or_three_channels():
    with pytest.raises(GenlabError, match=r"model\.ada\.policy.*2"):
        augment(torch.zeros(2, 2, 4, 4), 0.5, "c")


# -- in the GAN ---------------------------------------------------------------------------------


def test_gan_holds_ada_only_when_on(cfg_tiny):
    from genlab.config import instantiate

    assert instantiate(cfg_tiny("model=gan").model).ada is None  # default: p 0, target null
    widths = ["model.generator.base_channels=8", "model.discriminator.base_channels=8"]
    fixed = ["model.ada.target=null", "model.ada.p=0.2"]  # the command line
    cfg = cfg_tiny("model=sngan", "data=synthetic", *widths, *fixed)
    module = instantiate(cfg.model)
    assert module.ada.p.item() == pytest.approx(0.2) and module.ada.target is None
    assert "ada.p" in module.state_dict()


class PAfterBatch(pl.Callback):
    """Records ADA's p after every training batch."""

    def __init__(self) -> None:
        self.p: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.p.append(pl_module.ada.p.item())


def _fit_ada(tmp_path: Path, batches: int, *overrides: str) -> tuple[list[float], GAN]:
    cfg = compose_train([*TINY, "model=gan", "callbacks=none", "model.ada.kimg=1", *overrides],
                        tmp_path)  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = -1, None
    cfg.trainer.max_steps, cfg.trainer.limit_val_batches = 2 * batches, 0  # a D and a G step each
    objs = build(cfg)
    track = PAfterBatch()
    objs["trainer"].callbacks.append(track)
    fit_built(objs)
    assert objs["trainer"].callback_metrics["train/ada_p"] == pytest.approx(track.p[-1])
    return track.p, objs["model"]


@pytest.mark.slow
def test_p_rises_when_d_overfits_a_tiny_set_and_stays_0_at_target_1(tmp_path):
    # 64 MNIST digits (57 train), batch 16: r_t is 1 at the first update (measured: p 0.064
    # after batch 4, 0.70 after 45 batches at kimg=1, p +0.064 per update of 64 images)
    p, model = _fit_ada(tmp_path / "tiny", 24, "data=mnist5k", "data.limit=64",
                        "model.ada.target=0.6")  # fmt: skip
    assert p[:3] == [0, 0, 0] and p[3] == pytest.approx(0.064)  # one update per 4 D steps
    assert p[-1] > 0.2 and model.ada.d_steps.item() == 24
    # abundant data, the same schedule: with a target of 1, r_t never exceeds it, p stays 0
    p, model = _fit_ada(tmp_path / "abundant", 24, "data=synthetic", "data.limit=null",
                        "model.ada.target=1.0")  # fmt: skip
    assert max(p) == 0 and model.ada.d_steps.item() == 24
    assert model.ada.rt.item() != 0  # r_t was measured all along


# p moves from 0.5 by 0.064 per update of 4 x 16 images, at most 0.256 in 18 batches (never
# clamped); a low target, so that it climbs (measured r_t: 0.31, then 0.97)
ADA_ON = ["model=gan", "model.ada.policy=bgcno", "model.ada.p=0.5", "model.ada.target=0.1",
          "model.ada.kimg=1", "model.r1_gamma=1"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gan", "stylegan2"])
def test_sigterm_then_resume_with_ada_is_bit_exact_and_p_continues(model, tmp_path):
    """3 epochs of 6 batches; SIGTERM after batch 2 of epoch 1; auto-resume repeats the run."""
    from tests.test_zoo import MODEL_ARGS  # narrow StyleGAN2 (lazy R1 every 16 D steps)

    overrides = [*TINY, "data=synthetic", "seed=7", "trainer.limit_train_batches=6",
                 "trainer.max_epochs=3", "callbacks.progress_bar=null", *ADA_ON,
                 f"model={model}", *MODEL_ARGS.get(model, [])]  # fmt: skip
    train(compose_train(overrides, tmp_path / "full"))
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        train(compose_train([*overrides, *_signal_at(1, 2)], run))
    last = run / "checkpoints" / "last.ckpt"
    saved = load_ckpt(last)["state_dict"]
    # 9 D steps: p moved twice, and an interval is under way (its sums must travel too)
    assert saved["ada.d_steps"] == 9 and saved["ada.signs"][2] == 16
    if model == "gan":  # measured r_t 0.31 and 0.97; StyleGAN2's D moves p up then down here
        assert saved["ada.p"] > 0.5
    train(compose_train([*overrides, "auto_resume=true"], run))
    full = load_ckpt(tmp_path / "full" / "checkpoints" / "last.ckpt")
    _same_training_state(full, load_ckpt(last))  # every key of state_dict, ada.* included
    assert full["state_dict"]["ada.d_steps"] == 18


@pytest.mark.slow
def test_ada_with_diffaugment_is_one_line(run_cli, tmp_path):
    proc = run_cli("genlab-train", *TINY, "model.ada.target=0.6", "model.diffaugment=color",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.ada and model.diffaugment='color' are exclusive" in lines[0]


@pytest.mark.slow
def test_ddp_ranks_share_p(tmp_path):
    """Two gloo ranks through the CLI: p adapts from both ranks' signs, identical on each."""
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO)}  # the ranks import SaveRankWeights
    proc = subprocess.run(
        [str(BIN / "genlab-train"), *TINY, "data=synthetic", "trainer=ddp_cpu",
         "trainer.max_epochs=1", *ADA_ON, f"hydra.run.dir={tmp_path / 'run'}",
         "+callbacks.rank_weights._target_=tests.test_reliability.SaveRankWeights",
         f"+callbacks.rank_weights.dirpath={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    ok(proc)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:
        if "running_" not in k and "num_batches_tracked" not in k:  # BatchNorm stats: per rank
            assert torch.equal(r0[k], r1[k]), k
    # 4 batches: one update over 2 ranks x 4 batches x 16 images, a step of 128 / 1000 (one
    # rank's images alone would move p by 0.064)
    assert r0["ada.d_steps"] == 4 and r0["ada.signs"].sum() == 0
    assert abs(r0["ada.p"].item() - 0.5) == pytest.approx(0.128)
