"""StyleGAN2: networks against StyleGAN2-ADA's architecture, its training extras, truncation."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from genlab import losses
from genlab.config import CONFIG_DIR, instantiate
from genlab.errors import GenlabError
from genlab.nets.equalized import (
    Conv2d,
    FullyConnected,
    downsample2d,
    modulated_conv2d,
    upsample2d,
)
from genlab.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, minibatch_std
from genlab.sampling import sample
from genlab.training import build
from tests.conftest import compose_train, fit_built, train_checkpoint
from tests.test_zoo import _stack, pixels
from tests.zoo_checks import count, limit, swd_before_after

# A StyleGAN2 small enough for CPU tests: 16 channels at every resolution, w of 16.
TINY_NETS = [
    "model.generator.latent_dim=16", "model.generator.w_dim=16",
    "model.generator.channel_base=512", "model.generator.channel_max=16",
]  # fmt: skip
QUIET = ["callbacks=none", "metrics=none", "data=synthetic"]


def tiny_g(size: int = 16, channels: int = 1, num_classes: int = 0) -> StyleGAN2Generator:
    return StyleGAN2Generator(
        16, size, channels, num_classes, w_dim=16, mapping_layers=2, channel_base=512,
        channel_max=16,
    )  # fmt: skip


@pytest.mark.parametrize("size", [8, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_shapes_at_every_size_channel_count_and_conditioning(size, channels, num_classes):
    g = tiny_g(size, channels, num_classes)
    d = StyleGAN2Discriminator(size, channels, num_classes, channel_base=512, channel_max=16)
    z = torch.randn(6, 16)
    labels = torch.arange(6) % 5 if num_classes else None
    ws = g.mapping(z, labels)
    assert ws.shape == (6, 2 * int(math.log2(size)) - 2, 16)  # one w per conv, +1 for toRGB
    x = g.synthesis(ws)
    assert x.shape == (6, channels, size, size)
    assert g(z, labels).shape == x.shape
    assert d(x, labels).shape == (6,)
    assert (g.latent_dim, g.num_classes, d.num_classes) == (16, num_classes, num_classes)


# Reference counts, computed from NVlabs/stylegan2-ada-pytorch training/networks.py with train.py's
# `cifar` spec (z = w = 512, map=2, channel_base 32768 -> 512 channels at 4..32 px, D 'orig'),
# 3 channels, c_dim 10 (conditional CIFAR-10):
#   G mapping: embed 10*512+512 + fc0 1024*512+512 + fc1 512*512+512             =    793,088
#   G b4: const 8192 + conv1 (affine 262,656 + 3x3 weight 2,359,296 + noise 1 + bias 512)
#         + torgb (affine 262,656 + 1536 + 3)                                       =  2,894,852
#   G b8, b16, b32: 2 x 2,622,465 + 264,195 each                                    = 16,527,375
#   D b32: fromrgb 2048 + 2 x 2,359,808; b16, b8: 2 x 2,359,808 each               = 14,160,896
#   D epilogue: conv 513*512*9+512 + fc 8192*512+512 + out 512*512+512             =  6,821,888
#   D label mapping: embed 10*512+512 + 8 x (512*512+512)                           =  2,106,880
# G 20,215,315 and D 23,089,664: the numbers StudioGAN's CIFAR-10 StyleGAN2-ADA run printed
# (POSTECH-CVLab/PyTorch-StudioGAN logs/CIFAR10/StyleGAN2-ADA-train-2021_10_16_13_21_43.log,
# "Number of parameters"). Unconditional: no embed in G (19,947,539); D without its label
# mapping and with a 1-unit output (20,720,641). The residual D adds three 1x1 skips (786,432).
# Their outputs on copied weights: test_networks_equal_stylegan2_adas_on_copied_weights below.
@pytest.mark.parametrize(
    ("num_classes", "architecture", "g_count", "d_count"),
    [
        (10, "orig", 20_215_315, 23_089_664),
        (0, "orig", 19_947_539, 20_720_641),
        (10, "resnet", 20_215_315, 23_089_664 + 786_432),
    ],
)
def test_parameter_counts_match_stylegan2_ada_cifar(num_classes, architecture, g_count, d_count):
    g = StyleGAN2Generator(512, 32, 3, num_classes, mapping_layers=2)
    d = StyleGAN2Discriminator(32, 3, num_classes, architecture, mbstd_group_size=32)
    assert (count(g), count(d)) == (g_count, d_count)


# Written by experiments/references/stylegan2_networks.py from NVlabs/stylegan2-ada-pytorch's own
# training/networks.py Generator and Discriminator (commit
# d72cc7d041b42ec8e806021a205ed9349f87c6a4, run unmodified on a CPU: their ops' reference
# paths), fp32 and tiny: conditional 32 px RGB with the cifar config's 'orig' D, unconditional
# 16 px grey with the residual D; random biases, noise strengths and w_avg; their state_dicts,
# inputs, ws, images (noise_mode='random' after a fixed seed, fused and unfused modconv) and
# D logits.
STYLEGAN2_NETWORKS = Path(__file__).parent / "fixtures" / "references" / "stylegan2_networks.pt"
# their names -> genlab's; b{res} -> blocks.{i} (G from 4 px up, D from the image size down)
THEIR_G_NAMES = [
    (r"^mapping\.fc(\d+)\.", r"mapping_net.layers.\1."), (r"^mapping\.", "mapping_net."),
    (r"^synthesis\.b(\d+)\.", lambda m: f"synthesis_net.blocks.{int(m[1]).bit_length() - 3}."),
]  # fmt: skip
THEIR_D_NAMES = [
    (r"^mapping\.fc(\d+)\.", r"mapping.layers.\1."), (r"^b4\.", ""),
]  # fmt: skip


def _renamed(state: dict, names: list) -> dict:
    out = {}
    for name, value in state.items():
        for pattern, repl in names:
            name = re.sub(pattern, repl, name)
        out[name] = value
    return out


def _stylegan2_nets(case: dict, settings: dict, mbstd_group_size: int, **precision):
    """genlab's G (eval) and D at the case's sizes, holding the reference's weights.

    ``precision``: conv_clamp, num_fp16_res, fp16_dtype for both nets (default: fp32, no clamp).
    """
    size, channels, classes = case["image_size"], case["channels"], case["num_classes"]
    widths = dict(channel_base=case["channel_base"], channel_max=case["channel_max"], **precision)
    g = StyleGAN2Generator(
        settings["z_dim"], size, channels, classes, w_dim=settings["w_dim"],
        mapping_layers=settings["g_mapping_layers"], **widths,
    ).eval()  # fmt: skip
    d = StyleGAN2Discriminator(
        size, channels, classes, case["architecture"], mbstd_group_size=mbstd_group_size,
        **widths,
    )  # fmt: skip
    g.load_state_dict(_renamed(case["g_state_dict"], THEIR_G_NAMES))  # strict: all mapped
    d_state = {
        re.sub(r"^b(\d+)\.", lambda m: f"blocks.{(size // int(m[1])).bit_length() - 1}.", k): v
        for k, v in _renamed(case["d_state_dict"], THEIR_D_NAMES).items()
    }
    d.load_state_dict(d_state)
    return g, d


def test_networks_equal_stylegan2_adas_on_copied_weights():
    reference = torch.load(STYLEGAN2_NETWORKS, weights_only=True)
    assert reference["commit"] == "d72cc7d041b42ec8e806021a205ed9349f87c6a4"
    settings = reference["settings"]
    for name, case in reference["cases"].items():
        g, d = _stylegan2_nets(case, settings, settings["mbstd_group_size"])
        _, d_other = _stylegan2_nets(case, settings, 2)
        z, x = case["z"], case["x"].float()
        g_labels, d_labels = (
            (case["g_labels"], case["d_labels"]) if case["num_classes"] else (None, None)
        )
        with torch.no_grad():
            got = {"ws": g.mapping(z, g_labels), "ws_psi0.7": g.mapping(z, g_labels, 0.7)}
            # genlab draws each layer's noise as their noise_mode='random' does (torch.randn, one
            # (B, 1, H, W) per layer, in the same order): the same seed, the same noise
            torch.manual_seed(settings["noise_seed"])
            # against their eval default (fused modconv) and their training's path (unfused)
            got["img_fused"] = got["img_unfused"] = g(z, g_labels)
            got["logits"] = d(x, d_labels)
            torch.manual_seed(settings["noise_seed"] + 1)
            other_noise = g(z, g_labels)
            other_groups = d_other(x, d_labels)
        for key, value in got.items():
            scale = max(1, case[key].abs().max().item())
            assert (value - case[key]).abs().max() < 1e-5 * scale, (name, key)
        # the comparison can fail: other per-pixel noise, other mbstd groups
        assert (other_noise - case["img_unfused"]).abs().max() > 0.1, name
        assert (other_groups - case["logits"]).abs().max() > 5e-4, name


def test_conf_model_builds_the_cifar_configuration(tmp_path):
    cfg = compose_train(["model=stylegan2", "data=cifar10"], tmp_path)
    module = instantiate(cfg.model, _convert_="object")
    assert count(module.generator) == 19_947_539  # model=stylegan2 is unconditional
    assert module.discriminator.mbstd_group_size == 32
    opt_g, opt_d = module.configure_optimizers()[0]
    # lazy regularisation (StyleGAN2-ADA training_loop.py): lr x N/(N+1), betas ** (N/(N+1))
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.0025 * 4 / 5)  # pl_interval 4
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.0025 * 16 / 17)  # r1_interval 16
    assert opt_d.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    cfg = compose_train(["model=gan", "data=cifar10"], tmp_path)
    opt_g, opt_d = instantiate(cfg.model, _convert_="object").configure_optimizers()[0]
    assert (opt_d.param_groups[0]["lr"], opt_d.param_groups[0]["betas"]) == (0.0002, (0.5, 0.999))


def test_demodulated_weights_have_unit_norm_per_output():
    # 1x1 conv, weight (3, 4), styles (1, 2): out = (3 x1 + 8 x2) / |(3, 8)|
    weight = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    styles = torch.tensor([[1.0, 2.0]])
    x = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    out = modulated_conv2d(x, weight, styles)
    assert out.item() == pytest.approx(11 / math.sqrt(73))
    assert modulated_conv2d(x, weight, styles, demodulate=False).item() == pytest.approx(11.0)
    # unit-variance inputs give unit-variance outputs, whatever the scale of weights and styles
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32, 32)
    weight, styles = 5 * torch.randn(4, 16, 3, 3), 3 * torch.rand(2, 16) + 0.1
    std = modulated_conv2d(x, weight, styles)[:, :, 1:-1, 1:-1].std((2, 3))  # (B, O)
    assert torch.allclose(std, torch.ones_like(std), atol=0.06), std
    raw = modulated_conv2d(x, weight, styles, demodulate=False)[:, :, 1:-1, 1:-1].std((2, 3))
    assert (raw > 3).all()  # without demodulation the scale goes through


def test_equalised_learning_rate_scales_weights_at_run_time():
    fc = FullyConnected(4, 1, lr_multiplier=0.01, bias_init=2.0)
    assert fc.weight.std().item() > 30  # stored as N(0, 1 / 0.01^2)
    with torch.no_grad():
        fc.weight.fill_(1.0)
    x = torch.ones(1, 4, requires_grad=True)
    out = fc(x)
    assert out.item() == pytest.approx(4 * 0.01 / 2 + 2.0 * 0.01)  # w * 0.01 / sqrt(4), b * 0.01
    out.backward()
    assert torch.allclose(fc.weight.grad, torch.full((1, 4), 0.01 / 2))  # the gain reaches grads
    conv = Conv2d(2, 1, 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    # centre pixel: 18 taps of 1 / sqrt(2 * 9) make sqrt(18); leaky ReLU's gain sqrt(2): 6
    assert conv(torch.ones(1, 2, 3, 3))[0, 0, 1, 1].item() == pytest.approx(6.0)


def test_fir_resampling_keeps_constants_and_doubles_or_halves_size():
    x = torch.full((1, 2, 8, 8), 3.0)
    up, down = upsample2d(x), downsample2d(x)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    assert torch.allclose(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 3.0))
    assert torch.allclose(down[:, :, 1:-1, 1:-1], torch.full_like(down[:, :, 1:-1, 1:-1], 3.0))
    # pixel 1 becomes pixels 2 and 3, spread by the [1, 3, 3, 1] filter over pixels 1 .. 4
    delta = torch.zeros(1, 1, 4, 4)
    delta[0, 0, 1, 1] = 1.0
    up = upsample2d(delta)[0, 0]
    taps = torch.tensor([0.0, 1.0, 3.0, 3.0, 1.0, 0.0]) / 8
    assert torch.allclose(up[:6, :6], 4 * torch.outer(taps, taps))  # gain 4 keeps the mean


def test_minibatch_std_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 5.0]).view(4, 1, 1, 1)
    # groups of 2 take every second example: {1, 3} has std 1, {2, 5} std 1.5
    out = minibatch_std(x, group_size=2)
    assert out.shape == (4, 2, 1, 1)
    assert torch.allclose(out[:, 1].flatten(), torch.tensor([1.0, 1.5, 1.0, 1.5]), atol=1e-4)
    # a group size that does not divide the batch falls back to the largest that does (here 2)
    assert torch.allclose(minibatch_std(x, group_size=3), out)


def test_truncation_psi_zero_gives_the_average_w_and_one_changes_nothing():
    g = tiny_g().eval()  # eval: w_avg stays put
    with torch.no_grad():
        g.mapping_net.w_avg.normal_()
    z = torch.randn(4, 16)
    ws_avg = g.w_avg.expand(4, g.num_ws, -1)

    def images(psi: float | None = None, ws: torch.Tensor | None = None) -> torch.Tensor:
        torch.manual_seed(0)  # the same per-pixel noise each time
        if ws is not None:
            return g.synthesis(ws)
        g.truncation_psi = psi
        return g(z)

    with torch.no_grad():
        assert torch.equal(images(0.0), images(ws=ws_avg))
        assert torch.equal(images(1.0), images(ws=g.mapping(z)))
        half = images(0.5)
        assert torch.allclose(half, images(ws=g.w_avg.lerp(g.mapping(z), 0.5)), atol=1e-6)
        assert not torch.allclose(half, images(1.0)) and not torch.allclose(half, images(0.0))


def test_w_avg_tracks_the_mapping_in_training_only():
    g = tiny_g().eval()
    z = torch.randn(8, 16)
    with torch.no_grad():
        w = g.mapping_net(z, None)
        g(z)
        assert torch.equal(g.w_avg, torch.zeros(16))  # eval: no update
        g.train()(z)
        assert torch.allclose(g.w_avg, 0.005 * w.mean(0), atol=1e-7)  # beta 0.995
        g.mapping(z, update_w_avg=False)  # the second latent of style mixing
        assert torch.allclose(g.w_avg, 0.005 * w.mean(0), atol=1e-7)


def test_path_length_penalty_by_hand():
    # images = gain * ws reshaped (one layer of 4 values), gain 1 -> gradient noise / sqrt(H W)
    ws = torch.zeros(2, 1, 4, requires_grad=True)
    gain = torch.ones(4, requires_grad=True)  # a weight of "G": the penalty must reach it
    images = (ws * gain).view(2, 1, 2, 2)
    noise = torch.tensor([[6.0, 0.0, 0.0, 8.0], [0.0, 2.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    penalty, mean = losses.path_length_penalty(images, ws, torch.tensor(1.0), 0.5, noise)
    # lengths 5 and 1, mean 3; a = 1 + 0.5 (3 - 1) = 2; ((5 - 2)^2 + (1 - 2)^2) / 2 = 5
    assert (penalty.item(), mean.item()) == pytest.approx((5.0, 2.0))
    assert not mean.requires_grad and penalty.requires_grad
    # two layers, only the first used: the length is the root mean over layers, 5 / sqrt(2)
    ws = torch.zeros(1, 2, 4, requires_grad=True)
    images = (ws[:, 0] + 0 * ws[:, 1]).view(1, 1, 2, 2)
    penalty, mean = losses.path_length_penalty(images, ws, torch.tensor(0.0), 1.0, noise[:1])
    assert (penalty.item(), mean.item()) == pytest.approx((0.0, 5 / math.sqrt(2)))


class Spy:
    """Wrap a function and record its results and the module's batch count at each call."""

    def __init__(self, module, fn) -> None:
        self.module, self.fn, self.calls = module, fn, []

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.calls.append((self.module.batches_seen, out))
        return out


