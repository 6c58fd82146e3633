"""R3GAN: networks vs the authors' counts and init, RpGAN and R2 values, the ramps, learning."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genlab import losses
from genlab.errors import GenlabError
from genlab.models.ramp import ramp_value
from genlab.nets import R3GANDiscriminator, R3GANGenerator
from genlab.nets.r3gan import LRELU_GAIN, Resample, ResidualBlock
from genlab.training import build
from tests.conftest import compose_train, fit_built
from tests.zoo_checks import count, limit, swd_before_after

QUIET = ["data=synthetic", "callbacks=none", "metrics=none"]
TINY_WIDTH = [
    "model.generator.width=16", "model.discriminator.width=16",
    "model.generator.blocks_per_stage=1", "model.discriminator.blocks_per_stage=1",
]  # fmt: skip


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("classes", [0, 10])
def test_shapes(size, channels, classes):
    g = R3GANGenerator(64, size, channels, classes, width=16, cardinality=2, embed_dim=8)
    d = R3GANDiscriminator(size, channels, classes, width=16, cardinality=2, embed_dim=8)
    z, y = torch.randn(3, 64), (torch.tensor([0, 4, 9]) if classes else None)
    x = g(z, y)
    assert x.shape == (3, channels, size, size)
    assert d(x, y).shape == (3,)
    assert (g.latent_dim, g.num_classes, d.num_classes) == (64, classes, classes)


# Reference counts: brownvc/R3GAN R3GAN/Networks.py Generator/Discriminator built with train.py's
# presets: CIFAR10 (widths 4 x 768, cardinality 96, 2 blocks per stage, expansion 2, z 64; --cond:
# embeddings 64 in G, 768 in D, 10 classes) and FFHQ-64 (a fifth stage of 384, cardinality 48).
# Their outputs on copied weights: test_networks_equal_the_authors_on_copied_weights below.
REFERENCE = [
    # (image size, classes, G params, D params)
    (32, 10, 20_781_952, 21_280_512),
    (32, 0, 20_732_160, 20_683_776),
    (64, 0, 22_429_824, 22_381_440),
]


@pytest.mark.parametrize(("size", "classes", "g_ref", "d_ref"), REFERENCE)
def test_parameter_counts_match_the_authors(size, classes, g_ref, d_ref):
    g, d = R3GANGenerator(64, size, 3, classes), R3GANDiscriminator(size, 3, classes)
    assert abs(count(g) - g_ref) <= 0.01 * g_ref and abs(count(d) - d_ref) <= 0.01 * d_ref
    assert (count(g), count(d)) == (g_ref, d_ref)  # in fact exact


def test_fixup_init_and_grouped_inverted_bottleneck():
    g = R3GANGenerator(64, 32, 3, width=32, cardinality=4)
    blocks = [m for m in g.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 8  # 4 stages x 2
    block = blocks[0]
    assert block.conv1.out_channels == 64 and block.conv2.groups == 4  # expansion 2, 4 groups
    assert torch.count_nonzero(block.conv3.weight) == 0  # every branch starts at zero
    x = torch.randn(2, 32, 4, 4)
    assert torch.equal(block(x), x)  # so each block starts as the identity
    # MSR std gain / sqrt(fan_in) with the fix-up gain L^(-1/4), L = 8 blocks in all
    w = torch.cat([b.conv2.weight.flatten() for b in blocks])
    want = LRELU_GAIN * 8**-0.25 / math.sqrt(16 * 9)  # fan_in: 64 / 4 groups x 3 x 3
    assert w.std().item() == pytest.approx(want, rel=0.02)
    assert all(m.bias is None for m in g.modules() if isinstance(m, torch.nn.Conv2d))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules())


def test_resampling_is_bilinear_with_the_1_2_1_filter():
    """Interior pixels equal torch's bilinear 2x resize ([1, 3, 3, 1] weights either way)."""
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    up = Resample(up=True)(x)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert up.shape == (2, 3, 16, 16)
    assert torch.allclose(up[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-6)
    down = Resample(up=False)(x)
    ref = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
    assert down.shape == (2, 3, 4, 4)
    assert torch.allclose(down[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-6)


def test_bad_arguments_name_their_key():
    with pytest.raises(GenlabError, match="model.generator.cardinality=5"):
        R3GANGenerator(64, 32, 3, width=16, cardinality=5)
    with pytest.raises(GenlabError, match="data.image_size=16"):
        R3GANDiscriminator(16, 3)


def test_rpgan_losses_hand_computed():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    # D: mean softplus(fake - real) = (log(1 + e^-2) + log(1 + e)) / 2
    assert losses.d_loss("rpgan", real, fake).item() == pytest.approx(0.7200948493)
    # G: mean softplus(real - fake) = (log(1 + e^2) + log(1 + e^-1)) / 2
    assert losses.g_loss("rpgan", fake, real).item() == pytest.approx(1.2200948493)
    with pytest.raises(ValueError, match="real images"):
        losses.g_loss("rpgan", fake)


def test_r2_penalty_hand_computed():
    """D(x) = ||x||^2 / 2 per image has gradient x: R2 = mean ||x||^2 = (5 + 9) / 2."""
    fake = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 0.0]]]]).requires_grad_(True)  # (2, 1, 1, 2)
    logits = 0.5 * fake.pow(2).sum((1, 2, 3))
    assert losses.r2_penalty(logits, fake).item() == pytest.approx(7.0)


