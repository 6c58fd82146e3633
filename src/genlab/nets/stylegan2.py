"""StyleGAN2 generator and discriminator (Karras et al. 2020), as in StyleGAN2-ADA's PyTorch code.

Follows NVlabs/stylegan2-ada-pytorch, ``training/networks.py``: a mapping network (z normalised
to unit second moment, a class embedding concatenated for conditional models), modulated and
demodulated 3x3 convolutions with per-pixel noise, a skip-connection generator (toRGB at every
resolution, images upsampled with the [1, 3, 3, 1] FIR filter), and a residual (or ``orig``)
discriminator with minibatch standard deviation and the class projection ("cmap") output.
Every layer keeps its weights at unit variance and scales them at run time (equalised learning
rate); the mapping layers do so with an lr multiplier of 0.01.

Channels are ``min(channel_base // resolution, channel_max)``; StyleGAN2-ADA's ``cifar``
configuration (channel_base 32768, channel_max 512) is 512 wide at every resolution of a 32 px
model. Their CUDA kernels (bias_act, upfirdn2d, fused modulated conv) are replaced by the same
arithmetic in plain PyTorch ops (``genlab.nets.equalized``): the modulated conv scales activations
before and after one ordinary convolution (their ``fused_modconv=False`` path), which is the faster
one on CPU. Their mixed precision is in the networks: ``num_fp16_res`` blocks at the highest
resolutions compute in float16 on float32 weights cast per layer, and ``conv_clamp`` bounds every
conv's output (train.py: 4 and 256; off by default here, as their ``--fp32``).
"""

import math
from typing import Literal

import torch
from torch import Tensor, nn

from genlab.errors import GenlabError, check_choice
from genlab.nets.equalized import (
    Conv2d,
    FullyConnected,
    bias_act,
    modulated_conv2d,
    normalize_2nd_moment,
    upsample2d,
)
from genlab.nets.layers import check_args, one_hot, require_labels

SQRT_HALF = math.sqrt(0.5)  # residual D: the sum of two branches keeps unit variance
FP16_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class MappingNetwork(nn.Module):
    """z (and labels) -> w: normalise, embed, ``num_layers`` leaky-ReLU layers at lr x 0.01.

    Tracks the average w during training (``w_avg``), the centre of the truncation trick.
    The discriminator's label mapping is the same network without z and without ``w_avg``.
    """

    def __init__(
        self,
        z_dim: int,
        num_classes: int,
        w_dim: int,
        num_layers: int,
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.w_avg_beta = z_dim, num_classes, w_avg_beta
        embed = w_dim if num_classes else 0
        self.embed = FullyConnected(num_classes, embed) if num_classes else None
        sizes = [z_dim + embed] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *(
                FullyConnected(i, o, lrelu=True, lr_multiplier=lr_multiplier)
                for i, o in zip(sizes[:-1], sizes[1:], strict=True)
            )
        )
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor | None, labels: Tensor | None, update_w_avg: bool = True) -> Tensor:
        parts = [normalize_2nd_moment(z)] if self.z_dim else []
        if self.embed is not None:
            like = z if z is not None else self.embed.weight
            parts.append(normalize_2nd_moment(self.embed(one_hot(labels, self.num_classes, like))))
        w = self.layers(torch.cat(parts, 1))  # (B, w_dim)
        if self.w_avg_beta is not None and self.training and update_w_avg:
            with torch.no_grad():
                # in float32 even under bf16-mixed autocast, whose w is bfloat16
                mean = w.detach().mean(0).to(self.w_avg.dtype)
                self.w_avg.copy_(mean.lerp(self.w_avg, self.w_avg_beta))
        return w


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally upsampling), per-pixel noise, bias, leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        up: bool = False,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.up, self.conv_clamp = up, conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        b, size = x.shape[0], x.shape[-1] * (2 if self.up else 1)
        # drawn in float32 and cast, as the reference: the same seed gives the same noise
        noise = torch.randn(b, 1, size, size, device=x.device) * self.noise_strength
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, noise=noise)
        return bias_act(x, self.bias, True, clamp=self.conv_clamp)  # (B, O, H', W')