def tiny_run(tmp_path, *overrides: str, batches: int = 4) -> dict:
    cfg = compose_train(
        ["debug=tiny", "logger=csv", *QUIET, "model=stylegan2", *TINY_NETS, *overrides], tmp_path
    )
    return build(limit(cfg, epochs=1, batches=batches))


def spied_run(tmp_path, monkeypatch, penalty: str, adversarial: str, *overrides: str):
    """4 tiny batches with ``losses.<penalty>`` and ``losses.<adversarial>`` spied on; returns
    the module, both spies and every (name, loss) stepped on (D, G, D, G, ...)."""
    objs = tiny_run(tmp_path, *overrides)
    module, stepped = objs["model"], []
    spies = [Spy(module, getattr(losses, name)) for name in (penalty, adversarial)]
    for name, spy in zip((penalty, adversarial), spies, strict=True):
        monkeypatch.setattr(losses, name, spy)
    step = module._step

    def recorded(optimizer, loss, name):
        stepped.append((name, loss.detach()))
        step(optimizer, loss, name)

    monkeypatch.setattr(module, "_step", recorded)
    fit_built(objs)
    return module, *spies, stepped


def test_lazy_r1_every_nth_d_step_weighted_by_n(tmp_path, monkeypatch):
    _, r1, d_adv, stepped = spied_run(
        tmp_path, monkeypatch, "r1_penalty", "d_loss", "model.r1_gamma=2", "model.r1_interval=3",
        "model.lazy_step=joint",
    )  # fmt: skip
    assert [n for n, _ in r1.calls] == [0, 3]  # D steps 0 and 3 of 0..3
    for n, (_, adv) in enumerate(d_adv.calls):
        extra = {0: r1.calls[0][1], 3: r1.calls[1][1]}.get(n)
        expected = adv if extra is None else adv + 0.5 * 2 * 3 * extra  # gamma / 2 x N x R1
        assert stepped[2 * n][1].item() == pytest.approx(expected.item(), rel=1e-6), n