def test_rpgan_generator_step_sees_real_images_and_r2_is_on_fakes(cfg_tiny):
    cfg = cfg_tiny(
        "model=gan_mlp", *QUIET, "data.image_size=16", "model.loss=rpgan", "model.r1_gamma=1",
        "model.r2_gamma=1",
    )  # fmt: skip
    objs = build(limit(cfg, 1, 1))
    module = objs["model"]
    seen: list[torch.Tensor] = []
    module.discriminator.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    fit_built(objs)
    # D step: real, fake; G step: fake, then real again (D's first input), for the pairing
    assert len(seen) == 4 and torch.equal(seen[3], seen[0].detach())
    logged = objs["trainer"].callback_metrics
    assert logged["train/r2"] > 0 and logged["train/r1"] > 0
    assert module.double_backward_networks()  # R2 differentiates D twice too


def test_cosine_ramp_hand_values():
    # R3GAN's cosine_decay_with_warmup, no warm-up: start + (1 - cos(pi t / T)) / 2 (end - start)
    assert ramp_value(2e-4, 5e-5, 0, 100, "cosine") == pytest.approx(2e-4)
    assert ramp_value(2e-4, 5e-5, 25, 100, "cosine") == pytest.approx(2e-4 - 0.1464466 * 1.5e-4)
    assert ramp_value(2e-4, 5e-5, 50, 100, "cosine") == pytest.approx(1.25e-4)
    assert ramp_value(0.9, 0.99, 100, 100, "cosine") == pytest.approx(0.99)
    assert ramp_value(0.9, 0.99, 500, 100, "cosine") == pytest.approx(0.99)  # holds the end
    assert ramp_value(1.0, 0.0, 25, 100, "linear") == pytest.approx(0.75)


def _ramped_gan(cfg_tiny, batches: int, epochs: int = 1):
    cfg = cfg_tiny(
        "model=gan_mlp", *QUIET, "data.image_size=16", "model.r1_gamma=0",
        "+model.ramp.images=64", "+model.ramp.shape=linear", "+model.ramp.lr=[1e-3,0]",
        "+model.ramp.beta2=[0.9,0.99]", "+model.ramp.r1_gamma=[1,0]",
        "+model.ramp.ema_half_life=[0,1000]",
    )  # fmt: skip
    return build(limit(cfg, epochs, batches))


def test_ramps_set_optimizers_penalties_and_ema_and_are_logged(cfg_tiny):
    objs = fit_built(_ramped_gan(cfg_tiny, batches=3))  # batches of 16: the last at 32 images
    module, logged = objs["model"], objs["trainer"].callback_metrics
    assert module.images_seen == 48
    assert logged["train/lr"].item() == pytest.approx(5e-4)
    assert logged["train/beta2"].item() == pytest.approx(0.945)
    assert logged["train/r1_gamma"].item() == pytest.approx(0.5) and "train/r1" in logged
    assert logged["train/ema_half_life"].item() == pytest.approx(500)
    for opt in objs["trainer"].optimizers:
        assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
        assert opt.param_groups[0]["betas"] == pytest.approx((0.5, 0.945))
    assert module.generator_ema is not None  # ema_half_life turns the EMA on


