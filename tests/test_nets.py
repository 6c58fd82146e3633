"""Networks: shapes and ranges at every size, conditioning, argument checks, spectral norm."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from genlab import losses
from genlab.errors import GenlabError
from genlab.nets import (
    ConvDecoder,
    ConvEncoder,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
)
from genlab.nets.layers import ConditionalBatchNorm2d, ProjectionHead

B, Z, K = 4, 8, 3  # batch, latent size, classes: every class appears in LABELS
LABELS = torch.tensor([0, 1, 2, 0])

# (generator, discriminator, supported sizes, small-width kwargs)
GANS = [
    (DCGANGenerator, DCGANDiscriminator, (28, 32, 64), {"base_channels": 4}),
    (ResNetGenerator, ResNetDiscriminator, (32, 64), {"base_channels": 4}),
    (MLPGenerator, MLPDiscriminator, (8, 28, 32), {"hidden": 16}),
]
G_CASES = [(g, s, kw) for g, _, sizes, kw in GANS for s in sizes]
D_CASES = [(d, s, kw) for _, d, sizes, kw in GANS for s in sizes]
VAE_SIZES = (28, 32, 64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _ids(case) -> str:
    return f"{case[0].__name__}-{case[1]}"


def _labels(num_classes: int) -> torch.Tensor | None:
    return LABELS if num_classes else None


@pytest.mark.parametrize("num_classes", [0, K])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("case", G_CASES, ids=_ids)
def test_generator_shape_and_range(case, channels, num_classes):
    cls, size, kw = case
    g = cls(Z, size, channels, num_classes, **kw)
    assert (g.latent_dim, g.num_classes) == (Z, num_classes)
    x = g(torch.randn(B, Z), _labels(num_classes))
    assert x.shape == (B, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0


@pytest.mark.parametrize("num_classes", [0, K])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("case", D_CASES, ids=_ids)
def test_discriminator_shape(case, channels, num_classes):
    cls, size, kw = case
    d = cls(size, channels, num_classes, **kw)
    assert d.num_classes == num_classes
    logits = d(torch.rand(B, channels, size, size) * 2 - 1, _labels(num_classes))
    assert logits.shape == (B,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("num_classes", [0, K])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", VAE_SIZES)
def test_encoder_decoder_shapes(size, channels, num_classes):
    enc = ConvEncoder(size, channels, Z, num_classes, base_channels=4)
    dec = ConvDecoder(Z, size, channels, num_classes, base_channels=4)
    assert (enc.latent_dim, dec.latent_dim, dec.num_classes) == (Z, Z, num_classes)
    mu, logvar = enc(torch.rand(B, channels, size, size) * 2 - 1, _labels(num_classes))
    assert mu.shape == logvar.shape == (B, Z)
    assert dec(mu, _labels(num_classes)).shape == (B, channels, size, size)


def test_decoder_output_is_unbounded():
    dec = ConvDecoder(Z, 28, 1, base_channels=4)
    with torch.no_grad():
        dec.net[-1].bias.fill_(5.0)  # tanh or sigmoid at the end would keep it below 1
    assert dec(torch.randn(B, Z)).min() > 1


def _randomize_embeddings(net: nn.Module) -> None:
    # Conditional BN starts as the identity for every class; make the classes differ.
    for m in net.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight)


@pytest.mark.parametrize("case", [c for c in G_CASES if c[1] == 32], ids=_ids)
def test_conditional_generator_depends_on_labels(case):
    cls, size, kw = case
    g = cls(Z, size, 3, K, **kw).eval()
    _randomize_embeddings(g)
    z = torch.randn(1, Z).expand(K, Z)
    x = g(z, torch.arange(K))  # one z, every class
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2])
    with pytest.raises(ValueError, match="labels"):
        g(z)


@pytest.mark.parametrize("case", [c for c in D_CASES if c[1] == 32], ids=_ids)
def test_conditional_discriminator_depends_on_labels(case):
    cls, size, kw = case
    d = cls(size, 3, K, **kw)
    x = torch.rand(1, 3, size, size).expand(K, -1, -1, -1)
    logits = d(x, torch.arange(K))
    assert logits[0] != logits[1] and logits[1] != logits[2]
    with pytest.raises(ValueError, match="labels"):
        d(x)


def test_unconditional_nets_ignore_labels():
    g = DCGANGenerator(Z, 28, 1, base_channels=4).eval()
    d = DCGANDiscriminator(28, 1, base_channels=4)
    z = torch.randn(B, Z)
    assert torch.equal(g(z), g(z, LABELS))
    x = g(z)
    assert torch.equal(d(x), d(x, LABELS))


@pytest.mark.parametrize(
    "make",
    [
        lambda s: DCGANGenerator(Z, s, 3),
        lambda s: DCGANDiscriminator(s, 3),
        lambda s: ResNetGenerator(Z, s, 3),
        lambda s: ResNetDiscriminator(s, 3),
        lambda s: ConvEncoder(s, 3, Z),
        lambda s: ConvDecoder(Z, s, 3),
    ],
)
def test_unsupported_image_size_names_the_key(make):
    with pytest.raises(GenlabError, match=r"data\.image_size=48 is not supported by \w+"):
        make(48)


def test_bad_arguments_name_the_key():
    with pytest.raises(GenlabError, match=r"model\.generator\.latent_dim=0"):
        DCGANGenerator(0, 32, 3)
    with pytest.raises(GenlabError, match=r"data\.channels=0"):
        MLPDiscriminator(8, 0)
    with pytest.raises(GenlabError, match=r"model\.discriminator\.num_classes=-1"):
        ResNetDiscriminator(32, 3, -1)
    with pytest.raises(GenlabError, match=r"model\.encoder\.base_channels=0"):
        ConvEncoder(28, 1, Z, base_channels=0)
    with pytest.raises(GenlabError, match=r"model\.generator\.depth=0"):
        MLPGenerator(Z, 8, 1, depth=0)


# Parameter counts of the reference implementation, pfnet-research/sngan_projection (Chainer,
# commit e84b1a5), counted by hand from its links: conv/linear W and b, BatchNormalization gamma
# and beta (2C), CategoricalConditionalBatchNormalization gammas and betas (2 * classes * C, no
# shared affine), SNEmbedID W (classes * C); spectral norm's u is a buffer, not a parameter.
#   G 32 px (gen_models/resnet_32.py, ch=256, dim_z=128): l1 128 -> 4*4*256, three up-blocks
#     256 -> 256 -> 256 (gen_models/resblocks.py: hidden = out, 1x1 c_sc, all convs biased),
#     b5 BN(256), c5 3x3 256 -> 3.
#   D 32 px (dis_models/snresnet_32.py, ch=128): OptimizedBlock 3 -> 128 -> 128 with 1x1 c_sc,
#     Block(128, 128, down) with c_sc, two Blocks(128, 128) without, l5 128 -> 1 (nobias), l_y.
#   G 64 px (gen_models/resnet_64.py, ch=64): l1 128 -> 4*4*1024, up-blocks 1024 -> 512 -> 256
#     -> 128 -> 64, b6 BN(64), l6 3x3 64 -> 3.
#   D 64 px (dis_models/snresnet_64.py, ch=64): OptimizedBlock 3 -> 64, Blocks 64 -> 128 -> 256
#     -> 512 -> 1024 (dis_models/resblocks.py: hidden = in, so c1 is in -> in), l6 1024 -> 1
#     with bias, l_y.
# Configs: sn_cifar10_unconditional.yml (0 classes), sn_cifar10_conditional.yml (10),
# sn_projection_64.yml (1000, ImageNet 64).
SNGAN_REFERENCE_PARAMS = [
    # (image_size, num_classes, generator, discriminator)
    (32, 0, 4_276_739, 1_053_824),
    (32, 10, 4_304_387, 1_055_104),
    (64, 0, 12_220_675, 10_141_441),
    (64, 1000, 17_974_915, 11_165_441),
]


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("size", "num_classes", "n_g", "n_d"), SNGAN_REFERENCE_PARAMS)
def test_resnet_parameter_counts_match_sngan_reference(size, num_classes, n_g, n_d):
    g = ResNetGenerator(128, size, 3, num_classes)
    d = ResNetDiscriminator(size, 3, num_classes)
    assert (_count(g), _count(d)) == (n_g, n_d)


def test_dcgan_init_is_normal_002():
    g = DCGANGenerator(100, 64, 3)  # the first layer has 100 * 512 * 16 weights
    w = g.net[0].weight
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = g.net[1].weight
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01)
    assert bn.std().item() == pytest.approx(0.02, rel=0.3)
    # PyTorch's default for this 3 * 4 * 4 fan-in conv: U(+-1/sqrt(48)), std 1/12
    plain = DCGANDiscriminator(64, 3, init=False).features[0].weight
    assert plain.std().item() == pytest.approx(1 / 12, rel=0.1)


def _weighted_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]


@pytest.mark.parametrize(
    ("cls", "size", "kw"),
    [
        (DCGANDiscriminator, 32, {"spectral_norm": True, "base_channels": 4}),
        (ResNetDiscriminator, 32, {"base_channels": 4}),  # on by default
        (MLPDiscriminator, 8, {"spectral_norm": True, "hidden": 16}),
    ],
)
def test_spectral_norm_on_every_layer(cls, size, kw):
    d = cls(size, 3, K, **kw)
    layers = _weighted_layers(d)
    assert len(layers) >= 4  # convs or linears, the output linear and the class embedding
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    for _ in range(50):  # each training forward runs one power iteration
        d(torch.rand(2, 3, size, size), LABELS[:2])
    d.eval()
    with torch.no_grad():
        sigmas = [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item() for m in layers]
    assert sigmas == pytest.approx([1.0] * len(layers), abs=0.03)
    plain = cls(size, 3, K, **{**kw, "spectral_norm": False})
    assert not any(parametrize.is_parametrized(m, "weight") for m in _weighted_layers(plain))


@pytest.mark.parametrize(("g_cls", "d_cls", "sizes", "kw"), GANS, ids=lambda c: str(c))
def test_one_step_trains_every_parameter(g_cls, d_cls, sizes, kw):
    g, d = g_cls(Z, sizes[0], 3, K, **kw), d_cls(sizes[0], 3, K, **kw)
    real = torch.rand(B, 3, sizes[0], sizes[0]) * 2 - 1
    fake = g(torch.randn(B, Z), LABELS)
    # ns, not hinge: a hinge with as many active reals as fakes gives the output bias 0 grad
    loss = losses.d_loss("ns", d(real, LABELS), d(fake.detach(), LABELS))
    loss.backward()
    before = {k: p.detach().clone() for k, p in d.named_parameters()}
    torch.optim.SGD(d.parameters(), lr=0.1).step()
    for name, p in d.named_parameters():
        assert not torch.equal(before[name], p), name
    # A parameter with no gradient (e.g. a conv bias right before BatchNorm) is dead weight.
    losses.g_loss("ns", d(fake, LABELS)).backward()
    for name, p in g.named_parameters():
        if name in _reference_dead_biases(g):
            assert p.grad.abs().max() < 1e-4 * max(q.grad.abs().max() for q in g.parameters())
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def _reference_dead_biases(g: nn.Module) -> set[str]:
    # SNGAN's G block convs carry biases that a later BatchNorm cancels; genlab keeps them so
    # that parameter counts match the reference, and checks that they really are dead.
    if not isinstance(g, ResNetGenerator):
        return set()
    return {
        f"blocks.{i}.{c}.bias" for i in range(len(g.blocks)) for c in ("conv1", "conv2", "shortcut")
    }


def test_vae_nets_every_parameter_gets_gradient():
    enc, dec = ConvEncoder(32, 3, Z, K, base_channels=4), ConvDecoder(Z, 32, 3, K, base_channels=4)
    x = torch.rand(B, 3, 32, 32) * 2 - 1
    mu, logvar = enc(x, LABELS)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    (losses.bernoulli_nll(dec(z, LABELS), x) + losses.kl_normal(mu, logvar)).mean().backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_projection_head_by_hand():
    head = ProjectionHead(2, num_classes=2)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 2.0]]))
        head.linear.bias.fill_(0.5)
        head.embed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    h = torch.tensor([[3.0, 4.0], [3.0, 4.0]])
    # linear: 1*3 + 2*4 + 0.5 = 11.5; class 0 adds 3, class 1 adds -4
    assert head(h, torch.tensor([0, 1])).tolist() == [14.5, 7.5]


def test_conditional_batchnorm_by_hand():
    cbn = ConditionalBatchNorm2d(1, num_classes=2)
    with torch.no_grad():
        cbn.gain.weight.copy_(torch.tensor([[2.0], [1.0]]))
        cbn.bias.weight.copy_(torch.tensor([[0.0], [10.0]]))
    x = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)  # batch mean 2, biased var 1 -> [-1, 1]
    out = cbn(x, torch.tensor([0, 1])).flatten()
    eps = cbn.bn.eps
    assert out.tolist() == pytest.approx([2 * -1 / math.sqrt(1 + eps), 1 / math.sqrt(1 + eps) + 10])