def test_path_length_every_nth_g_step_weighted_by_n(tmp_path, monkeypatch):
    module, pl, g_adv, stepped = spied_run(
        tmp_path, monkeypatch, "path_length_penalty", "g_loss",
        "model.pl_weight=2", "model.pl_interval=2", "model.r1_gamma=0", "model.lazy_step=joint",
    )  # fmt: skip
    assert [n for n, _ in pl.calls] == [1, 3]  # G steps 0 and 2 (after batches 1 and 3)
    for n, (_, adv) in enumerate(g_adv.calls):
        extra = {0: pl.calls[0][1][0], 2: pl.calls[1][1][0]}.get(n)
        expected = adv if extra is None else adv + 2 * 2 * extra  # pl_weight x N x penalty
        assert stepped[2 * n + 1][1].item() == pytest.approx(expected.item(), rel=1e-6), n
    assert module.pl_mean.item() == pytest.approx(pl.calls[1][1][1].item())  # a buffer
    assert "pl_mean" in dict(module.named_buffers())  # travels in checkpoints
    assert "model.generator (model.pl_weight)" in module.double_backward_networks()


def test_separate_lazy_steps_are_stylegan2_adas_dreg_and_greg_phases(tmp_path, monkeypatch):
    # training_loop.py: Dmain every iteration, Dreg (R1 alone, x gamma / 2 x interval) its own
    # optimizer step every 16th; Gmain, then Greg (path length x weight x interval) every 4th
    module, r1, pl, stepped = spied_run(
        tmp_path, monkeypatch, "r1_penalty", "path_length_penalty", "model.r1_gamma=2",
        "model.r1_interval=3", "model.pl_weight=2", "model.pl_interval=2",
        "model.lazy_step=separate",
    )  # fmt: skip
    names = [name for name, _ in stepped]
    assert names == [
        "train/d_loss", "train/r1", "train/g_loss", "train/pl",  # batch 0: both regularised
        "train/d_loss", "train/g_loss",
        "train/d_loss", "train/g_loss", "train/pl",
        "train/d_loss", "train/r1", "train/g_loss",
    ]  # fmt: skip
    r1_losses = [loss for name, loss in stepped if name == "train/r1"]
    pl_losses = [loss for name, loss in stepped if name == "train/pl"]
    for (_, penalty), loss in zip(r1.calls, r1_losses, strict=True):
        assert loss.item() == pytest.approx(0.5 * 2 * 3 * penalty.item(), rel=1e-6)
    for (_, (penalty, _)), loss in zip(pl.calls, pl_losses, strict=True):
        assert loss.item() == pytest.approx(2 * 2 * penalty.item(), rel=1e-6)
    assert module.trainer.global_step == len(stepped)  # every optimizer step counts


