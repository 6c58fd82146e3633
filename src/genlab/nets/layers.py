"""Pieces shared by the networks: argument checks, spectral norm, class conditioning."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.errors import GenlabError

# Convolutional nets start from (or end at) this spatial size and double it this many times.
CONV_PLAN: dict[int, tuple[int, int]] = {28: (7, 2), 32: (4, 3), 64: (4, 4)}


def check_args(
    owner: str,
    role: str,
    image_size: int,
    channels: int,
    num_classes: int,
    supported: tuple[int, ...] | None = None,
    **positive: int,
) -> None:
    """Raise GenlabError naming the config key of the first bad size argument.

    Args:
        owner: class name, for the message.
        role: config prefix of the network's own arguments, e.g. ``model.generator``.
        supported: allowed image sizes; None allows any positive size.
        positive: further arguments of ``role`` that must be >= 1.
    """
    if supported is not None and image_size not in supported:
        allowed = ", ".join(map(str, supported))
        raise GenlabError(
            f"data.image_size={image_size} is not supported by {owner} (supported: {allowed})"
        )
    if image_size < 1:
        raise GenlabError(f"data.image_size={image_size} must be >= 1")
    if channels < 1:
        raise GenlabError(f"data.channels={channels} must be >= 1")
    if num_classes < 0:
        raise GenlabError(f"{role}.num_classes={num_classes} must be >= 0 (0: unconditional)")
    for name, value in positive.items():
        if value < 1:
            raise GenlabError(f"{role}.{name}={value} must be >= 1")


def require_labels(owner: str, num_classes: int, labels: Tensor | None) -> None:
    """Raise ValueError when a class-conditional network is called without labels."""
    if num_classes and labels is None:
        raise ValueError(f"{owner} is class-conditional (num_classes={num_classes}): pass labels")


def one_hot(labels: Tensor | None, num_classes: int, like: Tensor) -> Tensor:
    """One-hot labels (B, num_classes) in ``like``'s dtype; (B, 0) when unconditional."""
    if not num_classes:
        return like.new_zeros(like.shape[0], 0)
    return F.one_hot(labels, num_classes).to(like.dtype)


def with_labels(h: Tensor, labels: Tensor | None, num_classes: int) -> Tensor:
    """``h`` (B, F) with one-hot labels appended (B, F + K); ``h`` itself when unconditional."""
    return torch.cat([h, one_hot(labels, num_classes, h)], 1) if num_classes else h


def apply_spectral_norm(net: nn.Module) -> nn.Module:
    """Spectrally normalise the weight of every conv, linear and embedding layer in ``net``."""
    for module in list(net.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
            spectral_norm(module)
    return net


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are looked up per class; plain affine BN if num_classes=0."""

    def __init__(self, num_features: int, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, affine=not num_classes)
        if num_classes:
            # Start as the identity affine map for every class, as in SNGAN/BigGAN.
            self.gain = nn.Embedding(num_classes, num_features)
            self.bias = nn.Embedding(num_classes, num_features)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        x = self.bn(x)  # (B, C, H, W)
        if not self.num_classes:
            return x
        return x * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


class ProjectionHead(nn.Module):
    """Discriminator output: linear logit plus the class projection <embed(y), h> (B,)."""

    def __init__(self, features: int, num_classes: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(features, 1, bias=bias)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        if self.embed is not None:
            # Embedding's default N(0, 1) would swamp the linear logit; SNGAN uses Glorot.
            nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, h: Tensor, labels: Tensor | None = None) -> Tensor:
        out = self.linear(h).squeeze(1)  # (B,)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(1)
        return out