class ToRGB(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation."""

    def __init__(
        self, in_channels: int, channels: int, w_dim: int, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, False, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (up)conv, conv, and a toRGB added to the image.

    Its convolutions, toRGB's included, compute in ``dtype`` (float16 in the reference's highest
    resolutions); toRGB's output is cast to float32 and the image accumulates in float32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        channels: int,
        conv_clamp: float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.first = in_channels == 0
        if self.first:  # the learned 4x4 constant input
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, True, conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, conv_clamp=conv_clamp)
        self.torgb = ToRGB(out_channels, channels, w_dim, conv_clamp)
        self.num_conv = 1 if self.first else 2

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor) -> tuple[Tensor, Tensor]:
        """ws (B, num_conv + 1, w_dim): one w per conv, the last also for toRGB."""
        if self.first:
            x = self.const.to(self.dtype).expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x.to(self.dtype), ws[:, 0])
        x = self.conv1(x, ws[:, self.num_conv - 1])
        y = self.torgb(x, ws[:, self.num_conv]).float()
        return x, y if img is None else upsample2d(img) + y


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, C, H, W), from 4x4 up to ``image_size``."""

    def __init__(
        self,
        w_dim: int,
        image_size: int,
        channels: int,
        channel_base: int,
        channel_max: int,
        conv_clamp: float | None = None,
        num_fp16_res: int = 0,
        fp16_dtype: str = "float16",
    ) -> None:
        super().__init__()
        widths = _widths(image_size, channel_base, channel_max)
        resolutions = [2**i for i in range(2, int(math.log2(image_size)) + 1)]
        dtypes = _block_dtypes(image_size, num_fp16_res, fp16_dtype)
        self.blocks = nn.ModuleList(
            SynthesisBlock(
                widths[r // 2] if r > 4 else 0, widths[r], w_dim, channels, conv_clamp, dtypes[r]
            )
            for r in resolutions
        )
        # toRGB of one block shares its w with the next block's first conv, as in the reference
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1

    def forward(self, ws: Tensor) -> Tensor:
        x = img = None
        i = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, i : i + block.num_conv + 1])
            i += block.num_conv
        return img