def test_conf_model_takes_separate_lazy_steps(tmp_path):
    assert compose_train(["model=stylegan2"], tmp_path).model.lazy_step == "separate"
    assert compose_train(["model=gan"], tmp_path).model.lazy_step == "joint"


def test_style_mixing_switches_to_a_second_latent_at_a_cutoff(tmp_path):
    module = tiny_run(tmp_path, "model.style_mixing=1.0")["model"]
    g = module.generator
    z = torch.randn(4, 16)
    torch.manual_seed(1)
    with torch.no_grad():
        mixed = module._mixed_ws(z, None)
        plain = g.mapping(z, update_w_avg=False)
    same = (mixed == plain).all(2).all(0)  # (num_ws,): layers that kept z's w
    cutoff = int(same.long().argmin())
    assert 1 <= cutoff < g.num_ws and same[:cutoff].all() and not same[cutoff:].any()
    assert torch.allclose(mixed[:, cutoff:], mixed[:, -1:].expand_as(mixed[:, cutoff:]))


@pytest.mark.parametrize("key", ["pl_weight=2", "style_mixing=0.5"])
def test_path_length_and_mixing_need_a_style_generator(key, tmp_path):
    cfg = compose_train(["model=gan", "data=cifar10", f"model.{key}"], tmp_path)
    with pytest.raises(GenlabError, match=rf"model\.{key.split('=')[0]}=.*DCGANGenerator"):
        instantiate(cfg.model, _convert_="object")


