"""Pure loss and penalty functions: GAN losses, WGAN-GP, R1/R2, orthogonality, VAE densities.

GAN logits are (B,) and results are scalars; VAE terms are per example (B,), summed over
latent or pixel dimensions. Pixels are in [-1, 1].
"""

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import GenlabError, check_choice

GANLoss = Literal["ns", "minimax", "hinge", "wgan", "ls", "rpgan"]

LOG_2PI = math.log(2 * math.pi)


def d_loss(kind: GANLoss, real: Tensor, fake: Tensor) -> Tensor:
    """Discriminator loss from logits on real (B,) and fake (B,) images; a scalar."""
    check_choice("model.loss", kind, GANLoss.__args__)
    if kind in ("ns", "minimax"):
        # BCE(real, 1) + BCE(fake, 0); softplus is the stable -log(sigmoid(-x)).
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wgan":
        return fake.mean() - real.mean()
    if kind == "rpgan":  # relativistic pairing (R3GAN): softplus(-(D(real) - D(fake)))
        return F.softplus(fake - real).mean()
    return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()


def g_loss(kind: GANLoss, fake: Tensor, real: Tensor | None = None) -> Tensor:
    """Generator loss from discriminator logits on fake images (B,); a scalar.

    Args:
        real: logits on real images (B,), paired with ``fake``; only ``rpgan`` reads them.
    """
    check_choice("model.loss", kind, GANLoss.__args__)
    if kind == "rpgan":
        if real is None:
            raise ValueError("the rpgan generator loss needs the logits on real images too")
        return F.softplus(real - fake).mean()
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
    # per logit: with packing (model.pack) m images of ``real`` feed one logit
    return grad.pow(2).reshape(len(real_logits), -1).sum(1).mean()


def path_length_penalty(
    images: Tensor,
    ws: Tensor,
    pl_mean: Tensor,
    decay: float,
    noise: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """StyleGAN2's path length penalty E[(|J_w^T y| - a)^2] and the new running mean a.

    As StyleGAN2-ADA's loss.py: y ~ N(0, I) / sqrt(H * W) (``noise`` replaces the N(0, I)
    draw), |J_w^T y| is the root mean over the num_ws layers of the squared gradient norms, and
    a = lerp(pl_mean, mean length, decay) keeps its graph in the penalty, as theirs does.

    Args:
        images: (B, C, H, W), computed from ``ws`` (B, num_ws, w_dim) with the graph kept.
        pl_mean: the running mean (a scalar tensor) before this step.
    Returns:
        The penalty (a scalar, without pl_weight) and the new mean, detached.
    """
    if noise is None:
        noise = torch.randn_like(images)
    noise = noise / math.sqrt(images.shape[2] * images.shape[3])
    grad = input_grad((images * noise).flatten(1).sum(1), ws, scale)  # (B, num_ws, w_dim)
    lengths = grad.square().sum(2).mean(1).sqrt()  # (B,)
    mean = pl_mean.lerp(lengths.mean(), decay)
    return (lengths - mean).square().mean(), mean.detach()


def r2_penalty(fake_logits: Tensor, fake: Tensor, scale: float | None = None) -> Tensor:
    """R2 (R3GAN): R1's zero-centred penalty on fake images, E||grad_x D(x)||^2, without gamma / 2.

    ``fake`` must have required grad (detached from G) before ``fake_logits`` were computed.
    """
    return r1_penalty(fake_logits, fake, scale)


def orthogonal_reg(weights: list[Tensor]) -> Tensor:
    """BigGAN's orthogonal regulariser: sum over W of 0.5 ||(W W^T) * (1 - I)||_F^2, a scalar.

    W is each weight reshaped to (out, -1). The 0.5 makes its gradient BigGAN-PyTorch's
    ``utils.ortho`` exactly: 2 ((W W^T) * (1 - I)) W; the caller multiplies by the strength.
    """
    total = weights[0].new_zeros(()) if weights else torch.zeros(())
    for w in weights:
        w = w.reshape(w.shape[0], -1)  # (out, in * kh * kw)
        gram = w @ w.t()
        off = gram - torch.diag_embed(torch.diagonal(gram))
        total = total + 0.5 * off.pow(2).sum()
    return total


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


# Disentanglement and MMD objectives (beta-TCVAE, FactorVAE, InfoVAE, WAE-MMD)
Kernel = Literal["imq", "rbf"]
# the WAE authors' IMQ scales (tolstikhin/wae wae.py mmd_penalty; pythae's default `scales`)
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances (N, M) between rows of x (N, Z) and y (M, Z)."""
    # the difference form, not cdist: exact zeros on the diagonal, finite gradients there
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)


def imq_kernel(x: Tensor, y: Tensor, c: float, scales: tuple[float, ...] = (1.0,)) -> Tensor:
    """Inverse multiquadratics sum_s C_s / (C_s + ||x - y||^2), C_s = s * c: (N, M).

    WAE (Tolstikhin et al. 2018) takes c = 2 Z sigma^2 for a N(0, sigma^2 I) prior and sums
    over ``IMQ_SCALES``.
    """
    d2 = _sq_dists(x, y)
    return sum(s * c / (s * c + d2) for s in scales)


def rbf_kernel(x: Tensor, y: Tensor, c: float) -> Tensor:
    """Gaussian kernel exp(-||x - y||^2 / c): (N, M); pythae takes c = 2 Z sigma^2."""
    return torch.exp(-_sq_dists(x, y) / c)


def mmd_unbiased(x: Tensor, y: Tensor, kernel: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Unbiased estimate (U-statistic) of MMD^2 between samples x (N, Z) and y (M, Z): scalar.

    Gretton et al. 2012, eq. 3: the within-sample sums leave out i = j (k(x, x) is no draw of
    k between two independent points), so E[estimate] = MMD^2 exactly, 0 when x ~ y.
    """
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise GenlabError(f"the unbiased MMD needs 2 or more samples per side, got {n} and {m}")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)  # (N, N), (M, M), (N, M)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * kxy.mean()


