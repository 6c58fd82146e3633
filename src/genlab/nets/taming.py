"""VQGAN's encoder and decoder as taming-transformers builds them (Esser et al. 2021).

taming/modules/diffusionmodules/model.py ``Encoder`` / ``Decoder``: ResNet blocks (GroupNorm 32
groups, eps 1e-6, Swish, 3x3 convs, a 1x1 shortcut where the width changes), self-attention
blocks at the resolutions in ``attn_resolutions`` and twice in the middle, downsampling by a
stride-2 3x3 conv padded right and bottom, upsampling by nearest x2 then a 3x3 conv. The
encoder ends in taming's ``quant_conv`` (z_channels to embedding_dim, 1x1) and the decoder
starts with its ``post_quant_conv``. Module names are taming's, so their weights load as they
are (``encoder.*`` + ``quant_conv.*`` into the encoder, ``decoder.*`` + ``post_quant_conv.*``
into the decoder).
"""

import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import GenlabError
from genlab.nets.layers import check_args

GROUPS = 32  # taming's Normalize: GroupNorm(32, C, eps=1e-6)


def _norm(width: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, width, eps=1e-6)


class ResnetBlock(nn.Module):
    """x + conv(swish(norm(conv(swish(norm(x)))))), a 1x1 ``nin_shortcut`` if widths differ."""

    def __init__(self, width_in: int, width_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(width_in)
        self.conv1 = nn.Conv2d(width_in, width_out, 3, padding=1)
        self.norm2 = _norm(width_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(width_out, width_out, 3, padding=1)
        if width_in != width_out:
            self.nin_shortcut = nn.Conv2d(width_in, width_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """x + proj_out(softmax(q^T k / sqrt(C)) v): one head over the h * w positions."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = _norm(width)
        self.q, self.k, self.v = (nn.Conv2d(width, width, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (f(n).reshape(b, c, h * w) for f in (self.q, self.k, self.v))  # (B, C, N)
        attn = F.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=2)  # (B, N queries, N keys)
        out = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right and bottom only


class Upsample(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Middle(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(width, width, dropout)
        self.attn_1 = AttnBlock(width)
        self.block_2 = ResnetBlock(width, width, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class _Level(nn.Module):
    """One resolution: ResNet blocks, each followed by attention at the listed resolutions."""

    def __init__(self, widths: list[tuple[int, int]], attention: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, dropout) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o) for _, o in widths) if attention else []

    def blocks(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        return h


def _check(role: str, image_size: int, ch: int, ch_mult: list[int], **positive: int) -> None:
    if not ch_mult or min(ch_mult) < 1:
        raise GenlabError(f"{role}.ch_mult={list(ch_mult)} must be a non-empty list of ints >= 1")
    for name, value in {"ch": ch, **positive}.items():
        if value < 1:
            raise GenlabError(f"{role}.{name}={value} must be >= 1")
    if ch % GROUPS:
        raise GenlabError(f"{role}.ch={ch} must be a multiple of {GROUPS} (GroupNorm groups)")
    if image_size % 2 ** (len(ch_mult) - 1):
        raise GenlabError(
            f"{role}.ch_mult has {len(ch_mult)} levels: data.image_size={image_size} must be "
            f"divisible by {2 ** (len(ch_mult) - 1)}"
        )


class TamingEncoder(nn.Module):
    """(B, C, H, W) images to (B, D, H / 2^(L-1), W / 2^(L-1)) vectors, L = len(ch_mult)."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        embedding_dim: int = 256,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        z_channels: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_args(type(self).__name__, "model.encoder", image_size, channels, 0)
        _check(
            "model.encoder", image_size, ch, list(ch_mult), num_res_blocks=num_res_blocks,
            z_channels=z_channels, embedding_dim=embedding_dim,
        )  # fmt: skip
        self.embedding_dim = embedding_dim
        self.grid = image_size // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, width = image_size, ch
        for i, mult in enumerate(ch_mult):
            widths = [(width if j == 0 else ch * mult, ch * mult) for j in range(num_res_blocks)]
            level = _Level(widths, res in attn_resolutions, dropout)
            width = ch * mult
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(width)
                res //= 2
            self.down.append(level)
        self.mid = _Middle(width, dropout)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, embedding_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.conv_out(F.silu(self.norm_out(self.mid(h))))
        return self.quant_conv(h)  # (B, D, h, w)


class TamingDecoder(nn.Module):
    """(B, D, h, w) quantised vectors to (B, C, H, W) outputs (unbounded, as taming's)."""

    def __init__(
        self,
        embedding_dim: int,
        channels: int,
        image_size: int,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        z_channels: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_args(type(self).__name__, "model.decoder", image_size, channels, 0)
        _check(
            "model.decoder", image_size, ch, list(ch_mult), num_res_blocks=num_res_blocks,
            z_channels=z_channels, embedding_dim=embedding_dim,
        )  # fmt: skip
        self.post_quant_conv = nn.Conv2d(embedding_dim, z_channels, 1)
        width = ch * ch_mult[-1]
        res = image_size // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = _Middle(width, dropout)
        up: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            out = ch * ch_mult[i]
            widths = [(width if j == 0 else out, out) for j in range(num_res_blocks + 1)]
            level = _Level(widths, res in attn_resolutions, dropout)
            width = out
            if i != 0:
                level.upsample = Upsample(width)
                res *= 2
            up.insert(0, level)  # taming's order: up[0] is the full resolution
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    @property
    def last_layer(self) -> Tensor:
        """The weight of the output layer, where VQGAN's adaptive weight compares gradients."""
        return self.conv_out.weight

    def forward(self, q: Tensor) -> Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(q)))
        for level in reversed(self.up):
            h = level.blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)
