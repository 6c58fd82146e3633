"""BigGAN generator and discriminator (Brock et al. 2019) at 32 and 64 px.

As PyTorch-StudioGAN's ``big_resnet`` (src/models/big_resnet.py, src/utils/ops.py), which follows
BigGAN-PyTorch: a shared class embedding, hierarchical latents (z split into one chunk for the
first linear layer and one per block, each chunk concatenated with the shared embedding and
mapped by spectrally normalised linears to the gain ``1 + g(.)`` and bias of every conditional
BatchNorm), one self-attention block, spectral norm on every G and D layer except G's shared
embedding and BatchNorms, a projection discriminator with global sum pooling and orthogonal
init. Unconditional models keep the conditional BatchNorms, fed by the z chunks alone
(StudioGAN's ``g_cond_mtd: W/O``), and drop the embeddings. Widths as StudioGAN's configs:
CIFAR10/BigGAN.yaml at 32 px (G and D 96, z 80, attention at 16x16 in G and D) and
Baby_ImageNet/BigGAN.yaml's layout at 64 px (attention at 32x32).

D's blocks after the first come in two kinds (``shortcut``). StudioGAN's ``DiscBlock`` writes
``x0 = x`` and then applies an in-place ReLU to ``x``, so its shortcut sees relu(x) ("relu"); its
published numbers come from that network, and on copied weights genlab's D with "relu" gives its
outputs (tests/test_biggan.py, against a fixture written by its own code). BigGAN-PyTorch's
``DBlock`` keeps the ReLU out of place, so the shortcut sees x ("input"), as the paper intends.
"""

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

import genlab.nets.resnet as resnet
from genlab.errors import GenlabError, check_choice
from genlab.nets.layers import check_args, require_labels

SIZES = (32, 64)
# Block widths as multiples of base_channels (StudioGAN's g/d_{in,out}_dims_collection).
G_WIDTHS = {32: (4, 4, 4, 4), 64: (16, 8, 4, 2, 1)}  # from the 4x4 input up, one per block edge
D_WIDTHS = {32: (2, 2, 2, 2), 64: (1, 2, 4, 8, 16)}  # block outputs, the input's channels first
D_DOWNSAMPLE = {32: (True, True, False, False), 64: (True, True, True, True, False)}
DEFAULT_WIDTH = {32: 96, 64: 80}  # CIFAR10/BigGAN.yaml; Baby_ImageNet/BigGAN.yaml
SN_EPS = 1e-6  # StudioGAN's spectral norm epsilon (ops.snconv2d)
BN_EPS = 1e-4  # StudioGAN's BatchNorm epsilon (ops.batchnorm_2d)
INITS = ("ortho", "N02", "glorot")
Shortcut = Literal["relu", "input"]  # D blocks 2+: shortcut on relu(x) (StudioGAN) or x


