"""SNGAN ResNet generator and discriminator (Miyato et al. 2018; projection: Miyato & Koyama 2018).

Widths follow the papers' code (pfnet-research/sngan_projection, gen_models/resnet_{32,64}.py,
dis_models/snresnet_{32,64}.py): at 32 px G is 256 wide and D 128 wide throughout (CIFAR-10); at
64 px G goes 1024 -> 64 and D 64 -> 1024, doubling per resolution (ImageNet 64). G blocks are
in -> out -> out, D blocks in -> in -> out after an in -> out -> out first block, so the default
configurations have exactly the reference's parameter counts. ``base_channels`` scales the
widths; its default (None) is the paper's value for the image size.
"""

import math

import torch.nn.functional as F
from torch import Tensor, nn

from genlab.nets.layers import (
    ConditionalBatchNorm2d,
    ProjectionHead,
    apply_spectral_norm,
    check_args,
    require_labels,
)

SIZES = (32, 64)
# Channel widths as multiples of base_channels: G from 4x4 upwards, D from the input downwards.
G_WIDTHS = {32: (1, 1, 1, 1), 64: (16, 8, 4, 2, 1)}
D_WIDTHS = {32: (1, 1, 1, 1), 64: (1, 2, 4, 8, 16)}
D_DOWNSAMPLE = {32: (True, True, False, False), 64: (True, True, True, True, True)}
G_DEFAULT = {32: 256, 64: 64}
D_DEFAULT = {32: 128, 64: 64}
# The reference's 32 px D has no bias on its output linear (snresnet_32.py: nobias=True); 64 px has.
D_HEAD_BIAS = {32: False, 64: True}


def _glorot(net: nn.Module) -> None:
    """SNGAN init: Glorot-uniform, gain sqrt(2) on residual-branch convs, 1 elsewhere."""
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            gain = math.sqrt(2) if name.split(".")[-1] in ("conv1", "conv2") else 1.0
            nn.init.xavier_uniform_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class GBlock(nn.Module):
    """Pre-activation residual block that doubles H and W: (B, in, H, W) -> (B, out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int = 0) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, num_classes)
        self.bn2 = ConditionalBatchNorm2d(out_channels, num_classes)
        # The reference keeps these conv biases although a later BatchNorm cancels each of them;
        # they stay so that parameter counts match the published models exactly.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, labels)), scale_factor=2.0)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), labels)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0))


class DBlock(nn.Module):
    """Pre-activation residual block, optionally halving H and W with 2x2 average pooling.

    The hidden width is ``in_channels``, except in the "optimized" first block, which widens
    straight away (``out_channels``), as in the reference's ``Block`` and ``OptimizedBlock``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, downsample: bool, first: bool = False
    ) -> None:
        super().__init__()
        self.downsample, self.first = downsample, first
        hidden = out_channels if first else in_channels
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, padding=1)
        learned = downsample or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if learned else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: Tensor) -> Tensor:
        # The "optimized" first block skips the ReLU on raw pixels and pools before its 1x1 conv.
        h = self.conv1(x if self.first else F.relu(x))
        h = self._pool(self.conv2(F.relu(h)))
        if self.shortcut is None:
            return h + x
        if self.first:
            return h + self.shortcut(self._pool(x))
        return h + self._pool(self.shortcut(x))


class ResNetGenerator(nn.Module):
    """SNGAN ResNet generator: dense to 4x4, up-residual blocks, BN-ReLU-conv3x3, tanh.

    Class-conditional generators use conditional BatchNorm (a gain and bias per class).
    """

    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        base_channels: int | None = None,
    ) -> None:
        super().__init__()
        base = G_DEFAULT.get(image_size, 1) if base_channels is None else base_channels
        check_args(
            type(self).__name__,
            "model.generator",
            image_size,
            channels,
            num_classes,
            SIZES,
            latent_dim=latent_dim,
            base_channels=base,
        )
        self.latent_dim, self.num_classes = latent_dim, num_classes
        widths = [base * m for m in G_WIDTHS[image_size]]
        self.linear = nn.Linear(latent_dim, widths[0] * 4 * 4)
        self.blocks = nn.ModuleList(
            GBlock(i, o, num_classes) for i, o in zip(widths[:-1], widths[1:], strict=True)
        )
        self.bn = nn.BatchNorm2d(widths[-1])
        self.out = nn.Conv2d(widths[-1], channels, 3, padding=1)
        _glorot(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = self.linear(z).view(z.shape[0], -1, 4, 4)  # (B, widths[0], 4, 4)
        for block in self.blocks:
            h = block(h, labels)
        return self.out(F.relu(self.bn(h))).tanh()  # (B, C, H, W)


class ResNetDiscriminator(nn.Module):
    """SNGAN ResNet discriminator: residual blocks, ReLU, global sum pooling, projection head.

    Spectral norm is on by default, as in the paper.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        spectral_norm: bool = True,
        base_channels: int | None = None,
    ) -> None:
        super().__init__()
        base = D_DEFAULT.get(image_size, 1) if base_channels is None else base_channels
        check_args(
            type(self).__name__,
            "model.discriminator",
            image_size,
            channels,
            num_classes,
            SIZES,
            base_channels=base,
        )
        self.num_classes = num_classes
        widths = [channels] + [base * m for m in D_WIDTHS[image_size]]
        self.blocks = nn.Sequential(
            *(
                DBlock(i, o, down, first=n == 0)
                for n, (i, o, down) in enumerate(
                    zip(widths[:-1], widths[1:], D_DOWNSAMPLE[image_size], strict=True)
                )
            )
        )
        self.head = ProjectionHead(widths[-1], num_classes, bias=D_HEAD_BIAS[image_size])
        _glorot(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = F.relu(self.blocks(x)).sum((2, 3))  # (B, widths[-1]): global sum pooling
        return self.head(h, labels)  # (B,)