def _widths(image_size: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Channels at each resolution 4 .. image_size."""
    resolutions = [2**i for i in range(2, int(math.log2(image_size)) + 1)]
    return {r: min(channel_base // r, channel_max) for r in resolutions}


def _block_dtypes(image_size: int, num_fp16_res: int, fp16_dtype: str) -> dict[int, torch.dtype]:
    """The compute dtype at each resolution 4 .. image_size: ``fp16_dtype`` in the
    ``num_fp16_res`` highest, but never below 8 px (the reference's ``fp16_resolution``)."""
    fp16_resolution = max(2 ** (int(math.log2(image_size)) + 1 - num_fp16_res), 8)
    resolutions = [2**i for i in range(2, int(math.log2(image_size)) + 1)]
    return {
        r: FP16_DTYPES[fp16_dtype] if r >= fp16_resolution else torch.float32 for r in resolutions
    }


def _check_precision(
    role: str, num_fp16_res: int, conv_clamp: float | None, fp16_dtype: str
) -> None:
    if isinstance(num_fp16_res, bool) or not isinstance(num_fp16_res, int) or num_fp16_res < 0:
        raise GenlabError(
            f"{role}.num_fp16_res={num_fp16_res!r} must be an integer >= 0 (0: all float32)"
        )
    if conv_clamp is not None and not conv_clamp > 0:
        raise GenlabError(f"{role}.conv_clamp={conv_clamp!r} must be > 0 or null (no clamping)")
    check_choice(f"{role}.fp16_dtype", fp16_dtype, tuple(FP16_DTYPES))


def _check(owner: str, role: str, image_size: int, channels: int, num_classes: int, **kw) -> None:
    check_args(owner, role, image_size, channels, num_classes, **kw)
    if image_size < 8 or image_size & (image_size - 1):
        raise GenlabError(
            f"data.image_size={image_size} is not supported by {owner} (a power of two >= 8)"
        )
    if kw["channel_base"] < image_size:  # channels at image_size: channel_base // image_size
        raise GenlabError(
            f"{role}.channel_base={kw['channel_base']} must be >= data.image_size={image_size}"
        )


class StyleGAN2Generator(nn.Module):
    """Mapping network then synthesis network; ``truncation_psi`` < 1 pulls w toward ``w_avg``.

    ``style_mixing`` is the training's job: it calls ``mapping`` and ``synthesis`` itself.

    Args:
        conv_clamp: every synthesis conv's output clamped to +-conv_clamp (times the layer's
            gain), toRGB's too: StyleGAN2-ADA's guard against float16 overflow (256 there).
        num_fp16_res: synthesis blocks at the highest resolutions (never below 8 px) that
            compute in ``fp16_dtype``; weights stay float32 and are cast per layer; the mapping
            and the image stay float32 (StyleGAN2-ADA's ``num_fp16_res``: 4).
        fp16_dtype: float16 (the reference's) or bfloat16 (wider range, no overflow).
    """

    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        w_dim: int = 512,
        mapping_layers: int = 8,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
        truncation_psi: float = 1.0,
        num_fp16_res: int = 0,
        fp16_dtype: Literal["float16", "bfloat16"] = "float16",
    ) -> None:
        super().__init__()
        _check(
            type(self).__name__, "model.generator", image_size, channels, num_classes,
            latent_dim=latent_dim, w_dim=w_dim, mapping_layers=mapping_layers,
            channel_base=channel_base, channel_max=channel_max,
        )  # fmt: skip
        _check_precision("model.generator", num_fp16_res, conv_clamp, fp16_dtype)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.truncation_psi = truncation_psi
        self.synthesis_net = SynthesisNetwork(
            w_dim, image_size, channels, channel_base, channel_max, conv_clamp, num_fp16_res,
            fp16_dtype,
        )  # fmt: skip
        self.num_ws = self.synthesis_net.num_ws
        self.mapping_net = MappingNetwork(latent_dim, num_classes, w_dim, mapping_layers)

    @property
    def w_avg(self) -> Tensor:
        return self.mapping_net.w_avg

    def mapping(
        self,
        z: Tensor,
        labels: Tensor | None = None,
        truncation_psi: float = 1.0,
        update_w_avg: bool = True,
    ) -> Tensor:
        """Latents z (B, latent_dim) -> ws (B, num_ws, w_dim), truncated toward ``w_avg``."""
        require_labels(type(self).__name__, self.num_classes, labels)
        w = self.mapping_net(z, labels, update_w_avg)
        if truncation_psi != 1:
            w = self.w_avg.lerp(w, truncation_psi)
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws: Tensor) -> Tensor:
        """ws (B, num_ws, w_dim) -> images (B, C, H, W), about [-1, 1] (no tanh, as the paper)."""
        return self.synthesis_net(ws)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.synthesis(self.mapping(z, labels, self.truncation_psi))


