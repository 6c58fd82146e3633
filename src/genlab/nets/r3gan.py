"""R3GAN "Config E" generator and discriminator (Huang et al., NeurIPS 2024) at 32 and 64 px.

As the authors' code (brownvc/R3GAN: R3GAN/Networks.py, FusedOperators.py, Resamplers.py, and
the presets in train.py): stages of residual blocks 1x1 -> grouped kxk -> 1x1 with an inverted
bottleneck (expansion 2) and leaky ReLUs with learned biases, no normalisation; fix-up init (MSR
init scaled by L^(-1/4) for L residual blocks in all, last conv of each branch zero); bilinear
resampling with the [1, 2, 1] filter (its [1, 3, 3, 1] interpolation kernel); a learned 4x4
basis at G's input and a depthwise 4x4 basis at D's output. Class conditioning as theirs: a
linear embedding of the one-hot label concatenated to z in G, a projection onto a linear class
embedding in D. Widths as the CIFAR10 preset at 32 px (4 stages of 768, cardinality 96, two
blocks each, z 64) and the FFHQ-64 preset at 64 px (a fifth stage of half the width).

G has no output nonlinearity, as theirs: samples leave [-1, 1] slightly; metrics and image
saving clamp when they convert to 8 bits.

``bf16_stages``: their FP16Stages (training/networks.py sets ``MainLayers[x].DataType =
torch.bfloat16``), the n highest-resolution stages of each net computing in bfloat16 as theirs
do: the activations are cast at the stage's start and every layer casts its weights, biases and
resampling kernel to them. Their presets put every stage but the 4x4 one there (CIFAR10 3,
FFHQ-64 4); the 4x4 stages hold G's basis and D's, which theirs can only run in float32. G's
last 1x1 conv runs in its last stage's dtype, as theirs, and its bfloat16 output comes back as
float32 (the same values); D's 1x1 input conv runs in its first stage's dtype.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import GenlabError
from genlab.nets.layers import apply_spectral_norm, check_args, one_hot, require_labels

SIZES = (32, 64)
STAGES = {32: 4, 64: 5}  # 4x4 up to the image size
DEFAULT_WIDTH = 768  # 3 * 1024 // 4 in their presets
LRELU_GAIN = math.sqrt(2 / (1 + 0.2**2))  # their BiasedActivation.Gain
LINEAR_LAYERS = 3  # per residual branch, for the fix-up scaling


def _msr(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """Their MSRInitializer: N(0, gain^2 / fan_in), biases zero (gain 0: a zero layer)."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, 0, gain / math.sqrt(fan_in))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class Conv(nn.Conv2d):
    """A bias-free conv in its input's dtype (their Convolution casts the weight to x.dtype)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight.to(x.dtype), None)


def _conv(c_in: int, c_out: int, k: int = 1, groups: int = 1, gain: float = 1.0) -> Conv:
    return _msr(Conv(c_in, c_out, k, padding=(k - 1) // 2, groups=groups, bias=False), gain)


def _stage_widths(image_size: int, width: int, cardinality: int) -> list[tuple[int, int]]:
    """(width, cardinality) per stage from 4x4 up; the 64 px preset halves the last stage."""
    stages = [(width, cardinality)] * 4
    return stages + ([(width // 2, max(cardinality // 2, 1))] if image_size == 64 else [])


def _lowpass() -> Tensor:
    """The 4x4 interpolation kernel of the [1, 2, 1] filter: [1, 3, 3, 1] outer itself, sum 1."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum()


