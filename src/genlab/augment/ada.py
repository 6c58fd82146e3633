"""Adaptive discriminator augmentation (ADA, Karras et al. 2020): augment every image D sees,
each transform applied per image with probability p, and adapt p to D's overfitting.

After NVlabs/stylegan2-ada-pytorch: ``training/augment.py`` (AugmentPipe: its transforms,
strengths and order) and ``training/training_loop.py`` (the p update). Differences: the blit and
geometric transforms, composed into one matrix as theirs, are applied by one bilinear
``F.grid_sample`` with reflection about the image border instead of their reflect-pad, 2x
upsampling with a sym6 wavelet, resampling and downsampling; the image-space filter group (f)
is not implemented; the output is clamped to [-1, 1] (theirs is not clamped); p is clamped to
[0, 1] (theirs only at 0). Images are (B, C, H, W) in [-1, 1] with C = 1 or 3, and every
transform is differentiable in the images (R1 through it works).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import GenlabError

# Strengths: AugmentPipe's defaults, which the paper's bgc pipeline uses.
XINT_MAX = 0.125  # integer translation, up to this fraction of the image size
SCALE_STD = 0.2  # log2 std of isotropic scaling
ROTATE_MAX = 1.0  # arbitrary rotation range, 1 = the full circle
ANISO_STD = 0.2  # log2 std of anisotropic scaling
XFRAC_STD = 0.125  # std of fractional translation, as a fraction of the image size
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5  # log2 std
HUE_MAX = 1.0  # hue rotation range, 1 = the full circle
SATURATION_STD = 1.0  # log2 std
NOISE_STD = 0.1
CUTOUT_SIZE = 0.5  # side of the cutout square, as a fraction of the image size

GROUPS = {
    "b": "blit: x-flip, 90-degree rotations, integer translation",
    "g": "geometric: isotropic and anisotropic scaling, rotation, fractional translation",
    "c": "colour: brightness, contrast, luma flip, hue rotation, saturation",
    "n": "additive RGB noise",
    "o": "cutout",
}

# cos(k * 90 degrees) for k = 0..3, exact (sin(k * 90) = COS90[(k + 3) % 4])
COS90 = (1.0, 0.0, -1.0, 0.0)


def parse_policy(policy: str) -> str:
    """Check the letters of ``model.ada.policy`` (e.g. "bgc"); returns them."""
    unknown = sorted(set(policy) - set(GROUPS))
    if not policy or unknown:
        known = "; ".join(f"{k} {v}" for k, v in GROUPS.items())
        raise GenlabError(f"model.ada.policy={policy!r}: unknown groups {unknown} (known: {known})")
    return policy


# -- homogeneous matrices; each entry a (B,) tensor or a number, the result (B, R, C) --------


def matrix(*rows: list) -> Tensor:
    """Stack per-image entries into (B, len(rows), len(row)) matrices."""
    ref = next(e for row in rows for e in row if isinstance(e, Tensor))
    entries = [e if isinstance(e, Tensor) else torch.full_like(ref, e) for row in rows for e in row]
    return torch.stack(entries, dim=-1).view(*ref.shape, len(rows), len(rows[0]))


def translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    return matrix([1, 0, tx], [0, 1, ty], [0, 0, 1])


def scale2d(sx: Tensor, sy: Tensor | float) -> Tensor:
    return matrix([sx, 0, 0], [0, sy, 0], [0, 0, 1])


def rotate2d(cos: Tensor, sin: Tensor) -> Tensor:
    """Rotation by the angle of (cos, sin), in image coordinates (x right, y down)."""
    return matrix([cos, -sin, 0], [sin, cos, 0], [0, 0, 1])


def translate3d(t: Tensor) -> Tensor:
    return matrix([1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1])


def scale3d(s: Tensor) -> Tensor:
    return matrix([s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1])


def _luma_axis(like: Tensor) -> Tensor:
    return like.new_tensor([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3)  # (4,)


def rotate_luma(theta: Tensor) -> Tensor:
    """Rotation of colours by ``theta`` about the grey axis (Rodrigues): a hue rotation."""
    vx = vy = vz = 1 / math.sqrt(3)
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return matrix(
        [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
        [0, 0, 0, 1],
    )


def flip_luma(i: Tensor) -> Tensor:
    """Householder reflection of colours through the plane orthogonal to grey where i is 1."""
    v = _luma_axis(i)
    return torch.eye(4, device=i.device) - 2 * torch.outer(v, v) * i.view(-1, 1, 1)


def scale_chroma(s: Tensor) -> Tensor:
    """Keep the grey component of each colour, scale the rest by ``s``: saturation."""
    vv = torch.outer(_luma_axis(s), _luma_axis(s))
    return vv + (torch.eye(4, device=s.device) - vv) * s.view(-1, 1, 1)


# -- applying a transform --------------------------------------------------------------------


def resample(x: Tensor, g_inv: Tensor) -> Tensor:
    """Output pixel q of each image reads the input at ``g_inv @ q``, bilinearly.

    Coordinates are pixels about the image centre (x right, y down); ``g_inv`` is (B, 3, 3).
    Outside the image the input is reflected about its border (the edge pixel repeats).
    """
    b, c, h, w = x.shape
    # affine_grid (align_corners=False) works in units where the image spans [-1, 1]
    to_unit = torch.diag(g_inv.new_tensor([2 / w, 2 / h, 1]))
    theta = to_unit @ g_inv @ torch.diag(g_inv.new_tensor([w / 2, h / 2, 1]))
    grid = F.affine_grid(theta[:, :2].to(x.dtype), [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def recolour(x: Tensor, colour: Tensor) -> Tensor:
    """Apply (B, 4, 4) homogeneous colour matrices to RGB, or their grey average to 1 channel."""
    b, c, h, w = x.shape
    colour = colour.to(x.dtype)
    flat = x.reshape(b, c, h * w)
    if c == 3:
        flat = colour[:, :3, :3] @ flat + colour[:, :3, 3:]
    elif c == 1:
        row = colour[:, :3, :].mean(dim=1, keepdim=True)  # (B, 1, 4)
        flat = flat * row[:, :, :3].sum(dim=2, keepdim=True) + row[:, :, 3:]
    else:
        raise GenlabError(f"model.ada.policy: colour (c) needs 1 or 3 channels, not {c}")
    return flat.reshape(b, c, h, w)


def cut(x: Tensor, centre: Tensor, size: Tensor) -> Tensor:
    """Zero a square of side ``size`` (B,) at ``centre`` (B, 2), both in units of the image."""
    _, _, h, w = x.shape
    cols = (torch.arange(w, device=x.device) + 0.5) / w  # pixel centres in [0, 1]
    rows = (torch.arange(h, device=x.device) + 0.5) / h
    out_x = (cols.view(1, 1, w) - centre[:, 0].view(-1, 1, 1)).abs() >= size.view(-1, 1, 1) / 2
    out_y = (rows.view(1, h, 1) - centre[:, 1].view(-1, 1, 1)).abs() >= size.view(-1, 1, 1) / 2
    return x * (out_x | out_y).unsqueeze(1).to(x.dtype)  # (B, H, W) -> (B, 1, H, W)


# -- drawing the transforms --------------------------------------------------------------------


def _gate(value: Tensor, identity: float, p: float | Tensor) -> Tensor:
    """``value`` for the images drawn with probability ``p``, ``identity`` for the others."""
    chosen = torch.rand(value.shape[0], device=value.device) < p
    return torch.where(chosen.view(-1, *[1] * (value.dim() - 1)), value, identity)


def _blit(b: int, h: int, w: int, p: float, device: torch.device) -> Tensor:
    flip = _gate(torch.randint(0, 2, (b,), device=device).float(), 0.0, p)
    g = scale2d(1 - 2 * flip, 1.0)
    k = _gate(torch.randint(0, 4, (b,), device=device), 0, p)
    cos90 = torch.tensor(COS90, device=device)
    g = g @ rotate2d(cos90[k], cos90[(k + 3) % 4])
    t = _gate((torch.rand(b, 2, device=device) * 2 - 1) * XINT_MAX, 0.0, p)
    return g @ translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h))


def _geom(b: int, h: int, w: int, p: float, device: torch.device) -> Tensor:
    s = _gate(torch.exp2(torch.randn(b, device=device) * SCALE_STD), 1.0, p)
    g = scale2d(1 / s, 1 / s)
    p_rot = 1 - math.sqrt(min(max(1 - p, 0.0), 1.0))  # pre or post rotation: probability p

    def rotation() -> Tensor:
        theta = _gate((torch.rand(b, device=device) * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot)
        return rotate2d(torch.cos(theta), torch.sin(theta))

    g = g @ rotation()
    s = _gate(torch.exp2(torch.randn(b, device=device) * ANISO_STD), 1.0, p)
    g = g @ scale2d(1 / s, s) @ rotation()
    t = _gate(torch.randn(b, 2, device=device) * XFRAC_STD, 0.0, p)
    return g @ translate2d(-t[:, 0] * w, -t[:, 1] * h)


def _colour(b: int, channels: int, p: float, device: torch.device) -> Tensor:
    c = translate3d(_gate(torch.randn(b, device=device) * BRIGHTNESS_STD, 0.0, p))
    c = scale3d(_gate(torch.exp2(torch.randn(b, device=device) * CONTRAST_STD), 1.0, p)) @ c
    c = flip_luma(_gate(torch.randint(0, 2, (b,), device=device).float(), 0.0, p)) @ c
    if channels > 1:  # hue and saturation leave grey images alone
        theta = _gate((torch.rand(b, device=device) * 2 - 1) * math.pi * HUE_MAX, 0.0, p)
        c = rotate_luma(theta) @ c
        s = _gate(torch.exp2(torch.randn(b, device=device) * SATURATION_STD), 1.0, p)
        c = scale_chroma(s) @ c
    return c


def augment(x: Tensor, p: float, policy: str = "bgc") -> Tensor:
    """Augment (B, C, H, W) images in [-1, 1]: each transform of ``policy`` with probability p."""
    if p <= 0:
        return x
    b, c, h, w = x.shape
    policy = parse_policy(policy)
    if "b" in policy or "g" in policy:
        g = torch.eye(3, device=x.device).expand(b, 3, 3)
        if "b" in policy:
            g = g @ _blit(b, h, w, p, x.device)
        if "g" in policy:
            g = g @ _geom(b, h, w, p, x.device)
        x = resample(x, g)
    if "c" in policy:
        x = recolour(x, _colour(b, c, p, x.device))
    if "n" in policy:
        sigma = _gate(torch.randn(b, 1, 1, 1, device=x.device).abs() * NOISE_STD, 0.0, p)
        x = x + torch.randn_like(x) * sigma.to(x.dtype)
    if "o" in policy:
        size = _gate(torch.full((b,), CUTOUT_SIZE, device=x.device), 0.0, p)
        x = cut(x, torch.rand(b, 2, device=x.device), size)
    return x.clamp(-1, 1)


class ADA(nn.Module):
    """The augmentation with its probability p, adapted from r_t = E[sign(D(real))].

    ``target`` None keeps p fixed. Otherwise, every ``interval`` discriminator steps, p moves by
    sign(r_t - target) times the real images seen since the last update over ``kimg`` thousand,
    so it can cross [0, 1] in ``kimg`` thousand images. p, r_t and the running sums are buffers:
    they travel in checkpoints and resume where they stopped.
    """

    def __init__(
        self,
        policy: str = "bgc",
        p: float = 0.0,
        target: float | None = None,
        interval: int = 4,
        kimg: float = 500.0,
    ) -> None:
        super().__init__()
        self.policy = parse_policy(policy)
        if not 0 <= p <= 1:
            raise GenlabError(f"model.ada.p={p} must be in [0, 1]")
        if target is not None and not 0 <= target <= 1:
            raise GenlabError(f"model.ada.target={target} must be in [0, 1] or null (fixed p)")
        if interval < 1:
            raise GenlabError(f"model.ada.interval={interval} must be >= 1")
        if not kimg > 0:
            raise GenlabError(f"model.ada.kimg={kimg} must be > 0")
        self.target, self.interval, self.kimg = target, interval, kimg
        self.register_buffer("p", torch.tensor(float(p)))
        self.register_buffer("rt", torch.tensor(0.0))  # r_t of the last update
        # since the last update: the sum of sign(D(real)), the logits and the real images
        self.register_buffer("signs", torch.zeros(3))
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return augment(x, self.p.item(), self.policy)

    @staticmethod
    def real_signs(d_real: Tensor, images: int) -> Tensor:
        """(sum of sign(D(real)), finite logits, images) of one D step.

        ``images`` is the batch's real images: the count of logits under packing (PacGAN's
        one logit per m images) is not what ``kimg`` measures.
        """
        d_real = d_real.detach().float()
        finite = torch.isfinite(d_real)
        stats = [d_real.sign().where(finite, 0).sum(), finite.sum().float()]
        return torch.stack([*stats, torch.tensor(float(images), device=d_real.device)])

    @torch.no_grad()
    def update(self, signs: Tensor) -> None:
        """Add one D step's ``real_signs`` (summed over DDP ranks); adjust p every interval."""
        self.signs += signs.to(self.signs)
        self.d_steps += 1
        if self.d_steps.item() % self.interval:
            return
        self.rt.copy_(self.signs[0] / self.signs[1].clamp_min(1))
        if self.target is not None:
            step = torch.sign(self.rt - self.target) * self.signs[2] / (self.kimg * 1000)
            self.p.copy_((self.p + step).clamp(0, 1))
        self.signs.zero_()