class DiscriminatorBlock(nn.Module):
    """conv3x3, conv3x3 with 2x FIR downsampling; ``resnet`` adds a 1x1 downsampled skip."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        channels: int,
        resnet: bool,
        conv_clamp: float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.dtype = dtype  # the compute dtype of its convolutions (weights cast per layer)
        self.fromrgb = (
            Conv2d(channels, tmp_channels, 1, conv_clamp=conv_clamp) if not in_channels else None
        )
        self.conv0 = Conv2d(tmp_channels, tmp_channels, 3, conv_clamp=conv_clamp)
        self.conv1 = Conv2d(tmp_channels, out_channels, 3, down=True, conv_clamp=conv_clamp)
        self.skip = Conv2d(tmp_channels, out_channels, 1, False, False, True) if resnet else None

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        if self.skip is None:
            return self.conv1(self.conv0(x))
        return self.skip(x, gain=SQRT_HALF) + self.conv1(self.conv0(x), gain=SQRT_HALF)


def minibatch_std(x: Tensor, group_size: int) -> Tensor:
    """Append one channel: the feature stddev over groups of examples, averaged (B, C+1, H, W).

    Groups take every (B / G)-th example, as the reference's reshape does. When ``group_size``
    does not divide the batch, the largest group size that does is used (the reference asserts).
    """
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.reshape(g, -1, c, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # (B/G, C, H, W)
    y = y.mean((1, 2, 3)).view(-1, 1, 1, 1).repeat(g, 1, h, w)  # (B, 1, H, W)
    return torch.cat([x, y], 1)


class StyleGAN2Discriminator(nn.Module):
    """Blocks down to 4x4, then minibatch stddev, conv, dense, and the logit (B,).

    A conditional D maps labels through its own 8-layer mapping network to ``cmap`` and
    outputs <out(x), cmap> / sqrt(cmap_dim), as the reference's conditional model.

    Args:
        architecture: ``resnet`` (the paper's) or ``orig`` (no skips; the ``cifar`` config's).
        mbstd_group_size: examples per minibatch-stddev group (4 in the paper, 32 for CIFAR).
        conv_clamp, num_fp16_res, fp16_dtype: as the generator's, for D's blocks from the
            image size down (the epilogue at 4 px computes in float32).
        spectral_norm: refused (true); accepted so that gan.yaml's defaults compose.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        mbstd_group_size: int = 4,
        mapping_layers: int = 8,
        conv_clamp: float | None = None,
        spectral_norm: bool = False,
        num_fp16_res: int = 0,
        fp16_dtype: Literal["float16", "bfloat16"] = "float16",
    ) -> None:
        super().__init__()
        if spectral_norm:  # the key comes with gan.yaml's defaults
            raise GenlabError(
                "model.discriminator.spectral_norm=true: StyleGAN2Discriminator has no spectral "
                "norm (equalised lr and R1 instead)"
            )
        _check(
            type(self).__name__, "model.discriminator", image_size, channels, num_classes,
            channel_base=channel_base, channel_max=channel_max,
            mbstd_group_size=mbstd_group_size, mapping_layers=mapping_layers,
        )  # fmt: skip
        _check_precision("model.discriminator", num_fp16_res, conv_clamp, fp16_dtype)
        check_choice("model.discriminator.architecture", architecture, ("resnet", "orig"))
        self.num_classes, self.mbstd_group_size = num_classes, mbstd_group_size
        widths = _widths(image_size, channel_base, channel_max)
        resolutions = sorted(widths, reverse=True)[:-1]  # image_size .. 8
        dtypes = _block_dtypes(image_size, num_fp16_res, fp16_dtype)
        self.blocks = nn.Sequential(
            *(
                DiscriminatorBlock(
                    widths[r] if r < image_size else 0,
                    widths[r],
                    widths[r // 2],
                    channels,
                    architecture == "resnet",
                    conv_clamp,
                    dtypes[r],
                )  # fmt: skip
                for r in resolutions
            )
        )
        c4 = widths[4]
        self.cmap_dim = c4 if num_classes else 0
        self.mapping = (
            MappingNetwork(0, num_classes, c4, mapping_layers, w_avg_beta=None)
            if num_classes
            else None
        )
        self.conv = Conv2d(c4 + 1, c4, 3, conv_clamp=conv_clamp)
        self.fc = FullyConnected(c4 * 16, c4, lrelu=True)
        self.out = FullyConnected(c4, self.cmap_dim or 1)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        require_labels(type(self).__name__, self.num_classes, labels)
        h = self.blocks(x).float()  # (B, C4, 4, 4); the epilogue in float32, as the reference
        h = self.conv(minibatch_std(h, self.mbstd_group_size))
        out = self.out(self.fc(h.flatten(1)))  # (B, cmap_dim or 1)
        if self.mapping is None:
            return out.squeeze(1)
        cmap = self.mapping(None, labels)  # (B, cmap_dim)
        return (out * cmap).sum(1) / math.sqrt(self.cmap_dim)