class BiasedLeakyReLU(nn.Module):
    """leaky_relu(x + b, 0.2) with a learned bias per channel (their BiasedActivation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x + self.bias.to(x.dtype).view(1, -1, 1, 1), 0.2)


class Resample(nn.Module):
    """Bilinear 2x up- or downsampling per channel with the [1, 3, 3, 1] kernel (theirs)."""

    def __init__(self, up: bool) -> None:
        super().__init__()
        self.up = up
        self.register_buffer("kernel", _lowpass()[None, None], persistent=False)  # (1, 1, 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        k = self.kernel.to(x.dtype).expand(c, 1, 4, 4)
        if self.up:  # x4: the zeros between the inserted pixels carry no weight
            return F.conv_transpose2d(x, 4 * k, stride=2, padding=1, groups=c)
        return F.conv2d(x, k, stride=2, padding=1, groups=c)


class ResidualBlock(nn.Module):
    """x + conv1x1(act(grouped convkxk(act(conv1x1(x))))), widened ``expansion`` times inside."""

    def __init__(self, channels: int, cardinality: int, expansion: int, blocks: int) -> None:
        super().__init__()
        hidden = channels * expansion
        # fix-up: each branch scaled so L branches add up to unit variance
        gain = LRELU_GAIN * blocks ** (-1 / (2 * LINEAR_LAYERS - 2))
        self.conv1 = _conv(channels, hidden, gain=gain)
        self.act1 = BiasedLeakyReLU(hidden)
        self.conv2 = _conv(hidden, hidden, 3, groups=cardinality, gain=gain)
        self.act2 = BiasedLeakyReLU(hidden)
        self.conv3 = _conv(hidden, channels, gain=0.0)  # the branch starts as zero

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))


def _stage_dtypes(role: str, bf16_stages: int, n_stages: int) -> list[torch.dtype]:
    """Per stage from 4x4 up: bfloat16 for the ``bf16_stages`` highest resolutions."""
    if type(bf16_stages) is not int or not 0 <= bf16_stages < n_stages:  # bool is no count
        raise GenlabError(
            f"{role}.bf16_stages={bf16_stages} must be in 0..{n_stages - 1}: the "
            "highest-resolution stages in bfloat16, all but the 4x4 one at most (its basis "
            "runs in float32, as theirs)"
        )
    return [
        torch.bfloat16 if n >= n_stages - bf16_stages else torch.float32 for n in range(n_stages)
    ]


def _run_stages(
    layers: nn.Sequential, starts: list[int], dtypes: list[torch.dtype], h: Tensor
) -> Tensor:
    """``layers`` in order, ``h`` cast to each stage's dtype where it starts (their stage input)."""
    bounds = [*starts, len(layers)]
    for n, dtype in enumerate(dtypes):
        h = h.to(dtype)
        for layer in layers[bounds[n] : bounds[n + 1]]:
            h = layer(h)
    return h


def _check(role: str, width: int, cardinality: int, expansion: int, blocks: int, size: int) -> None:
    for stage_width, groups in _stage_widths(size, width, cardinality):
        if (stage_width * expansion) % groups:
            raise GenlabError(
                f"{role}.cardinality={cardinality} must divide the expanded width "
                f"{stage_width * expansion} ({role}.width x expansion)"
            )
    if width < 2 or width % 2:
        raise GenlabError(f"{role}.width={width} must be even and >= 2")
    if min(expansion, blocks) < 1:
        raise GenlabError(f"{role}.expansion and {role}.blocks_per_stage must be >= 1")


class R3GANGenerator(nn.Module):
    """R3GAN G: learned 4x4 basis modulated by [z, embed(y)], then up-stages of residual blocks.

    Args:
        width: stage width (their 768); cardinality: groups of the kxk convs (null: width / 8,
            their 96 at 768); embed_dim: class embedding size (their 64, z's size).
        bf16_stages: the highest-resolution stages computing in bfloat16 (their FP16Stages;
            their presets: all but the 4x4 one, 3 at 32 px, 4 at 64 px); 0: all in float32.
    """

    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        width: int | None = None,
        cardinality: int | None = None,
        blocks_per_stage: int = 2,
        expansion: int = 2,
        embed_dim: int = 64,
        bf16_stages: int = 0,
    ) -> None:
        super().__init__()
        width = DEFAULT_WIDTH if width is None else width
        cardinality = width // 8 if cardinality is None else cardinality
        role = "model.generator"
        check_args(
            type(self).__name__, role, image_size, channels, num_classes, SIZES,
            latent_dim=latent_dim, cardinality=cardinality, embed_dim=embed_dim,
        )  # fmt: skip
        _check(role, width, cardinality, expansion, blocks_per_stage, image_size)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        stages = _stage_widths(image_size, width, cardinality)
        self.dtypes = _stage_dtypes(role, bf16_stages, len(stages))
        total = blocks_per_stage * len(stages)
        self.embed = _msr(nn.Linear(num_classes, embed_dim, bias=False)) if num_classes else None
        in_dim = latent_dim + (embed_dim if num_classes else 0)
        self.basis = nn.Parameter(torch.randn(stages[0][0], 4, 4))
        self.basis_linear = _msr(nn.Linear(in_dim, stages[0][0], bias=False))
        layers: list[nn.Module] = []
        self.starts = []  # each stage's first index in the flat layers (their MainLayers)
        for n, (w, groups) in enumerate(stages):
            self.starts.append(len(layers))
            if n:
                prev = stages[n - 1][0]
                layers += [_conv(prev, w)] if prev != w else []  # before upsampling, as theirs
                layers.append(Resample(up=True))
            layers += [ResidualBlock(w, groups, expansion, total) for _ in range(blocks_per_stage)]
        self.layers = nn.Sequential(*layers)
        self.out = _conv(stages[-1][0], channels)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        if self.embed is not None:
            z = torch.cat([z, self.embed(one_hot(labels, self.num_classes, z))], 1)
        h = self.basis[None] * self.basis_linear(z)[:, :, None, None]  # (B, width, 4, 4)
        h = _run_stages(self.layers, self.starts, self.dtypes, h)
        return self.out(h).float()  # (B, C, H, W); theirs returns the last stage's dtype