def _init(net: nn.Module, style: str) -> None:
    """StudioGAN's ops.init_weights: convs, linears and embeddings; biases to zero."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            if style == "ortho":
                nn.init.orthogonal_(m.weight)
            elif style == "N02":
                nn.init.normal_(m.weight, 0, 0.02)
            else:
                nn.init.xavier_uniform_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def _spectral_norm(net: nn.Module, skip: tuple[nn.Module, ...] = ()) -> None:
    """Spectral norm (one power iteration, eps 1e-6) on every conv, linear and embedding."""
    for m in list(net.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) and not any(m is s for s in skip):
            spectral_norm(m, eps=SN_EPS)


def _check_init(init: str, role: str) -> None:
    check_choice(f"{role}.init", init, INITS)


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019) with 2x2 max-pooled keys and values."""

    def __init__(self, channels: int, role: str = "model.generator") -> None:
        super().__init__()
        if channels < 8:  # queries and keys are channels / 8 wide
            raise GenlabError(
                f"{role}.base_channels leaves {channels} channels at the attention block (>= 8 "
                f"needed); widen it or set {role}.attention=0"
            )
        self.theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.out = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.sigma = nn.Parameter(torch.zeros(1))  # starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, C/8, HW)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # (B, C/8, HW/4)
        attn = torch.softmax(theta.transpose(1, 2) @ phi, -1)  # (B, HW, HW/4)
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # (B, C/2, HW/4)
        o = (g @ attn.transpose(1, 2)).view(b, c // 2, h, w)
        return x + self.sigma * self.out(o)


class ConditionalBN(nn.Module):
    """BatchNorm without affine; gain 1 + W_g a and bias W_b a from a conditioning vector a."""

    def __init__(self, features: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(features, eps=BN_EPS, affine=False)
        self.gain = nn.Linear(cond_dim, features, bias=False)
        self.bias = nn.Linear(cond_dim, features, bias=False)

    def forward(self, x: Tensor, a: Tensor) -> Tensor:
        gain = (1 + self.gain(a))[:, :, None, None]
        return self.bn(x) * gain + self.bias(a)[:, :, None, None]


class GBlock(resnet.GBlock):
    """SNGAN's up-residual block with BigGAN's conditional BatchNorms (B, out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int) -> None:
        super().__init__(in_channels, out_channels)
        self.bn1 = ConditionalBN(in_channels, cond_dim)  # called with the vector a, not labels
        self.bn2 = ConditionalBN(out_channels, cond_dim)


class DBlock(resnet.DBlock):
    """SNGAN's down-residual block, widened at its first conv (in -> out) as BigGAN's.

    Args:
        shortcut: "relu": the shortcut takes relu(x) in a pre-activating block (StudioGAN);
            "input": it takes x (BigGAN-PyTorch, SNGAN).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsample: bool,
        first: bool,
        shortcut: Shortcut = "input",
    ) -> None:
        super().__init__(in_channels, out_channels, downsample, first)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.relu_shortcut = shortcut == "relu" and not first  # the first block has no ReLU

    def forward(self, x: Tensor) -> Tensor:
        # StudioGAN's x0 = x aliases the input its nn.ReLU(inplace=True) then rectifies; the
        # residual branch's own ReLU is idempotent, so only the shortcut changes
        return super().forward(F.relu(x) if self.relu_shortcut else x)


class BigGANGenerator(nn.Module):
    """BigGAN G: z chunk -> 4x4, up-residual blocks with cBN, self-attention, BN-ReLU-conv3, tanh.

    Args:
        latent_dim: z's size; split evenly over the first layer and the blocks.
        shared_dim: the shared class embedding's size (conditional models only).
        attention: resolution of the self-attention block (null: half the image size, 0: none).
    """

    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        base_channels: int | None = None,
        shared_dim: int = 128,
        attention: int | None = None,
        spectral_norm: bool = True,
        init: str = "ortho",
    ) -> None:
        super().__init__()
        base = DEFAULT_WIDTH.get(image_size, 1) if base_channels is None else base_channels
        role = "model.generator"
        check_args(
            type(self).__name__, role, image_size, channels, num_classes, SIZES,
            latent_dim=latent_dim, base_channels=base, shared_dim=shared_dim,
        )  # fmt: skip
        _check_init(init, role)
        widths = [base * m for m in G_WIDTHS[image_size]]
        slots = len(widths)  # the first layer and one per block
        if latent_dim % slots:
            raise GenlabError(
                f"{role}.latent_dim={latent_dim} must split evenly into {slots} chunks "
                f"(the first layer and {slots - 1} blocks at {image_size} px)"
            )
        self.latent_dim, self.num_classes, self.chunk = latent_dim, num_classes, latent_dim // slots
        self.shared = nn.Embedding(num_classes, shared_dim) if num_classes else None
        cond_dim = self.chunk + (shared_dim if num_classes else 0)
        self.linear = nn.Linear(self.chunk, widths[0] * 4 * 4)
        attention = image_size // 2 if attention is None else attention
        self.blocks = nn.ModuleList(
            GBlock(i, o, cond_dim) for i, o in zip(widths[:-1], widths[1:], strict=True)
        )
        # after the block whose output has the attention's resolution (StudioGAN's attn_g_loc)
        self.attn_after = next((n for n in range(len(self.blocks)) if 8 * 2**n == attention), None)
        if attention and self.attn_after is None:
            raise GenlabError(f"{role}.attention={attention}: no G block has that resolution")
        self.attention = SelfAttention(widths[self.attn_after + 1]) if attention else None
        self.bn = nn.BatchNorm2d(widths[-1], eps=BN_EPS)
        self.out = nn.Conv2d(widths[-1], channels, 3, padding=1)
        _init(self, init)
        if spectral_norm:  # BigGAN-PyTorch: "SN on G's embedding seems to randomly cripple G"
            _spectral_norm(self, skip=(self.shared,) if self.shared is not None else ())

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        first, *chunks = torch.split(z, self.chunk, 1)
        if self.shared is not None:
            shared = self.shared(labels)  # (B, shared_dim)
            chunks = [torch.cat([shared, c], 1) for c in chunks]
        h = self.linear(first).view(z.shape[0], -1, 4, 4)  # (B, widths[0], 4, 4)
        for n, (block, a) in enumerate(zip(self.blocks, chunks, strict=True)):
            h = block(h, a)
            if n == self.attn_after and self.attention is not None:
                h = self.attention(h)
        return self.out(F.relu(self.bn(h))).tanh()  # (B, C, H, W)