def test_bad_values_name_their_key(tmp_path):
    for key in ("r1_interval=0", "pl_interval=0", "style_mixing=1.5", "pl_decay=-1"):
        cfg = compose_train(
            ["model=stylegan2", "data=synthetic", *TINY_NETS, f"model.{key}"], tmp_path
        )
        with pytest.raises(GenlabError, match=rf"model\.{key.split('=')[0]}="):
            instantiate(cfg.model, _convert_="object")
    with pytest.raises(GenlabError, match="data.image_size=28"):
        StyleGAN2Generator(16, 28, 1)
    with pytest.raises(GenlabError, match="model.discriminator.architecture"):
        StyleGAN2Discriminator(32, 1, architecture="skip")


@pytest.mark.slow
def test_short_run_improves_val_swd(tmp_path):
    """Tiny StyleGAN2 (all extras on) on the synthetic shapes: val/swd falls by half."""
    cfg = compose_train(
        ["debug=tiny", "logger=csv", *QUIET, "model=stylegan2", *TINY_NETS, "model.ramp=null",
         "model.pl_weight=2", "model.style_mixing=0.9", "model.r1_gamma=1",
         "model.optimizer_g.lr=0.002", "model.optimizer_d.lr=0.002"],
        tmp_path,
    )  # fmt: skip
    cfg.data.limit = None
    start, end = swd_before_after(limit(cfg, epochs=2, batches=50, val_batches=4))
    assert end < 0.5 * start, (start, end)


