"""BigGAN: shapes, StudioGAN's parameter counts and D outputs, structure, orthogonal
regularisation, learning."""

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.utils import parametrize

from genlab import losses
from genlab.config import instantiate
from genlab.errors import GenlabError
from genlab.nets import BigGANDiscriminator, BigGANGenerator
from genlab.nets.biggan import SelfAttention
from genlab.training import build
from tests.conftest import fit_built
from tests.zoo_checks import count, limit, swd_before_after

QUIET = ["data=synthetic", "callbacks=none", "metrics=none"]
TINY_WIDTH = ["model.generator.base_channels=4", "model.discriminator.base_channels=4"]
FAST_LR = ["model.optimizer_g.lr=1e-3", "model.optimizer_d.lr=1e-3"]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("classes", [0, 10])
def test_shapes(size, channels, classes):
    g = BigGANGenerator(80, size, channels, classes, base_channels=8, shared_dim=16)
    d = BigGANDiscriminator(size, channels, classes, base_channels=8)
    z, y = torch.randn(4, 80), (torch.arange(4) if classes else None)
    x = g(z, y)
    assert x.shape == (4, channels, size, size) and x.abs().max() <= 1
    assert d(x, y).shape == (4,)
    assert (g.latent_dim, g.num_classes, d.num_classes) == (80, classes, classes)


# Reference counts: PyTorch-StudioGAN src/models/big_resnet.py with src/utils/ops.py (SN layers,
# ConditionalBatchNorm2d), built with the settings of src/configs/CIFAR10/BigGAN.yaml (z 80, shared
# 128, G/D width 96, attention G loc 2, D loc 1), CIFAR10/BigGAN-Uncond.yaml and
# Baby_ImageNet/BigGAN.yaml (64 px, 100 classes, z 100, width 80, G loc 3, D loc 1).
REFERENCE = [
    # (image size, classes, z, width, G params, D params)
    (32, 10, 80, 96, 9_416_196, 2_415_170),
    (32, 0, 80, 96, 8_825_092, 2_413_250),
    (64, 100, 100, 80, 17_322_404, 30_668_722),
]


@pytest.mark.parametrize(("size", "classes", "z", "width", "g_ref", "d_ref"), REFERENCE)
def test_parameter_counts_match_studiogan(size, classes, z, width, g_ref, d_ref):
    g = BigGANGenerator(z, size, 3, classes, base_channels=width, init="N02")  # N02: no QR
    d = BigGANDiscriminator(size, 3, classes, base_channels=width, init="N02")
    assert abs(count(g) - g_ref) <= 0.01 * g_ref and abs(count(d) - d_ref) <= 0.01 * d_ref
    assert (count(g), count(d)) == (g_ref, d_ref)  # in fact exact


# Written by experiments/references/biggan_d_studiogan.py from PyTorch-StudioGAN's own
# src/models/big_resnet.py Discriminator (commit 947b35e9835b67860fdce44d337f6d7fee7c8db3, run
# unmodified with nn.ReLU(inplace=True) as config.py's define_modules picks): tiny widths,
# conditional and unconditional at 32 px, conditional at 64 px; their state_dict, inputs and
# eval-mode outputs.
STUDIOGAN_D = Path(__file__).parent / "fixtures" / "references" / "biggan_d_studiogan.pt"
# their module names -> genlab's; blocks.i.0 (a list of one) -> blocks.i, old-style spectral
# norm's weight_orig / weight_u / weight_v -> the parametrisation's original / _u / _v
THEIR_NAMES = [
    (r"^blocks\.(\d+)\.0\.", r"blocks.\1."), (r"\.conv2d0\.", ".shortcut."),
    (r"\.conv2d1\.", ".conv1."), (r"\.conv2d2\.", ".conv2."), (r"\.conv1x1_theta\.", ".theta."),
    (r"\.conv1x1_phi\.", ".phi."), (r"\.conv1x1_g\.", ".g."), (r"\.conv1x1_attn\.", ".out."),
    (r"^linear1\.", "linear."), (r"^embedding\.", "embed."),
    (r"\.weight_orig$", ".parametrizations.weight.original"),
    (r"\.weight_u$", ".parametrizations.weight.0._u"),
    (r"\.weight_v$", ".parametrizations.weight.0._v"),
]  # fmt: skip


