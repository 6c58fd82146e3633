"""Perceptual path length (Karras et al. 2019), as StyleGAN2-ADA computes it.

NVlabs/stylegan2-ada-pytorch, ``metrics/perceptual_path_length.py``: per pair of latents, a point
t on the path (t = 0 for sampling "end", uniform for "full"), in W by lerp of the mapped w's or
in Z by slerp; images at t and t + epsilon from the same noise; optionally the face crop; box
downsampling to 256 px; LPIPS(VGG) between the two / epsilon^2; the mean of the distances
between their 1st ("lower") and 99th ("higher") percentiles. ``ppl2_wend`` (their StyleGAN2
default) is space w, sampling end, no crop, 50k samples, epsilon 1e-4.

Two differences, neither changing the expected value: noise is drawn per image and shared
within each pair (theirs: one constant noise map per batch, shared by every image of it), and
labels of conditional generators are uniform over classes (theirs: drawn from the dataset).
LPIPS is the ``lpips`` package's VGG (v0.1), inputs in [-1, 1]; theirs is NVIDIA's TorchScript
port of the same network (vgg16.pt, inputs in [0, 255]).
"""

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from genlab.errors import GenlabError

PPL = "ppl"
Space = Literal["w", "z"]
Sampling = Literal["end", "full"]
LPIPS_SIZE = 256  # StyleGAN box-downsamples larger images to this before LPIPS


def check_mapping(generator: nn.Module) -> None:
    """One-line error unless ``generator`` has a StyleGAN mapping network (mapping + synthesis)."""
    if not (callable(getattr(generator, "mapping", None)) and hasattr(generator, "synthesis")):
        raise GenlabError(
            f"metrics.metrics: ppl needs a generator with a mapping network (mapping and "
            f"synthesis, as StyleGAN2Generator); {type(generator).__name__} has none"
        )


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of (B, D) directions a -> b at (B, 1) t; unit-norm (B, D)."""
    a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(-1, keepdim=True)  # (B, 1) cos of the angle
    p = t * torch.acos(d)
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True)
    out = a * torch.cos(p) + c * torch.sin(p)
    return out / out.norm(dim=-1, keepdim=True)


def lpips_input(images: Tensor, crop: bool, image_size: int) -> Tensor:
    """(B, C, H, W) generator output -> (B, 3, h, w) for LPIPS: face crop, box downsampling."""
    if crop:  # StyleGAN's FFHQ crop: rows 3/8..7/8, columns 2/8..6/8
        c = images.shape[2] // 8
        images = images[:, :, c * 3 : c * 7, c * 2 : c * 6]
    factor = image_size // LPIPS_SIZE  # from the full size, as theirs, crop or not
    if factor > 1:
        b, ch, h, w = images.shape
        images = images.reshape(b, ch, h // factor, factor, w // factor, factor).mean((3, 5))
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@torch.no_grad()
def ppl_distances(
    generator: nn.Module,
    lpips: nn.Module,
    num_samples: int,
    epsilon: float = 1e-4,
    space: Space = "w",
    sampling: Sampling = "end",
    crop: bool = False,
    batch_size: int = 16,
    seed: int = 0,
) -> Tensor:
    """LPIPS(G(t), G(t + epsilon)) / epsilon^2 for ``num_samples`` latent pairs: (num_samples,).

    Runs on the generator's device. Latents come from a CPU generator seeded with ``seed`` (the
    same on any device), drawn per batch as theirs: ``batch_size`` changes which pairs are drawn.
    """
    check_mapping(generator)
    if space not in ("w", "z") or sampling not in ("end", "full"):
        raise GenlabError(f"ppl: space must be w or z, sampling end or full: {space}, {sampling}")
    param = next(generator.parameters())
    device, dtype = param.device, param.dtype
    if dtype not in (torch.float32, torch.float64):  # StyleGAN forces fp32 for this metric
        raise GenlabError(f"ppl: epsilon {epsilon} needs a float32 generator, not {dtype}")
    num_classes = getattr(generator, "num_classes", 0)
    g = torch.Generator().manual_seed(seed)
    out = []
    # the synthesis noise comes from the global RNG: seed it, and leave the caller's alone
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, num_samples, batch_size):
            b = min(batch_size, num_samples - start)
            t = torch.rand(b, generator=g) * (1 if sampling == "full" else 0)  # (b,)
            z0, z1 = torch.randn(2 * b, generator.latent_dim, generator=g).chunk(2)  # (b, Z)
            labels = torch.randint(num_classes, (b,), generator=g) if num_classes else None
            t, z0, z1 = (v.to(device, dtype) for v in (t, z0, z1))
            labels = labels.to(device) if labels is not None else None
            pair = None if labels is None else torch.cat([labels, labels])  # (2b,)
            if space == "w":
                w0, w1 = generator.mapping(torch.cat([z0, z1]), pair, update_w_avg=False).chunk(2)
                tt = t[:, None, None]  # ws are (b, num_ws, w_dim)
                wt0, wt1 = w0.lerp(w1, tt), w0.lerp(w1, tt + epsilon)
            else:
                zt = torch.cat([slerp(z0, z1, t[:, None]), slerp(z0, z1, t[:, None] + epsilon)])
                wt0, wt1 = generator.mapping(zt, pair, update_w_avg=False).chunk(2)
            # the same noise for both ends of a pair: a difference in noise would swamp epsilon
            state = _rng_state(device)
            img0 = generator.synthesis(wt0).float()  # (b, C, H, W)
            _set_rng_state(state, device)
            img1 = generator.synthesis(wt1).float()
            size = img0.shape[-1]
            d = lpips(lpips_input(img0, crop, size), lpips_input(img1, crop, size))  # (b, 1, 1, 1)
            out.append(d.reshape(-1).cpu() / epsilon**2)
    return torch.cat(out)


def ppl_from_distances(distances: Tensor) -> float:
    """Mean of the (N,) distances between their 1st (lower) and 99th (higher) percentiles."""
    d = distances.double().numpy()
    lo = np.percentile(d, 1, method="lower")
    hi = np.percentile(d, 99, method="higher")
    return float(d[(d >= lo) & (d <= hi)].mean())


def perceptual_path_length(
    generator: nn.Module,
    lpips: nn.Module,
    num_samples: int = 50_000,
    epsilon: float = 1e-4,
    space: Space = "w",
    sampling: Sampling = "end",
    crop: bool = False,
    batch_size: int = 16,
    seed: int = 0,
) -> float:
    """StyleGAN's PPL of ``generator`` (``.mapping``, ``.synthesis``) under ``lpips`` (VGG)."""
    if num_samples < 1:
        raise GenlabError(f"metrics.ppl_samples must be >= 1, got {num_samples}")
    distances = ppl_distances(
        generator, lpips, num_samples, epsilon, space, sampling, crop, batch_size, seed
    )
    return ppl_from_distances(distances)