def test_ramps_continue_from_a_checkpoint(cfg_tiny, tmp_path):
    objs = fit_built(_ramped_gan(cfg_tiny, batches=2))
    ckpt = tmp_path / "ramp.ckpt"
    objs["trainer"].save_checkpoint(ckpt)
    resumed = _ramped_gan(cfg_tiny, batches=2, epochs=2)
    resumed["trainer"].fit(resumed["model"], datamodule=resumed["datamodule"], ckpt_path=ckpt)
    # the 4th batch starts at 48 images: lr 1e-3 * (1 - 48 / 64); from scratch it would be 7.5e-4
    assert resumed["model"].images_seen == 64
    assert resumed["trainer"].callback_metrics["train/lr"].item() == pytest.approx(2.5e-4)


def test_ada_p_ramps_with_the_images_seen(cfg_tiny):
    # R3GAN's aug_scheduler: p = cosine_decay_with_warmup(cur_nimg) before each iteration, with
    # no adaptation (their p is set, never adjusted)
    cfg = cfg_tiny(
        "model=gan_mlp", *QUIET, "data.image_size=16", "model.ada.policy=bgco",
        "+model.ramp.images=64", "+model.ramp.shape=linear", "+model.ramp.ada_p=[0,0.5]",
        "model.ada.multipliers={c: 0.5}",
    )  # fmt: skip
    objs = fit_built(build(limit(cfg, 1, 3)))  # batches of 16: the last starts at 32 images
    module, logged = objs["model"], objs["trainer"].callback_metrics
    assert module.ada is not None and module.ada.multipliers == {"b": 1, "g": 1, "c": 0.5, "o": 1}
    assert module.ada.p.item() == pytest.approx(0.25)  # 0.5 * 32 / 64
    assert logged["train/ada_p"].item() == pytest.approx(0.25)
    assert "train/ada_rt" in logged  # r_t is still measured, for the log


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.ada.target=0.6", "model.ramp.ada_p schedules p, model.ada.target adapts it"),
        ("model.ada.p=0", r"model.ramp.ada_p=\[0.0, 1.5\] must be in \[0, 1\]"),
    ],
)
def test_a_ramped_ada_p_refuses_a_target_and_leaving_0_1(override, match, cfg_tiny):
    ramp = "+model.ramp.ada_p=[0,0.5]" if "target" in override else "+model.ramp.ada_p=[0,1.5]"
    with pytest.raises(GenlabError, match=match):
        build(cfg_tiny("model=gan_mlp", *QUIET, "+model.ramp.images=64", ramp, override))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("+model.ramp.gamma=[1,0]", "model.ramp.gamma: not a ramped value"),
        ("+model.ramp.lr=[1]", r"model.ramp.lr=\[1\] must be \[start, end\]"),
        ("+model.ramp.lr=[1,0]", "model.ramp.images=None must be > 0"),
    ],
)
def test_bad_ramps_name_their_key(override, match, cfg_tiny):
    with pytest.raises(GenlabError, match=match):
        build(cfg_tiny("model=gan_mlp", *QUIET, override))


def test_r3gan_option_is_the_cifar10_preset(cfg_tiny):
    module = build(cfg_tiny("model=r3gan", *QUIET, *TINY_WIDTH))["model"]
    hp = module.hparams
    assert (hp.loss, hp.n_critic, module.ramp.length, module.ramp.shape) == (
        "rpgan", 1, 20_000_000, "cosine",
    )  # fmt: skip
    assert module.ramp.values == {
        "lr": (2e-4, 5e-5), "beta2": (0.9, 0.99), "r1_gamma": (0.05, 0.005),
        "r2_gamma": (0.05, 0.005), "ema_half_life": (0.0, 5e6),
    }  # fmt: skip


@pytest.mark.slow
def test_short_run_moves_samples_toward_data(cfg_tiny):
    """Tiny-width R3GAN (rpgan, R1 + R2, the ramps) on the synthetic shapes: val/swd halves."""
    cfg = cfg_tiny(
        "model=r3gan", *QUIET, *TINY_WIDTH, "data.limit=null", "model.ramp.lr=[1e-3,1e-3]"
    )
    start, end = swd_before_after(limit(cfg, 2, 40, val_batches=4))
    assert end < 0.5 * start, (start, end)