def studiogan_d_difference(case: dict, shortcut: str) -> float:
    """Max |genlab D - StudioGAN D| over the case's inputs, on their copied weights (eval)."""
    size, classes = case["image_size"], case["num_classes"]
    attention = 16 if size == 32 else 8  # their attn_d_loc [1] at 32 px, [3] at 64 px
    d = BigGANDiscriminator(
        size, 3, classes, base_channels=case["base_channels"], attention=attention,
        shortcut=shortcut,
    )  # fmt: skip
    state = {}
    for name, value in case["state_dict"].items():
        for pattern, repl in THEIR_NAMES:
            name = re.sub(pattern, repl, name)
        state[name] = value
    d.load_state_dict(state)  # strict: every name mapped, none left over
    with torch.no_grad():
        out = d.eval()(case["x"].float(), case["labels"] if classes else None)
    return (out - case["out"]).abs().max().item()


def test_discriminator_equals_studiogans_on_copied_weights():
    reference = torch.load(STUDIOGAN_D, weights_only=True)
    assert reference["studiogan_commit"] == "947b35e9835b67860fdce44d337f6d7fee7c8db3"
    cases = reference["cases"]
    for name, case in cases.items():
        scale = case["out"].abs().max().item()
        assert studiogan_d_difference(case, "relu") < 1e-5 * max(1, scale), name
        # BigGAN-PyTorch's block (the shortcut on x) is another network: the test can fail
        assert studiogan_d_difference(case, "input") > 0.05 * scale, name


def test_shortcut_choice_config_default_and_old_configs():
    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / "biggan.yaml")
    assert cfg.discriminator.shortcut == "relu"  # StudioGAN's network, behind the recipe's 4.16
    node = {**OmegaConf.to_container(cfg.discriminator), "image_size": 32, "channels": 3}
    node.update(num_classes=0, base_channels=8)
    d = instantiate(node)
    assert [b.relu_shortcut for b in d.blocks if hasattr(b, "relu_shortcut")] == [0, 1, 1, 1]
    # a checkpoint saved before the key existed rebuilds the network it trained (x on the shortcut)
    del node["shortcut"]
    assert not any(getattr(b, "relu_shortcut", False) for b in instantiate(node).blocks)
    x = torch.randn(2, 3, 32, 32)
    old = BigGANDiscriminator(32, 3, base_channels=8, shortcut="input")
    new = BigGANDiscriminator(32, 3, base_channels=8, shortcut="relu")
    new.load_state_dict(old.state_dict())  # the same parameters: only the forward differs
    assert not torch.allclose(old.eval()(x), new.eval()(x))


def test_default_widths_are_studiogans_cifar10():
    assert count(BigGANGenerator(80, 32, 3, 10, init="N02")) == 9_416_196


def test_structure_hierarchical_latents_attention_spectral_norm_init():
    g = BigGANGenerator(80, 32, 3, 10, base_channels=8, shared_dim=16)
    d = BigGANDiscriminator(32, 3, 10, base_channels=8)
    # z: 4 chunks of 20, the first for the linear layer, each other with the shared embedding
    assert g.linear.in_features == 20 and g.blocks[0].bn1.gain.in_features == 20 + 16
    # self-attention after the block reaching 16x16 (StudioGAN attn_g_loc [2], attn_d_loc [1])
    assert g.attn_after == 1 and isinstance(d.blocks[1], SelfAttention)
    assert sum(isinstance(b, SelfAttention) for b in d.blocks) == 1
    # spectral norm everywhere except G's shared embedding (BigGAN-PyTorch: "it cripples G")
    assert not parametrize.is_parametrized(g.shared)
    for net in (g, d):
        layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert parametrize.is_parametrized(d.embed, "weight")
    # orthogonal init (of the raw weights under spectral norm): rows orthonormal
    w = g.blocks[0].conv1.parametrizations.weight.original.flatten(1)  # (32, 32 * 9)
    assert torch.allclose(w @ w.t(), torch.eye(w.shape[0]), atol=1e-5)
    # hierarchical: the last block's chunk changes the image
    z = torch.randn(2, 80)
    z2 = z.clone()
    z2[:, 60:] = torch.randn(2, 20)
    y = torch.tensor([0, 1])
    g.eval()
    assert not torch.allclose(g(z, y), g(z2, y))


