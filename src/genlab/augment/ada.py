"""Adaptive discriminator augmentation (ADA, Karras et al. 2020): augment every image D sees,
each transform applied per image with probability p, and adapt p to D's overfitting.

As NVlabs/stylegan2-ada-pytorch ``training/augment.py`` (AugmentPipe: its transforms, strengths,
order, per-transform probability multipliers and its geometric resampling: reflect-pad, 2x
upsampling with the sym6 wavelet, bilinear resampling, filtered 2x downsampling; no clamping of
the result) and ``training/training_loop.py`` (the p update). Here the multipliers are per group
(R3GAN's pipeline: colour at 0.5, the rest at 1). Differences: the image-space filter group (f)
is not implemented; p is clamped to [0, 1] (theirs only at 0). Images are (B, C, H, W) in
[-1, 1] with C = 1 or 3, and every transform is differentiable in the images (R1 through it
works). tests/test_ada.py checks the output against theirs on the same parameters.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

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

# The orthogonal low-pass filter of the geometric resampling: Daubechies' symlet with 6 vanishing
# moments (AugmentPipe's wavelets['sym6'], normalised to sum 1 where it is used)
SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)  # fmt: skip
SYM6_PAD = len(SYM6) // 4  # input pixels of margin the filter needs on each side


def parse_policy(policy: str) -> str:
    """Check the letters of ``model.ada.policy`` (e.g. "bgc"); returns them."""
    unknown = sorted(set(policy) - set(GROUPS))
    if not policy or unknown:
        known = "; ".join(f"{k} {v}" for k, v in GROUPS.items())
        raise GenlabError(f"model.ada.policy={policy!r}: unknown groups {unknown} (known: {known})")
    return policy


def parse_multipliers(policy: str, multipliers: Mapping[str, float] | None) -> dict[str, float]:
    """Each group of ``policy`` with its probability multiplier: model.ada.multipliers, else 1."""
    given = dict(multipliers or {})
    for group, value in given.items():
        if group not in policy:
            raise GenlabError(
                f"model.ada.multipliers.{group}: not a group of model.ada.policy={policy!r}"
            )
        if not (isinstance(value, (int, float)) and value >= 0):
            raise GenlabError(f"model.ada.multipliers.{group}={value!r} must be a number >= 0")
    return {group: float(given.get(group, 1.0)) for group in policy}


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


def upfirdn2d(
    x: Tensor,
    taps: Tensor,
    up: int = 1,
    down: int = 1,
    pad: int | tuple = 0,
    gain: float = 1.0,
    flip: bool = False,
) -> Tensor:
    """Upsample by zeros, pad (negative: crop), convolve with the separable 1-d ``taps`` on both
    axes (correlate if ``flip``), keep every ``down``-th pixel: StyleGAN2-ADA's upfirdn2d.

    ``pad`` is (x0, x1, y0, y1) or one number; ``gain`` scales the 2-d result.
    """
    b, c, h, w = x.shape
    x0, x1, y0, y1 = (pad,) * 4 if isinstance(pad, int) else pad
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    taps = taps.to(x.dtype) * gain**0.5
    weight = (taps if flip else taps.flip(0)).view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)  # along rows
    x = F.conv2d(x, weight.transpose(2, 3), groups=c)  # along columns
    return x[:, :, ::down, ::down]


def warp(x: Tensor, g_inv: Tensor) -> Tensor:
    """Output pixel q of each image reads the input at ``g_inv @ q``, as AugmentPipe resamples.

    Coordinates are pixels about the image centre (x right, y down); ``g_inv`` is (B, 3, 3).
    The batch is reflect-padded as far as any image reads beyond its border, upsampled 2x with
    the sym6 filter, resampled bilinearly and filtered down 2x: sub-pixel moves keep more of the
    image's high frequencies than one bilinear pass, and whole-pixel translations are exact
    (flips and quarter turns pass through the asymmetric filter, as theirs).
    """
    b, c, h, w = x.shape
    g_inv = g_inv.to(torch.float32)
    taps = x.new_tensor(SYM6, dtype=torch.float32)
    taps = taps / taps.sum()
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = g_inv.new_tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]])
    read = (g_inv @ corners.t())[:, :2, :].permute(1, 0, 2).flatten(1)  # (2, B * 4): x, y read
    margin = torch.cat([-read, read]).amax(dim=1)  # beyond x0, y0, x1, y1
    margin = margin + g_inv.new_tensor([2 * SYM6_PAD - cx, 2 * SYM6_PAD - cy] * 2)
    limit = g_inv.new_tensor([w - 1, h - 1] * 2)  # reflect-padding needs pad < size
    mx0, my0, mx1, my1 = margin.clamp_min(0).minimum(limit).ceil().int().tolist()
    x = F.pad(x, [mx0, mx1, my0, my1], mode="reflect")

    def t(*v: float) -> Tensor:
        return g_inv.new_tensor(v)

    g = translate2d(*t((mx0 - mx1) / 2, (my0 - my1) / 2)) @ g_inv
    x = upfirdn2d(x, taps, up=2, pad=(6, 5, 6, 5), gain=4.0)  # upsample2d's padding at 12 taps
    # the same map on the upsampled grid, whose pixel centres sit half a pixel further out
    half = translate2d(*t(-0.5, -0.5))
    g = half @ scale2d(*t(2, 2)) @ g @ scale2d(*t(0.5, 0.5)) @ translate2d(*t(0.5, 0.5))
    out_h, out_w = (h + 2 * SYM6_PAD) * 2, (w + 2 * SYM6_PAD) * 2
    # to affine_grid's units (align_corners=False): each image spans [-1, 1]
    g = scale2d(*t(2 / x.shape[3], 2 / x.shape[2])) @ g @ scale2d(*t(out_w / 2, out_h / 2))
    grid = F.affine_grid(g[:, :2].to(x.dtype), [b, c, out_h, out_w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # downsample2d's padding at 12 taps (5 each side), less the margin it crops (2 * SYM6_PAD)
    return upfirdn2d(x, taps, down=2, pad=5 - 2 * SYM6_PAD, flip=True)


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


def blit(flip: Tensor, turns: Tensor, shift: Tensor, h: int, w: int) -> Tensor:
    """x-flip where ``flip`` is 1, ``turns`` x 90-degree rotation, then the integer translation
    ``shift`` (B, 2) in units of the image: the inverse map (B, 3, 3), as AugmentPipe builds it."""
    cos90 = torch.tensor(COS90, device=flip.device)
    g = scale2d(1 - 2 * flip, 1.0) @ rotate2d(cos90[turns], cos90[(turns + 3) % 4])
    return g @ translate2d(-torch.round(shift[:, 0] * w), -torch.round(shift[:, 1] * h))


def geometric(
    scale: Tensor, pre: Tensor, aniso: Tensor, post: Tensor, shift: Tensor, h: int, w: int
) -> Tensor:
    """Isotropic ``scale``, rotation by ``pre``, anisotropic scaling, rotation by ``post``, then
    the fractional translation ``shift`` (B, 2) in units of the image: the inverse map."""
    g = scale2d(1 / scale, 1 / scale) @ rotate2d(torch.cos(pre), torch.sin(pre))
    g = g @ scale2d(1 / aniso, aniso) @ rotate2d(torch.cos(post), torch.sin(post))
    return g @ translate2d(-shift[:, 0] * w, -shift[:, 1] * h)


def colour(
    brightness: Tensor, contrast: Tensor, lumaflip: Tensor, hue: Tensor, saturation: Tensor,
    channels: int,
) -> Tensor:  # fmt: skip
    """The homogeneous colour matrix (B, 4, 4); hue and saturation leave grey images alone."""
    c = scale3d(contrast) @ translate3d(brightness)
    c = flip_luma(lumaflip) @ c
    if channels > 1:
        c = scale_chroma(saturation) @ rotate_luma(hue) @ c
    return c


def _draw_blit(b: int, h: int, w: int, p: float, device: torch.device) -> Tensor:
    flip = _gate(torch.randint(0, 2, (b,), device=device).float(), 0.0, p)
    turns = _gate(torch.randint(0, 4, (b,), device=device), 0, p)
    shift = _gate((torch.rand(b, 2, device=device) * 2 - 1) * XINT_MAX, 0.0, p)
    return blit(flip, turns, shift, h, w)


def _draw_geometric(b: int, h: int, w: int, p: float, device: torch.device) -> Tensor:
    scale = _gate(torch.exp2(torch.randn(b, device=device) * SCALE_STD), 1.0, p)
    p_rot = 1 - math.sqrt(min(max(1 - p, 0.0), 1.0))  # pre or post rotation: probability p

    def rotation() -> Tensor:
        return _gate((torch.rand(b, device=device) * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot)

    pre = rotation()
    aniso = _gate(torch.exp2(torch.randn(b, device=device) * ANISO_STD), 1.0, p)
    post = rotation()
    shift = _gate(torch.randn(b, 2, device=device) * XFRAC_STD, 0.0, p)
    return geometric(scale, pre, aniso, post, shift, h, w)


def _draw_colour(b: int, channels: int, p: float, device: torch.device) -> Tensor:
    brightness = _gate(torch.randn(b, device=device) * BRIGHTNESS_STD, 0.0, p)
    contrast = _gate(torch.exp2(torch.randn(b, device=device) * CONTRAST_STD), 1.0, p)
    lumaflip = _gate(torch.randint(0, 2, (b,), device=device).float(), 0.0, p)
    hue = _gate((torch.rand(b, device=device) * 2 - 1) * math.pi * HUE_MAX, 0.0, p)
    saturation = _gate(torch.exp2(torch.randn(b, device=device) * SATURATION_STD), 1.0, p)
    return colour(brightness, contrast, lumaflip, hue, saturation, channels)


@dataclass
class Draw:
    """One batch's transforms, as ``draw`` samples them and ``apply`` executes them."""

    geometry: Tensor | None = None  # (B, 3, 3): output pixel -> input pixel
    colour: Tensor | None = None  # (B, 4, 4): homogeneous RGB
    noise: Tensor | None = None  # (B,): std of the additive noise
    cutout_centre: Tensor | None = None  # (B, 2) in units of the image
    cutout_size: Tensor | None = None  # (B,) side, 0 for no cutout


