"""Pure loss and penalty functions: GAN losses, WGAN-GP, R1, and VAE log-densities.

GAN logits are (B,) and results are scalars; VAE terms are per example (B,), summed over
latent or pixel dimensions. Pixels are in [-1, 1].
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import GenlabError

GANLoss = Literal["ns", "minimax", "hinge", "wgan", "ls"]

LOG_2PI = math.log(2 * math.pi)


def _check_kind(kind: str) -> None:
    if kind not in GANLoss.__args__:
        raise GenlabError(f"model.loss={kind!r} is not one of {', '.join(GANLoss.__args__)}")


def d_loss(kind: GANLoss, real: Tensor, fake: Tensor) -> Tensor:
    """Discriminator loss from logits on real (B,) and fake (B,) images; a scalar."""
    _check_kind(kind)
    if kind in ("ns", "minimax"):
        # BCE(real, 1) + BCE(fake, 0); softplus is the stable -log(sigmoid(-x)).
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wgan":
        return fake.mean() - real.mean()
    return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()


def g_loss(kind: GANLoss, fake: Tensor) -> Tensor:
    """Generator loss from discriminator logits on fake images (B,); a scalar."""
    _check_kind(kind)
    if kind == "ns":
        return F.softplus(-fake).mean()  # -log(sigmoid(fake))
    if kind == "minimax":
        return -F.softplus(fake).mean()  # log(1 - sigmoid(fake)), saturates when D wins
    if kind in ("hinge", "wgan"):
        return -fake.mean()
    return 0.5 * ((fake - 1) ** 2).mean()


def input_grad(out: Tensor, x: Tensor, scale: float | None = None) -> Tensor:
    """grad_x of ``out.sum()`` (out (B,)), kept in the graph so a penalty on it trains D.

    Args:
        scale: the fp16 loss scale (GradScaler). PyTorch's AMP recipe for gradient penalties:
            scale before ``autograd.grad`` so fp16 gradients do not underflow, unscale after.
    """
    if scale is None:
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return grad
    # mean, not sum: per-logit gradients are scale / B, as in the loss the GradScaler tunes for
    (grad,) = torch.autograd.grad(out.float().mean() * scale, x, create_graph=True)
    return grad * (out.numel() / scale)


def gradient_penalty(
    discriminator: nn.Module,
    real: Tensor,
    fake: Tensor,
    labels: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """WGAN-GP: E[(||grad_x D(x)||_2 - 1)^2] at x = eps * real + (1 - eps) * fake.

    eps ~ U(0, 1) per example. The graph is kept so the penalty trains the discriminator;
    ``scale`` as in ``input_grad`` (fp16 mixed precision).
    """
    # (B, 1, 1, 1): one mixing weight per example
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), dtype=real.dtype, device=real.device)
    x = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)  # (B, C, H, W)
    grad = input_grad(discriminator(x, labels), x, scale)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(real_logits: Tensor, real: Tensor, scale: float | None = None) -> Tensor:
    """R1 (Mescheder et al. 2018): E||grad_x D(x)||^2 over real images, without gamma / 2.

    ``real`` must have required grad before ``real_logits`` were computed from it. The caller
    adds ``gamma / 2 * r1_penalty(...)`` to the discriminator loss (StyleGAN convention);
    ``scale`` as in ``input_grad`` (fp16 mixed precision).
    """
    grad = input_grad(real_logits, real, scale)
    return grad.pow(2).flatten(1).sum(1).mean()


def kl_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example (B,) from (B, Z) posteriors."""
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | logits) per example (B,); pixels x in [-1, 1] are read as (x + 1) / 2."""
    target = (x + 1) / 2
    nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, C, H, W)
    return nll.flatten(1).sum(1)


def gaussian_nll(mean: Tensor, x: Tensor, log_scale: Tensor | float) -> Tensor:
    """-log N(x; mean, exp(log_scale)^2) per example (B,), in [-1, 1] pixel units.

    Args:
        log_scale: log standard deviation, a float or a tensor broadcastable to ``x``.
    """
    log_scale = torch.as_tensor(log_scale, dtype=x.dtype, device=x.device)
    z = (x - mean) * torch.exp(-log_scale)
    nll = 0.5 * z**2 + log_scale + 0.5 * LOG_2PI  # (B, C, H, W)
    return nll.flatten(1).sum(1)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) per example (B,), summed over dimensions."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).flatten(1).sum(1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) per example (B,), summed over dimensions."""
    return -0.5 * (LOG_2PI + z**2).flatten(1).sum(1)