def _grid_cells(path, n: int = 16, nrow: int = 4, side: int = 32) -> np.ndarray:
    """The images of a saved make_grid (padding 2) as (n, side, side, 3) uint8."""
    grid = np.asarray(Image.open(path))
    return np.stack(
        [
            grid[2 + r * (side + 2) :][:side, 2 + c * (side + 2) :][:, :side]
            for r, c in (divmod(i, nrow) for i in range(n))
        ]
    )


def test_genlab_sample_truncation(tmp_path):
    ckpt = train_checkpoint(tmp_path, "sg2", "metrics=none", *QUIET, "model=stylegan2", *TINY_NETS)

    def samples(psi: float) -> np.ndarray:
        out = tmp_path / f"psi{psi}"
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(
                config_name="sample",
                overrides=[f"ckpt_path={ckpt}", f"output_dir={out}", f"truncation={psi}",
                           "num_samples=16", "nrow=4"],
            )  # fmt: skip
        sample(cfg)
        return _grid_cells(out / "samples.png").astype(float)

    spread = {psi: samples(psi).std(0).mean() for psi in (0.0, 0.5, 1.0)}  # across images
    # psi = 0: every sample is the average w's image (up to the per-pixel noise)
    assert spread[0.0] < 0.1 * spread[1.0] and spread[0.0] < spread[0.5] < spread[1.0], spread


def test_truncation_refused_by_a_generator_without_it(tmp_path):
    ckpt = train_checkpoint(tmp_path, "mlp", "model=gan_mlp", *QUIET, "data.image_size=16")
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(
            config_name="sample",
            overrides=[f"ckpt_path={ckpt}", f"output_dir={tmp_path}", "truncation=0.7"],
        )
    with pytest.raises(GenlabError, match=r"truncation=0\.7: MLPGenerator has no truncation"):
        sample(cfg)
    cfg.truncation = "high"
    with pytest.raises(GenlabError, match="truncation"):
        sample(cfg)


@pytest.mark.slow
def test_conditional_samples_follow_their_labels(tmp_path):
    """Labels through the mapping network and D's projection: samples sit where their class does."""
    # D's label mapping at 1 layer: 8 random lrelu layers 16 wide map the 4 classes to nearly
    # parallel cmaps, which the projection needs thousands of steps to pull apart
    cfg = compose_train(
        ["debug=tiny", "logger=csv", *QUIET, "model=stylegan2", *TINY_NETS, "model.ramp=null",
         "model.generator.num_classes=${data.num_classes}", "model.discriminator.mapping_layers=1",
         "model.r1_gamma=1", "data.image_size=16"],
        tmp_path,
    )  # fmt: skip
    cfg.data.limit = None
    objs = fit_built(build(limit(cfg, epochs=5, batches=50)))
    module, dm = objs["model"].eval(), objs["datamodule"]
    x, y = _stack(dm.dataset("train"))
    means = torch.stack([pixels(x[y == k]).mean(0) for k in range(dm.num_classes)])  # (K, HW)
    labels = torch.arange(dm.num_classes).repeat_interleave(50)
    with torch.no_grad():
        predicted = torch.cdist(pixels(module.sample(len(labels), labels)), means).argmin(1)
    per_class = [(predicted[labels == k] == k).float().mean().item() for k in labels.unique()]
    assert min(per_class) > 0.6, per_class  # chance is 0.25
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert (predicted == shuffled).float().mean() < 0.45  # the same samples, wrong labels