def draw(
    shape: torch.Size, p: float, policy: str = "bgc", multipliers: Mapping | None = None,
    device: torch.device | str = "cpu",
) -> Draw:  # fmt: skip
    """Sample the transforms of ``policy`` for (B, C, H, W) images: each group's transforms with
    probability p times the group's multiplier."""
    b, c, h, w = shape
    m = parse_multipliers(parse_policy(policy), multipliers)
    out = Draw()
    if "b" in policy or "g" in policy:
        g = torch.eye(3, device=device).expand(b, 3, 3)
        if "b" in policy:
            g = g @ _draw_blit(b, h, w, p * m["b"], device)
        if "g" in policy:
            g = g @ _draw_geometric(b, h, w, p * m["g"], device)
        out.geometry = g
    if "c" in policy:
        out.colour = _draw_colour(b, c, p * m["c"], device)
    if "n" in policy:
        out.noise = _gate(torch.randn(b, device=device).abs() * NOISE_STD, 0.0, p * m["n"])
    if "o" in policy:
        out.cutout_size = _gate(torch.full((b,), CUTOUT_SIZE, device=device), 0.0, p * m["o"])
        out.cutout_centre = torch.rand(b, 2, device=device)
    return out


def apply(x: Tensor, transforms: Draw) -> Tensor:
    """Execute drawn transforms in AugmentPipe's order: geometry, colour, noise, cutout."""
    if transforms.geometry is not None:
        x = warp(x, transforms.geometry)
    if transforms.colour is not None:
        x = recolour(x, transforms.colour)
    if transforms.noise is not None:
        x = x + torch.randn_like(x) * transforms.noise.view(-1, 1, 1, 1).to(x.dtype)
    if transforms.cutout_size is not None:
        x = cut(x, transforms.cutout_centre, transforms.cutout_size)
    return x


def augment(x: Tensor, p: float, policy: str = "bgc", multipliers: Mapping | None = None) -> Tensor:
    """Augment (B, C, H, W) images in [-1, 1]: each transform of ``policy`` with probability p
    (times its group's multiplier). The result may leave [-1, 1], as theirs."""
    if p <= 0:
        return x
    return apply(x, draw(x.shape, p, policy, multipliers, x.device))


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
        multipliers: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.policy = parse_policy(policy)
        self.multipliers = parse_multipliers(self.policy, multipliers)
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
        return augment(x, self.p.item(), self.policy, self.multipliers)

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