class BigGANDiscriminator(nn.Module):
    """BigGAN D: down-residual blocks, self-attention, ReLU, global sum pooling, projection.

    Args:
        attention: resolution of the self-attention block (null: half the image size, 0: none).
        shortcut: what the shortcut of every block after the first takes: "relu" (relu(x),
            StudioGAN's network) or "input" (x, BigGAN-PyTorch's). The default is "input", what
            genlab's D computed before the choice existed, so a checkpoint whose saved config
            lacks the key rebuilds the network it trained; conf/model/biggan.yaml sets "relu".
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        base_channels: int | None = None,
        attention: int | None = None,
        spectral_norm: bool = True,
        init: str = "ortho",
        shortcut: Shortcut = "input",
    ) -> None:
        super().__init__()
        base = DEFAULT_WIDTH.get(image_size, 1) if base_channels is None else base_channels
        role = "model.discriminator"
        check_args(
            type(self).__name__, role, image_size, channels, num_classes, SIZES,
            base_channels=base,
        )  # fmt: skip
        _check_init(init, role)
        if shortcut not in get_args(Shortcut):
            raise GenlabError(
                f"{role}.shortcut={shortcut!r}: use relu (StudioGAN's D) or input "
                "(BigGAN-PyTorch's)"
            )
        self.num_classes = num_classes
        widths = [channels] + [base * m for m in D_WIDTHS[image_size]]
        downs = D_DOWNSAMPLE[image_size]
        attention = image_size // 2 if attention is None else attention
        blocks: list[nn.Module] = []
        size, placed = image_size, False
        for n, (i, o, down) in enumerate(zip(widths[:-1], widths[1:], downs, strict=True)):
            blocks.append(DBlock(i, o, down, first=n == 0, shortcut=shortcut))
            size //= 2 if down else 1
            if attention == size and not placed:  # after the first block at that resolution
                blocks.append(SelfAttention(o, role))
                placed = True
        if attention and not placed:
            raise GenlabError(f"{role}.attention={attention}: no D block has that resolution")
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(widths[-1], 1)
        self.embed = nn.Embedding(num_classes, widths[-1]) if num_classes else None
        _init(self, init)
        if spectral_norm:
            _spectral_norm(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = F.relu(self.blocks(x)).sum((2, 3))  # (B, widths[-1]): global sum pooling
        out = self.linear(h).squeeze(1)  # (B,)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(1)
        return out