@pytest.mark.slow
def test_genlab_eval_records_truncation(run_cli, weights, tmp_path):
    ckpt = train_checkpoint(tmp_path, "sg2", "metrics=none", *QUIET, "model=stylegan2", *TINY_NETS)
    proc = run_cli(
        "genlab-eval", f"ckpt_path={ckpt}", f"metrics.inception_weights={weights}",
        f"metrics.cache_dir={tmp_path / 'cache'}", "metrics.inception_sha256=null",
        "metrics.num_samples=24", "metrics.num_real=20", "metrics.batch_size=8",
        "metrics.kid_subset_size=8", "metrics.is_splits=2", "truncation=0.7",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    protocol = json.loads((tmp_path / "eval" / "metrics.json").read_text())["protocol"]
    assert protocol["truncation_psi"] == 0.7


@pytest.mark.parametrize("stats", ["copy", "average"])
def test_ema_copies_w_avg_as_their_training_loop(stats, tmp_path):
    # StyleGAN2-ADA's training_loop.py: parameters lerp towards G, buffers copied (b_ema.copy_(b)),
    # so the EMA generator truncates towards the raw generator's w_avg
    objs = fit_built(tiny_run(tmp_path, f"model.ema_stats={stats}", batches=3))
    module = objs["model"]
    assert module.hparams.ema_stats == stats
    raw, ema = module.generator.w_avg, module.generator_ema.w_avg
    assert raw.abs().sum() > 0
    assert torch.equal(raw, ema) == (stats == "copy")
    weights = dict(module.generator.named_parameters())
    averaged = [not torch.equal(p, weights[k]) for k, p in module.generator_ema.named_parameters()]
    assert any(averaged)  # the weights are averaged either way


def test_conf_model_copies_the_ema_buffers(tmp_path):
    for model in ("stylegan2", "r3gan"):
        assert compose_train([f"model={model}"], tmp_path).model.ema_stats == "copy"


# The same fixture's weights run by their code with conv_clamp=0.5 (fp32: every clamp bites) and
# with train.py's num_fp16_res=4, conv_clamp=256 in float16 on a CPU, on G's first example.
# Measured: clamp images 2.4e-7 of scale 1.4, logits exactly; fp16 images against their
# unfused modconv (genlab's path) 9.5e-7 of scale 7.8, against their fused one 8.9e-3 (their
# own fused vs unfused differ as much), logits exactly; genlab in fp32 is 6.8e-3 (32 px) and
# 2.3e-3 (16 px) away from their fp16 image, so the float16 comparison can fail.
@pytest.mark.parametrize("suffix", ["clamp", "fp16"])
def test_clamped_and_fp16_networks_equal_stylegan2_adas(suffix):
    reference = torch.load(STYLEGAN2_NETWORKS, weights_only=True)
    settings = reference["settings"]
    _, num_fp16_res, conv_clamp = next(v for v in settings["variants"] if v[0] == suffix)
    for name, case in reference["cases"].items():
        g, d = _stylegan2_nets(
            case, settings, settings["mbstd_group_size"], conv_clamp=conv_clamp,
            num_fp16_res=num_fp16_res,
        )  # fmt: skip
        g32, d32 = _stylegan2_nets(case, settings, settings["mbstd_group_size"])
        z, x = case["z"][:1], case["x"].float()
        g_labels, d_labels = (
            (case["g_labels"][:1], case["d_labels"]) if case["num_classes"] else (None, None)
        )
        with torch.no_grad():
            torch.manual_seed(settings["noise_seed"])
            img = g(z, g_labels)
            torch.manual_seed(settings["noise_seed"])
            img32 = g32(z, g_labels)
            logits, logits32 = d(x, d_labels), d32(x, d_labels)
        assert img.dtype == logits.dtype == torch.float32
        assert (logits - case[f"logits_{suffix}"]).abs().max() < 1e-6, name
        assert (logits32 - case[f"logits_{suffix}"]).abs().max() > 5e-4, name  # it can fail
        if suffix == "clamp":
            want = case["img_clamp"]
            assert (img - want).abs().max() < 1e-5 * want.abs().max(), name
            assert (img32 - want).abs().max() > 0.5, name
            continue
        want, fused = case["img_fp16_unfused"], case["img_fp16_fused"].float()
        scale = want.abs().max()
        assert (img - want).abs().max() < 1e-5 * scale, name
        assert (img - fused).abs().max() < 2e-3 * scale, name  # their fused path's own rounding
        assert (img32 - want).abs().max() > 2e-4 * scale, name


def _conv_dtypes(net: torch.nn.Module) -> dict[str, torch.dtype]:
    """Runs nothing: registers hooks that record each conv layer's output dtype by name."""
    seen = {}
    for name, module in net.named_modules():
        if type(module).__name__ in ("SynthesisLayer", "ToRGB", "Conv2d"):
            module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    return seen


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_blocks_are_the_highest_resolutions_and_outputs_stay_fp32(dtype):
    reduced = getattr(torch, dtype)
    # 32 px with 2 fp16 resolutions: G's 16 and 32 px blocks, D's 32 and 16 px blocks
    g = StyleGAN2Generator(
        16, 32, 3, 5, w_dim=16, mapping_layers=2, channel_base=512, channel_max=16,
        conv_clamp=256, num_fp16_res=2, fp16_dtype=dtype,
    )  # fmt: skip
    d = StyleGAN2Discriminator(
        32, 3, 5, channel_base=512, channel_max=16, conv_clamp=256, num_fp16_res=2,
        fp16_dtype=dtype,
    )  # fmt: skip
    g_seen, d_seen = _conv_dtypes(g), _conv_dtypes(d)
    labels = torch.arange(4) % 5
    img = g(torch.randn(4, 16), labels)
    logits = d(img, labels)
    assert img.dtype == logits.dtype == torch.float32
    for name, seen in g_seen.items():  # synthesis_net.blocks.{i}: i = 0 at 4 px .. 3 at 32 px
        block = int(name.split(".")[2])
        # toRGB computes in its block's dtype too; the block adds it to the image in float32
        want = torch.float32 if block < 2 else reduced
        assert seen == want, (name, seen)
    assert len(g_seen) == 4 * 2 + 3  # conv0 + conv1 + toRGB per block, no conv0 at 4 px
    for name, seen in d_seen.items():  # blocks.{i}: i = 0 at 32 px .. 2 at 8 px; conv at 4 px
        want = reduced if name.startswith(("blocks.0.", "blocks.1.")) else torch.float32
        assert seen == want, (name, seen)
    # 16 px with 4: everything from 8 px up (never the 4 px block)
    g16 = StyleGAN2Generator(16, 16, 1, w_dim=16, mapping_layers=2, channel_base=512,
                             channel_max=16, num_fp16_res=4, fp16_dtype=dtype)  # fmt: skip
    assert [b.dtype for b in g16.synthesis_net.blocks] == [torch.float32, reduced, reduced]


def test_bf16_blocks_give_finite_gradients_through_r1_and_a_training_batch(tmp_path):
    g = StyleGAN2Generator(
        16, 16, 1, w_dim=16, mapping_layers=2, channel_base=512, channel_max=16,
        conv_clamp=256, num_fp16_res=2, fp16_dtype="bfloat16",
    )  # fmt: skip
    d = StyleGAN2Discriminator(
        16, 1, channel_base=512, channel_max=16, conv_clamp=256, num_fp16_res=2,
        fp16_dtype="bfloat16",
    )  # fmt: skip
    real = torch.randn(8, 1, 16, 16, requires_grad=True)
    real_logits = d(real)
    d_loss = losses.d_loss("ns", real_logits, d(g(torch.randn(8, 16)).detach()))
    (d_loss + losses.r1_penalty(real_logits, real)).backward()  # double backward through bf16
    losses.g_loss("ns", d(g(torch.randn(8, 16)))).backward()
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert d.blocks[0].conv0.weight.grad.abs().sum() > 0  # a bf16 block's weights learn
    assert g.synthesis_net.blocks[-1].conv1.weight.grad.abs().sum() > 0
    # and one batch of the training module, through the config keys
    objs = tiny_run(
        tmp_path, "model.generator.num_fp16_res=2", "model.generator.fp16_dtype=bfloat16",
        "model.generator.conv_clamp=256", batches=1,
    )  # fmt: skip
    module = objs["model"]
    assert module.discriminator.blocks[0].dtype == torch.bfloat16
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fit_built(objs)
    after = module.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    for key in (
        "generator.synthesis_net.blocks.2.conv1.weight",
        "discriminator.blocks.0.conv0.weight",
    ):
        assert not torch.equal(before[key], after[key]), key


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(num_fp16_res=-1), "model.generator.num_fp16_res"),
        (dict(num_fp16_res=True), "model.generator.num_fp16_res"),
        (dict(conv_clamp=0), "model.generator.conv_clamp"),
        (dict(fp16_dtype="half"), "model.generator.fp16_dtype"),
    ],
)
def test_precision_arguments_are_checked_naming_the_key(kwargs, key):
    with pytest.raises(GenlabError, match=key):
        StyleGAN2Generator(16, 16, 1, channel_base=512, channel_max=16, **kwargs)
    with pytest.raises(GenlabError, match=key.replace("generator", "discriminator")):
        StyleGAN2Discriminator(16, 1, channel_base=512, channel_max=16, **kwargs)