def test_g_real_own_gives_the_g_step_its_own_half_of_the_batch(cfg_tiny, monkeypatch):
    # R3GAN's training_loop fetches D_img and G_img, two batches, per iteration; the G step's
    # RpGAN pairs its fakes with G_img, labelled as those reals (their Trainer passes Conditions)
    cfg = cfg_tiny(
        "model=gan_mlp", *QUIET, "data.image_size=16", "model.loss=rpgan", "model.g_real=own",
        "+model.generator.num_classes=4", "+model.discriminator.num_classes=4",
        "model.fake_labels=batch",
    )  # fmt: skip
    objs = build(limit(cfg, 1, 2))
    module, seen, batches = objs["model"], [], []
    critic = module._critic
    spy = lambda x, y: seen.append((x.detach(), y)) or critic(x, y)  # noqa: E731
    monkeypatch.setattr(module, "_critic", spy)
    step = module.training_step
    monkeypatch.setattr(module, "training_step", lambda b, *a: batches.append(b) or step(b, *a))
    fit_built(objs)
    (real, labels), _ = batches
    half = len(real) // 2
    # D step: D(real of the first half), D(fake); G step: D(fake), D(real of the second half)
    d_real, d_fake, g_fake, g_real = seen[:4]
    assert torch.equal(d_real[0], real[:half]) and torch.equal(d_real[1], labels[:half])
    assert torch.equal(g_real[0], real[half:]) and torch.equal(g_real[1], labels[half:])
    assert torch.equal(d_fake[1], labels[:half]) and torch.equal(g_fake[1], labels[half:])
    assert module.images_seen == 2 * half  # the clock counts the D step's reals, as cur_nimg


def test_g_real_own_needs_rpgan_and_is_the_recipe(cfg_tiny):
    with pytest.raises(GenlabError, match="model.g_real=own gives the G step reals of its own"):
        build(cfg_tiny("model=gan_mlp", *QUIET, "model.g_real=own"))
    cfg = compose_train(["experiment=r3gan_cifar10"], Path(cfg_tiny().paths.output_dir))
    assert (cfg.model.g_real, cfg.data.batch_size, cfg.model.fake_labels) == ("own", 1024, "batch")


# Written by experiments/references/r3gan_networks.py from brownvc/R3GAN's own
# training/networks.py Generator / Discriminator around R3GAN/Networks.py (commit
# 19a7ddf463fbac2bd39b4c1c73d63f1c441c7403, run unmodified with fp32 stages and their reference,
# non-CUDA activation and resamplers): width 8, cardinality 2, conditional at 32 px,
# unconditional at 64 px (a fifth stage of half the width); their state_dicts, inputs, outputs.
R3GAN_NETWORKS = Path(__file__).parent / "fixtures" / "references" / "r3gan_networks.pt"
THEIR_LEAVES = [
    (r"\.LinearLayer(\d)\.Layer\.weight$", r".conv\1.weight"),
    (r"\.NonLinearity(\d)\.Bias$", r".act\1.bias"), (r"^Model\.EmbeddingLayer\.", "embed."),
    (r"^Model\.AggregationLayer\.Layer\.", "out."), (r"^Model\.ExtractionLayer\.Layer\.", "inp."),
]  # fmt: skip


def their_prefixes(state: dict, generator: bool) -> dict[str, str]:
    """Their MainLayers.s.Layers.l prefixes -> genlab's flat layers.k (or basis) prefixes.

    Their resampling layers hold a 1x1 conv where the width changes (before upsampling in G,
    after downsampling in D) and their kernel buffer; genlab's are two layers, the kernel unsaved.
    """
    pattern = r"^(Model\.MainLayers\.(\d+)\.Layers\.(\d+)\.)"
    found = {(int(m[2]), int(m[3])): m[1] for k in state if (m := re.match(pattern, k))}
    prefixes, k = {}, 0
    for _, theirs in sorted(found.items()):
        if theirs + "LinearLayer1.Layer.weight" in state:  # a residual block
            prefixes[theirs], k = f"layers.{k}.", k + 1
        elif theirs + "Resampler.Kernel" in state:
            conv = theirs + "LinearLayer.Layer."
            has_conv = conv + "weight" in state
            if has_conv:
                prefixes[conv] = f"layers.{k if generator else k + 1}."
            k += 1 + has_conv
        elif generator:  # GenerativeBasis
            prefixes.update({theirs + "Basis": "basis", theirs + "LinearLayer.": "basis_linear."})
        else:  # DiscriminativeBasis
            prefixes.update({theirs + "Basis.": "basis.", theirs + "LinearLayer.": "linear."})
    return prefixes