# 8-bit likelihoods: level v in 0..255 is the pixel 2 v / 255 - 1 (metrics.to_uint8 rounds back)
LEVELS = 256
BIN = 2 / 255  # width of one level in [-1, 1] pixel units


def to_levels(x: Tensor) -> Tensor:
    """8-bit level (long, same shape) of [-1, 1] pixels, rounded as ``metrics.to_uint8`` does."""
    return ((x + 1) * 127.5 + 0.5).floor().clamp(0, LEVELS - 1).long()


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(-d)) for d > 0, accurate for small and large d (Maechler 2012)."""
    return torch.where(d < math.log(2), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


def discretized_gaussian_nll(mean: Tensor, x: Tensor, log_scale: Tensor | float) -> Tensor:
    """-log P(x) of 8-bit pixels per example (B,): the N(mean, scale^2) mass of x's bin.

    Bins are x +- 1/255; the edge levels 0 and 255 take the tails to -inf and +inf, as in
    PixelCNN++, so the 256 probabilities of a pixel sum to 1 and the result is >= 0.
    """
    # half precision would round the tails (and the bin masses) away
    dtype = torch.promote_types(torch.promote_types(mean.dtype, x.dtype), torch.float32)
    mean, x = mean.to(dtype), x.to(dtype)
    log_scale = torch.as_tensor(log_scale, device=x.device, dtype=dtype)
    inv = torch.exp(-log_scale)
    centre, half = (x - mean) * inv, 0.5 * BIN * inv  # in units of the scale
    # log_ndtr is accurate in the left tail: fold bins right of the mean there, P[a, b] = P[-b, -a]
    right = centre > 0
    hi = torch.where(right, -centre + half, centre + half)
    lo = torch.where(right, -centre - half, centre - half)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    gap = log_hi - log_lo
    inner = log_hi + _log1mexp(gap.clamp_min(1e-30))
    # a bin far narrower than the scale: density times width (relative error ~ half^2 / 6),
    # where the difference of two nearly equal log CDFs would be mostly rounding
    narrow = -0.5 * centre**2 - 0.5 * LOG_2PI + torch.log(2 * half)
    log_p = torch.where(gap < 1e-3, narrow, inner)
    log_p = torch.where(x < -1 + 0.5 * BIN, torch.special.log_ndtr(centre + half), log_p)
    log_p = torch.where(x > 1 - 0.5 * BIN, torch.special.log_ndtr(-centre + half), log_p)
    return -log_p.flatten(1).sum(1)


def categorical_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log P(x) of 8-bit pixels per example (B,) under a 256-way softmax per subpixel.

    Args:
        logits: (B, 256 * C, H, W), channel c's levels at indices c * 256 .. c * 256 + 255.
    """
    logits = logits.unflatten(1, (x.shape[1], LEVELS))  # (B, C, 256, H, W)
    target = to_levels(x).unsqueeze(2)  # (B, C, 1, H, W)
    log_p = torch.log_softmax(logits, 2).gather(2, target)
    return -log_p.flatten(1).sum(1)


def categorical_mean(logits: Tensor, channels: int) -> Tensor:
    """Expected pixel value (B, C, H, W) in [-1, 1] of the 256-way softmax per subpixel."""
    probs = torch.softmax(logits.unflatten(1, (channels, LEVELS)), 2)  # (B, C, 256, H, W)
    values = torch.linspace(-1, 1, LEVELS, dtype=probs.dtype, device=probs.device)
    return (probs * values.view(1, 1, -1, 1, 1)).sum(2)