def ppl_protocol(
    num_samples: int,
    epsilon: float = 1e-4,
    space: Space = "w",
    sampling: Sampling = "end",
    crop: bool = False,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """What fixes the number, for metrics.json (the LPIPS weights file is the caller's to add)."""
    return {
        "metric": "perceptual path length (StyleGAN2-ADA metrics/perceptual_path_length.py)",
        "num_samples": num_samples,
        "epsilon": epsilon,
        "space": space,
        "sampling": sampling,
        "crop": crop,
        "batch_size": batch_size,  # latents are drawn per batch
        "seed": seed,
        "distance": f"LPIPS VGG v0.1 (lpips package) / epsilon^2, downsampled to {LPIPS_SIZE} px",
        "filter": "mean between the 1st (lower) and 99th (higher) percentiles",
        "truncation_psi": 1.0,
        "noise": "per image, shared within each pair",
    }


class PPLSettings:
    """``metrics.ppl``: how genlab-eval and training score PPL, and the LPIPS network it uses.

    Args:
        lpips_weights: the local LPIPS-VGG state dict (``metrics.ppl.lpips_weights``).
        num_samples: latent pairs (StyleGAN: 50,000; ~0.7 s each on a CPU at 32 px).
    """

    def __init__(
        self,
        lpips_weights: str | None = None,
        num_samples: int = 50_000,
        epsilon: float = 1e-4,
        space: Space = "w",
        sampling: Sampling = "end",
        crop: bool = False,
        batch_size: int = 16,
    ) -> None:
        from genlab.metrics.lpips import load_lpips

        if num_samples < 1:
            raise GenlabError(f"metrics.ppl.num_samples must be >= 1, got {num_samples}")
        self.lpips = load_lpips("vgg", lpips_weights, "metrics.ppl.lpips_weights")
        self.lpips_weights, self.seed = lpips_weights, 0
        self.settings = dict(
            num_samples=num_samples, epsilon=epsilon, space=space, sampling=sampling, crop=crop,
            batch_size=batch_size,
        )  # fmt: skip

    def score(self, trainer: Any, pl_module: nn.Module, seed: int) -> float:
        """PPL of the module's sampling generator, computed on rank 0 and shared with all."""
        generator = getattr(pl_module, "sampling_generator", None)
        generator = generator if generator is not None else getattr(pl_module, "generator", None)
        check_mapping(generator)
        value, self.seed = 0.0, seed
        if trainer.is_global_zero:  # one rank: the pairs are not split across ranks
            lpips = self.lpips.to(next(generator.parameters()).device)
            value = perceptual_path_length(generator, lpips, seed=seed, **self.settings)
        return float(trainer.strategy.broadcast(value))

    def protocol(self) -> dict[str, Any]:
        """The settings and the LPIPS file, for metrics.json."""
        from genlab.metrics.features import file_sha256

        out = ppl_protocol(**self.settings, seed=self.seed)
        out.update(lpips="lpips package VGG v0.1", lpips_weights=self.lpips_weights)
        out["lpips_sha256"] = file_sha256(self.lpips_weights) if self.lpips_weights else None
        return out
