"""StyleGAN2's building blocks, as StyleGAN2-ADA's PyTorch code has them: equalised-learning-rate
layers (weights at unit variance, scaled at run time), FIR up- and downsampling, ``bias_act`` and
the modulated, demodulated convolution.

NVlabs/stylegan2-ada-pytorch ``torch_utils/ops`` (upfirdn2d, bias_act, conv2d_resample) and the
layer classes of ``training/networks.py``, in plain PyTorch ops instead of their CUDA kernels.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FIR = (1.0, 3.0, 3.0, 1.0)  # the binomial low-pass filter of every up/downsampling
LRELU_GAIN = math.sqrt(2)  # leaky ReLU (slope 0.2) with this gain keeps activations unit-variance
REDUCED = (torch.float16, torch.bfloat16)  # the dtypes of StyleGAN2's reduced-precision blocks


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``x`` (B, F) scaled so that each row's mean square is 1."""
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


def _fir(channels: int, like: Tensor, gain: float = 1.0) -> Tensor:
    """The 4x4 FIR filter (outer product of FIR, sums to ``gain``) as a depthwise conv weight."""
    f = torch.tensor(FIR, dtype=like.dtype, device=like.device)
    f = torch.outer(f, f)
    return (f * (gain / f.sum())).expand(channels, 1, 4, 4)


def _filter(x: Tensor, pad: tuple[int, int], gain: float = 1.0) -> Tensor:
    """Zero-pad (before, after) on both axes, then apply the FIR filter to each channel."""
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, _fir(x.shape[1], x, gain), groups=x.shape[1])


def upsample2d(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W): zeros inserted after each pixel, then FIR-filtered."""
    b, c, h, w = x.shape
    x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, 1, 0, 0, 0, 1)).reshape(b, c, 2 * h, 2 * w)
    return _filter(x, (2, 1), gain=4.0)  # upfirdn2d.upsample2d's padding for a 4-tap filter


def downsample2d(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H/2, W/2): FIR-filtered, then every second pixel."""
    return _filter(x, (1, 1))[:, :, ::2, ::2]


def bias_act(
    x: Tensor, bias: Tensor | None, lrelu: bool, gain: float = 1.0, clamp: float | None = None
) -> Tensor:
    """Add a per-channel bias, apply leaky ReLU (0.2) times sqrt(2) and ``gain``, then clamp.

    The bias is cast to ``x``'s dtype, as the reference's layers do in their float16 blocks.
    """
    if bias is not None:
        x = x + bias.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
    if lrelu:
        x = F.leaky_relu(x, 0.2) * (LRELU_GAIN * gain)
    elif gain != 1:
        x = x * gain
    return x.clamp(-clamp * gain, clamp * gain) if clamp is not None else x


class FullyConnected(nn.Module):
    """Equalised-lr linear: N(0, 1 / lr_mul^2) weights, scaled by lr_mul / sqrt(in) at run time."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        lrelu: bool = False,
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.lrelu = lrelu
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        x = x @ (self.weight * self.weight_gain).t()  # (B, out)
        return bias_act(x, self.bias * self.bias_gain, self.lrelu)


class Conv2d(nn.Module):
    """Equalised-lr convolution with optional 2x FIR downsampling, leaky ReLU and clamping."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        lrelu: bool = True,
        down: bool = False,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.lrelu, self.down, self.conv_clamp = lrelu, down, conv_clamp
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)  # fp32 weights, cast per layer
        k = w.shape[-1]
        if not self.down:
            x = F.conv2d(x, w, padding=k // 2)
        elif k == 1:  # conv2d_resample's order for 1x1: downsample, then convolve
            x = F.conv2d(downsample2d(x), w)
        else:  # filter with conv2d_resample's padding, then a strided convolution
            x = F.conv2d(_filter(x, (k // 2 + 1, k // 2 + 1)), w, stride=2)
        return bias_act(x, self.bias, self.lrelu, gain, self.conv_clamp)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    demodulate: bool = True,
    up: bool = False,
    noise: Tensor | None = None,
) -> Tensor:
    """Convolve each example with ``weight`` modulated by its styles (B, I), demodulated per output.

    Args:
        x: (B, I, H, W) activations.
        weight: (O, I, k, k) raw weight; demodulation makes its scale irrelevant.
        up: a transposed stride-2 convolution followed by the FIR filter: (B, O, 2H, 2W).
        noise: added to the output, (B, 1, H', W'); with demodulation in one fused multiply-add
            (one rounding in float16, as the reference's ``fma``).

    In a reduced-precision block ``x`` is float16 (or bfloat16) while weight and styles stay
    float32: the demodulation coefficients are computed in float32 and every factor is cast to
    ``x``'s dtype where it meets ``x``, as the reference's unfused path.
    """
    if x.dtype in REDUCED and demodulate:  # the reference's pre-normalisation against fp16
        # overflow; demodulation divides the scale out again (but for its 1e-8)
        i, kh, kw = weight.shape[1:]
        weight = weight * (1 / math.sqrt(i * kh * kw) / weight.abs().amax((1, 2, 3), True))
        styles = styles / styles.abs().amax(1, True)
    x = x * styles.to(x.dtype)[:, :, None, None]
    weight_x = weight.to(x.dtype)
    k = weight.shape[-1]
    if up:  # conv2d_resample for up=2: transposed conv, then the filter with gain 4
        x = F.conv_transpose2d(x, weight_x.transpose(0, 1), stride=2)
        x = _filter(x, ((k - 1) // 2, (k - 1) // 2), gain=4.0)
    else:
        x = F.conv2d(x, weight_x, padding=k // 2)
    if demodulate:  # 1 / the L2 norm of each example's modulated weights per output channel:
        # sum over i, kh, kw of (w s_i)^2 = sum_i s_i^2 sum_kk w^2: no (B, O, I, k, k) tensor
        norms = styles.square() @ weight.square().sum((2, 3)).t()  # (B, O)
        dcoefs = (norms + 1e-8).rsqrt().to(x.dtype)[:, :, None, None]
        return x * dcoefs if noise is None else torch.addcmul(noise.to(x.dtype), x, dcoefs)
    return x if noise is None else x + noise.to(x.dtype)