class R3GANDiscriminator(nn.Module):
    """R3GAN D: 1x1 in, stages of residual blocks then downsampling, depthwise 4x4 basis, linear.

    Args:
        width, cardinality: as the generator's (D mirrors G's stages).
        embed_dim: the projection's class embedding size (null: the width, their 768).
        spectral_norm: off in R3GAN; there for gan.yaml's option of every discriminator.
        bf16_stages: the highest-resolution stages computing in bfloat16 (their D FP16Stages
            [x + len(FP16Stages) for x in G's]: the first ones from the image down).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        width: int | None = None,
        cardinality: int | None = None,
        blocks_per_stage: int = 2,
        expansion: int = 2,
        embed_dim: int | None = None,
        spectral_norm: bool = False,
        bf16_stages: int = 0,
    ) -> None:
        super().__init__()
        width = DEFAULT_WIDTH if width is None else width
        cardinality = width // 8 if cardinality is None else cardinality
        embed_dim = width if embed_dim is None else embed_dim
        role = "model.discriminator"
        check_args(
            type(self).__name__, role, image_size, channels, num_classes, SIZES,
            cardinality=cardinality, embed_dim=embed_dim,
        )  # fmt: skip
        _check(role, width, cardinality, expansion, blocks_per_stage, image_size)
        self.num_classes = num_classes
        stages = _stage_widths(image_size, width, cardinality)[::-1]  # from the image down
        self.dtypes = _stage_dtypes(role, bf16_stages, len(stages))[::-1]
        total = blocks_per_stage * len(stages)
        self.inp = _conv(channels, stages[0][0])
        layers: list[nn.Module] = []
        self.starts = []  # each stage's first index in the flat layers (their MainLayers)
        for n, (w, groups) in enumerate(stages):
            self.starts.append(len(layers))
            layers += [ResidualBlock(w, groups, expansion, total) for _ in range(blocks_per_stage)]
            if n < len(stages) - 1:
                layers.append(Resample(up=False))
                nxt = stages[n + 1][0]
                layers += [_conv(w, nxt)] if nxt != w else []  # after downsampling, as theirs
        self.layers = nn.Sequential(*layers)
        last = stages[-1][0]
        self.basis = _msr(nn.Conv2d(last, last, 4, groups=last, bias=False))  # (B, last, 1, 1)
        out_dim = embed_dim if num_classes else 1
        self.linear = _msr(nn.Linear(last, out_dim, bias=False))
        self.embed = None
        if num_classes:
            gain = 1 / math.sqrt(embed_dim)
            self.embed = _msr(nn.Linear(num_classes, embed_dim, bias=False), gain)
        if spectral_norm:  # not R3GAN's (it has no normalisation); gan.yaml's D option
            apply_spectral_norm(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = _run_stages(self.layers, self.starts, self.dtypes, self.inp(x.to(self.dtypes[0])))
        h = self.linear(self.basis(h).flatten(1))  # (B, out_dim); the 4x4 stage is float32
        if self.embed is None:
            return h.squeeze(1)  # (B,)
        return (h * self.embed(one_hot(labels, self.num_classes, h))).sum(1)