def log_normal_pairs(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z_i,d; mu_j,d, exp(logvar_j,d)) for every pair (i, j): (B, B, Z)."""
    z, mu, logvar = z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0)
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def mss_log_weights(batch: int, dataset_size: int) -> Tensor:
    """log w_ij (B, B) of minibatch stratified sampling (Chen et al. 2018, Appendix C.2).

    q(z_i) ~ sum_j w_ij q(z_i | x_j): the example's own posterior at 1/N, its neighbour's
    (i + 1 mod B) at (N - M) / (N M), the other B - 2 at 1/M, with M = B - 1; each row sums
    to 1. The authors' ``_log_importance_weight_matrix`` (and pythae's copy) writes the 1/N
    weights with a stride of B through the flattened matrix, which walks down column 0, not
    the diagonal (rtqichen/beta-tcvae pull request 1, open): their row 0 is this row 0, and
    every other row weights x_0's posterior as its own.
    """
    n, m = dataset_size, batch - 1
    w = torch.full((batch, batch), 1 / m, dtype=torch.float64)
    idx = torch.arange(batch)
    w[idx, idx] = 1 / n
    w[idx, (idx + 1) % batch] = (n - m) / (n * m)
    return w.log()


def tc_vae_terms(
    z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, mss: bool = False
) -> dict[str, Tensor]:
    """beta-TCVAE's KL decomposition per example (B,), by minibatch-weighted sampling.

    Chen et al. 2018, eq. 2 and Sec. 4.1 (rtqichen/beta-tcvae vae_quant.py, ``mss`` off):
    log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M), and the same per dimension for
    log prod_d q(z_i,d); ``mss``: minibatch stratified sampling's weights instead
    (``mss_log_weights``). Returns mi = log q(z|x) - log q(z), tc = log q(z) - log prod_d q(z_d),
    dim_kl = log prod_d q(z_d) - log p(z) (their sum is the one-draw KL estimate), and the
    four log densities they come from.

    Args:
        z: one posterior draw per example (B, Z); mu, logvar: q(z | x)'s parameters (B, Z).
        dataset_size: N, the number of training examples the batch of M = B is drawn from.
    """
    if dataset_size < len(z):
        raise GenlabError(
            f"model.dataset_size={dataset_size} is smaller than the batch ({len(z)} examples)"
        )
    pairs = log_normal_pairs(z, mu, logvar)  # (B, B, Z): q(z_i,d | x_j)
    if mss:
        if len(z) < 2:
            raise GenlabError(f"model.mss=true needs batches of 2 or more, got {len(z)}")
        log_w = mss_log_weights(len(z), dataset_size).to(pairs)  # (B, B)
    else:
        log_w = pairs.new_full(pairs.shape[:2], -math.log(len(z) * dataset_size))
    log_qz = torch.logsumexp(log_w + pairs.sum(2), 1)  # (B,)
    log_prod_qz = torch.logsumexp(log_w.unsqueeze(2) + pairs, 1).sum(1)  # (B,)
    log_qz_x = log_normal(z, mu, logvar)
    log_pz = log_standard_normal(z)
    return {
        "mi": log_qz_x - log_qz,
        "tc": log_qz - log_prod_qz,
        "dim_kl": log_prod_qz - log_pz,
        "log_qz_x": log_qz_x,
        "log_qz": log_qz,
        "log_prod_qz": log_prod_qz,
        "log_pz": log_pz,
    }


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each column of z (B, Z) shuffled by its own permutation of the batch (Kim & Mnih 2018,
    Alg. 1): draws of prod_d q(z_d) from draws of q(z)."""
    b, dims = z.shape
    idx = torch.stack([torch.randperm(b, generator=generator) for _ in range(dims)], 1)
    return z.gather(0, idx.to(z.device))  # (B, Z)


def factor_tc(logits: Tensor) -> Tensor:
    """FactorVAE's density-ratio TC estimate log D(z) / (1 - D(z)) per example (B,).

    ``logits`` (B, 2) of the discriminator; class 0 says "a draw of q(z)", class 1 "permuted".
    """
    return logits[:, 0] - logits[:, 1]


def factor_d_loss(logits_q: Tensor, logits_perm: Tensor) -> Tensor:
    """FactorVAE discriminator loss: mean cross-entropy of q(z) draws as class 0 and permuted
    draws as class 1, halved (Kim & Mnih 2018, Alg. 1; pythae's factor_vae_model.py): scalar."""
    zeros = torch.zeros(len(logits_q), dtype=torch.long, device=logits_q.device)
    ones = torch.ones(len(logits_perm), dtype=torch.long, device=logits_perm.device)
    return 0.5 * (F.cross_entropy(logits_q, zeros) + F.cross_entropy(logits_perm, ones))