def test_bad_arguments_name_their_key():
    with pytest.raises(GenlabError, match="model.generator.latent_dim=81"):
        BigGANGenerator(81, 32, 3)
    with pytest.raises(GenlabError, match="data.image_size=28"):
        BigGANDiscriminator(28, 3)
    with pytest.raises(GenlabError, match="model.discriminator.attention=4"):
        BigGANDiscriminator(32, 3, attention=4)
    with pytest.raises(GenlabError, match="model.discriminator.base_channels leaves 4 channels"):
        BigGANDiscriminator(64, 3, base_channels=4)
    with pytest.raises(GenlabError, match="model.generator.init='xavier2'"):
        BigGANGenerator(80, 32, 3, init="xavier2")
    with pytest.raises(GenlabError, match="model.discriminator.shortcut='studiogan'"):
        BigGANDiscriminator(32, 3, shortcut="studiogan")


def test_orthogonal_reg_hand_computed_and_biggans_gradient():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # W W^T = [[5, 11], [11, 25]]
    assert losses.orthogonal_reg([w]).item() == pytest.approx(0.5 * 2 * 11**2)  # 121
    conv = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]], [[[0.0, 2.0]]]])  # (3, 1, 1, 2)
    # rows (1,0), (1,1), (0,2): off-diagonal products 1, 0, 2 -> 0.5 * 2 * (1 + 0 + 4) = 5
    assert losses.orthogonal_reg([w, conv]).item() == pytest.approx(121 + 5)
    # the gradient is BigGAN-PyTorch's utils.ortho: 2 ((W W^T) * (1 - I)) W
    a = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    losses.orthogonal_reg([a]).backward()
    m = a.detach().flatten(1)
    theirs = 2 * ((m @ m.t()) * (1 - torch.eye(6))) @ m
    assert torch.allclose(a.grad.flatten(1), theirs, atol=1e-5)
    assert losses.orthogonal_reg([]).item() == 0


def test_ortho_reg_acts_on_gs_matrices_but_not_the_shared_embedding(cfg_tiny):
    cfg = cfg_tiny(
        "model=biggan", *QUIET, *TINY_WIDTH, "model.n_critic=1", "model.ortho_reg=1e-4",
        "model.ema_decay=0",
    )  # fmt: skip
    objs = build(limit(cfg, 1, 1))
    module = objs["model"]
    names = {id(p): n for n, p in module.generator.named_parameters()}
    chosen = {names[id(p)] for p in module._ortho_weights()}
    assert "shared.weight" not in chosen and "linear.parametrizations.weight.original" in chosen
    assert all(module.generator.get_parameter(n).dim() >= 2 for n in chosen)
    assert len(chosen) == sum(p.dim() >= 2 for p in module.generator.parameters()) - 1
    fit_built(objs)
    assert objs["trainer"].callback_metrics["train/ortho"] > 0


@pytest.mark.slow
def test_short_run_moves_samples_toward_data(cfg_tiny):
    """Tiny-width conditional BigGAN on the synthetic shapes: val/swd falls by half or more."""
    cfg = cfg_tiny(
        "model=biggan", *QUIET, *TINY_WIDTH, "model.n_critic=1", "model.ema_decay=0",
        "model.generator.shared_dim=16", "data.limit=null", *FAST_LR,
    )  # fmt: skip
    start, end = swd_before_after(limit(cfg, 2, 40, val_batches=4))
    assert end < 0.5 * start, (start, end)