def to_genlab(state: dict, generator: bool) -> dict:
    """Their state_dict under genlab's names (their resampling kernels dropped)."""
    prefixes, out = their_prefixes(state, generator), {}
    for name, value in state.items():
        if name.endswith(".Resampler.Kernel"):
            assert torch.equal(value, Resample(up=generator).kernel[0, 0]), name
            continue
        for theirs, ours in prefixes.items():
            if name.startswith(theirs):
                name = ours + name[len(theirs) :]
                break
        for pattern, repl in THEIR_LEAVES:
            name = re.sub(pattern, repl, name)
        out[name] = value
    return out


def r3gan_outputs(case: dict, generator: bool, perturb: float = 0.0, bf16: bool = False):
    """genlab's output on the case's inputs with their copied weights (+ perturb on one conv's);
    with ``bf16`` in the case's bfloat16 stages (their FP16Stages)."""
    size, classes = case["image_size"], case["num_classes"]
    sizes = dict(
        width=case["width"], cardinality=case["cardinality"],
        blocks_per_stage=case["blocks_per_stage"], expansion=case["expansion"],
    )  # fmt: skip
    labels = case["labels"] if classes else None
    if generator:
        stages = len(case["g_fp16_stages"]) if bf16 else 0
        net = R3GANGenerator(
            case["latent_dim"], size, 3, classes, embed_dim=case["g_embed_dim"],
            bf16_stages=stages, **sizes,
        )  # fmt: skip
        state, inputs = case["g_state_dict"], (case["z"],)
    else:
        stages = len(case["d_fp16_stages"]) if bf16 else 0
        net = R3GANDiscriminator(size, 3, classes, bf16_stages=stages, **sizes)  # embed: width
        state, inputs = case["d_state_dict"], (case["x"].float(),)
    state = to_genlab(state, generator)
    state["layers.0.conv2.weight"] = state["layers.0.conv2.weight"] + perturb
    net.load_state_dict(state)  # strict: every name mapped, none left over
    with torch.no_grad():
        return net.eval()(*inputs, labels)


def r3gan_difference(case: dict, generator: bool, perturb: float = 0.0) -> float:
    """Max |genlab - R3GAN| over the case's inputs, on their copied weights (+ perturb on one)."""
    want = case["g_out" if generator else "d_out"]
    return (r3gan_outputs(case, generator, perturb) - want).abs().max().item()


def test_networks_equal_the_authors_on_copied_weights():
    reference = torch.load(R3GAN_NETWORKS, weights_only=True)
    assert reference["r3gan_commit"] == "19a7ddf463fbac2bd39b4c1c73d63f1c441c7403"
    for name, case in reference["cases"].items():
        for generator, out in ((True, case["g_out"]), (False, case["d_out"])):
            scale = out.abs().max().item()
            assert r3gan_difference(case, generator) < 1e-5 * scale, (name, generator)
            # the test can fail: one conv's weights moved by 0.01 show
            assert r3gan_difference(case, generator, 0.01) > 1e-3 * scale, (name, generator)