def test_recipes_turn_on_stylegan2_adas_fp16_and_clamp_and_the_model_leaves_them_off(tmp_path):
    model = compose_train(["model=stylegan2"], tmp_path / "m").model
    assert (model.generator.num_fp16_res, model.generator.conv_clamp) == (0, None)
    for experiment in ("stylegan2_cifar10", "stylegan2_ada_cifar10", "stylegan2_ada_folder"):
        model = compose_train([f"experiment={experiment}"], tmp_path / experiment).model
        for net in (model.generator, model.discriminator):
            assert (net.num_fp16_res, net.conv_clamp, net.fp16_dtype) == (4, 256, "float16")


def test_grad_nan_to_num_as_their_training_loop(tmp_path):
    # training_loop.py: misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5) after each
    # backward, so one float16 overflow does not spoil the weights
    module = tiny_run(tmp_path)["model"]
    assert module.hparams.grad_nan_to_num  # model=stylegan2 sets it
    weight = next(module.generator.parameters())
    weight.grad = torch.zeros_like(weight)
    weight.grad.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.0])
    module.on_before_optimizer_step(torch.optim.SGD([weight], lr=0.1))
    assert weight.grad.view(-1)[:4].tolist() == [0.0, 1e5, -1e5, 3.0]
    module.hparams.grad_nan_to_num = False  # other GANs leave gradients as they are
    weight.grad.view(-1)[0] = float("nan")
    module.on_before_optimizer_step(torch.optim.SGD([weight], lr=0.1))
    assert weight.grad.view(-1)[0].isnan()