# oneDNN's bfloat16 convolutions round differently with the CPU's native BF16 instructions
# (AVX512-BF16, AMX) than on AVX2, where the fixture was made: G's outputs differ by 0.015 on a
# scale of 1.6 (as much as bf16 and fp32 differ), D's not at all. So the comparison runs with
# oneDNN held to AVX2, which every x86 CPU here has: bit for bit on any of them.
SAME_KERNELS = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_bf16_stages_equal_the_authors_on_copied_weights():
    """Their FP16Stages (CIFAR10's at 32 px, FFHQ-64's at 64 px) vs genlab's bf16_stages."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA") != SAME_KERNELS["ONEDNN_MAX_CPU_ISA"]:
        here = f"{__file__}::test_bf16_stages_equal_the_authors_on_copied_weights"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", here],
            env={**os.environ, **SAME_KERNELS}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:]
        return
    reference = torch.load(R3GAN_NETWORKS, weights_only=True)
    for name, case in reference["cases"].items():
        n = 3 if case["image_size"] == 32 else 4  # every stage but the 4x4 one, as their presets
        assert case["g_fp16_stages"] == list(range(-1, -n - 1, -1)), name
        assert case["d_fp16_stages"] == list(range(n - 1, -1, -1)), name
        for generator in (True, False):
            want = case["g_out_bf16" if generator else "d_out_bf16"]
            got = r3gan_outputs(case, generator, bf16=True)
            assert got.dtype == torch.float32  # theirs returns G's in bfloat16: the same values
            assert torch.equal(got, want.float()), (name, generator)  # bit for bit
            # and the bf16 stages count: the float32 nets' outputs differ
            fp32 = case["g_out" if generator else "d_out"]
            assert not torch.equal(got, fp32), (name, generator)


@pytest.mark.parametrize("size", [32, 64])
def test_bf16_stages_compute_in_bfloat16_the_4x4_stages_in_float32(size):
    from torch import nn  # noqa: PLC0415

    from genlab.nets.r3gan import STAGES, BiasedLeakyReLU  # noqa: PLC0415

    n = STAGES[size] - 1  # all but the 4x4 stage, as their presets

    def record(seen: dict, name: str):
        def hook(module, args, out) -> None:
            seen.setdefault(name, (args[0].dtype, out.dtype))

        return hook

    g = R3GANGenerator(16, size, 3, 5, width=16, cardinality=2, embed_dim=8, bf16_stages=n)
    d = R3GANDiscriminator(size, 3, 5, width=16, cardinality=2, embed_dim=8, bf16_stages=n)
    y = torch.tensor([0, 4])
    for net, inputs in ((g, (torch.randn(2, 16), y)), (d, (torch.randn(2, 3, size, size), y))):
        seen: dict[str, tuple] = {}
        for name, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, BiasedLeakyReLU, Resample, ResidualBlock)):
                m.register_forward_hook(record(seen, name))
        assert net(*inputs).dtype == torch.float32  # G's samples and D's logits
        # the 4x4 stage: G's first layers (blocks_per_stage 2), D's last two blocks
        last = len(d.layers) - 1
        fp32_blocks = (
            {"layers.0", "layers.1"} if net is g else {f"layers.{last - 1}", f"layers.{last}"}
        )
        for name, dtypes in seen.items():
            block = ".".join(name.split(".")[:2])
            fp32 = not name.startswith("layers.") or block in fp32_blocks
            if name == ("out" if net is g else "inp"):  # in the dtype of the stage next to them
                fp32 = False
            want = torch.float32 if fp32 else torch.bfloat16
            assert dtypes == (want, want), (type(net).__name__, name, dtypes)
        assert all(p.dtype == torch.float32 for p in net.parameters())  # weights stay float32


def test_bf16_stages_are_checked_and_off_by_default(cfg_tiny):
    with pytest.raises(GenlabError, match=r"model.generator.bf16_stages=4 must be in 0..3"):
        R3GANGenerator(16, 32, 3, width=16, cardinality=2, bf16_stages=4)
    with pytest.raises(GenlabError, match=r"model.discriminator.bf16_stages=-1 must be in 0..4"):
        R3GANDiscriminator(64, 3, width=16, cardinality=2, bf16_stages=-1)
    model = build(cfg_tiny("model=r3gan", *QUIET, *TINY_WIDTH))["model"]
    assert model.generator.dtypes == model.discriminator.dtypes == [torch.float32] * 4
    cfg = compose_train(["experiment=r3gan_cifar10"], Path(cfg_tiny().paths.output_dir))
    assert cfg.model.generator.bf16_stages == cfg.model.discriminator.bf16_stages == 3


def test_a_training_step_with_bf16_stages_gives_finite_gradients(cfg_tiny):
    cfg = cfg_tiny(
        "model=r3gan", *QUIET, *TINY_WIDTH, "model.generator.bf16_stages=3",
        "model.r1_gamma=1", "model.r2_gamma=1",
    )  # fmt: skip
    objs = build(limit(cfg, 1, 1))
    module = objs["model"]
    assert module.discriminator.dtypes == [torch.bfloat16] * 3 + [torch.float32]
    before = {k: v.clone() for k, v in module.state_dict().items() if "ema" not in k}
    fit_built(objs)  # a D step with R1 and R2 through the bf16 stages, then a G step
    logged = objs["trainer"].callback_metrics
    assert all(torch.isfinite(logged[k]) for k in ("train/d_loss", "train/g_loss", "train/r1"))
    for net in (module.generator, module.discriminator):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)
    after = module.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if "generator." in k)
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if "discriminator." in k)
