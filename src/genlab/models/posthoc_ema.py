"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", section 3 and appendix C): track power-function EMA profiles while training, store
snapshots of them, and afterwards rebuild the EMA of any length as a least-squares combination of
the snapshots.

A power-function EMA at time t (images seen) weights the weights of time tau by
(gamma + 1) tau**gamma / t**(gamma + 1): its length scales with training, and sigma_rel is
that profile's standard deviation over t. Every model names the state it samples with
(``sampling_state``, state-dict prefixes); the floating-point entries there are averaged, the
others (counts) are not.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from genlab.atomic import atomic_write
from genlab.errors import GenlabError

# gamma = 0: the plain average of everything since the start, the longest power profile
SIGMA_MAX = math.sqrt(1 / 12)
# A profile is rebuilt only where the least-squares fit misses it by at most this fraction
# (relative L2 distance of the profiles): 0.05, 0.10 snapshots every 1/20 of a run fit 0.02-0.26.
MAX_FIT_ERROR = 0.1
FORMAT = "genlab-posthoc-ema-1"
SUFFIX = ".safetensors"


def sigma_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the profile with relative std ``sigma_rel`` (EDM2 algorithm 2).

    sigma_rel**2 = (gamma + 1) / ((gamma + 2)**2 (gamma + 3)), the largest real root of the cubic.
    """
    t = sigma_rel**-2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def gamma_to_sigma(gamma: float) -> float:
    """The relative standard deviation of the power profile with exponent ``gamma``."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def power_beta(gamma: float, images: int, batch: int) -> float:
    """The decay of the step that brings the images seen to ``images`` (``batch`` of them new).

    The first step (``images == batch``) gives 0: the average starts at the weights.
    """
    return (1.0 - batch / images) ** (gamma + 1.0)


def profile_dot(t_a: np.ndarray, g_a: np.ndarray, t_b: np.ndarray, g_b: np.ndarray) -> np.ndarray:
    """Inner products of power profiles ending at ``t_a`` and ``t_b`` (broadcast, float64).

    The integral over tau of both profiles' weights: (ga + 1)(gb + 1) / (ga + gb + 1) times
    (t_min / t_max)**g_max_side / t_max, where the exponent is that of the profile ending later.
    """
    ratio = t_a / t_b
    exponent = np.where(t_a < t_b, g_b, -g_a)
    return (g_a + 1) * (g_b + 1) * ratio**exponent / ((g_a + g_b + 1) * np.maximum(t_a, t_b))


def solve(
    times: list[float], gammas: list[float], time: float, gamma: float
) -> tuple[np.ndarray, float]:
    """Weights of the snapshots (``times``, ``gammas``) whose sum best matches the profile
    (``time``, ``gamma``), and the fit's relative L2 error.

    Least squares over the profiles (EDM2 algorithm 3), the weights then scaled to sum to 1.
    """
    t = np.asarray(times, dtype=np.float64)[:, None]
    g = np.asarray(gammas, dtype=np.float64)[:, None]
    a = profile_dot(t, g, t.T, g.T)
    b = profile_dot(t, g, np.float64(time), np.float64(gamma))[:, 0]
    x = np.linalg.lstsq(a, b, rcond=None)[0]  # a singular a (a repeated snapshot) still solves
    x = x / x.sum()
    target = (gamma + 1) ** 2 / ((2 * gamma + 1) * time)
    residual = max(target - 2 * x @ b + x @ a @ x, 0.0)
    return x, math.sqrt(residual / target)


def sampling_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The floating-point state the model samples with (``model.sampling_state`` prefixes)."""
    prefixes = tuple(model.sampling_state)
    return {
        k: v.detach()
        for k, v in model.state_dict(keep_vars=True).items()
        if k.startswith(prefixes) and v.is_floating_point()
    }


def model_name(model: nn.Module) -> str:
    """The class a snapshot records, and that a rebuild checks it against."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


class PowerEMA:
    """Power-function EMAs of a model's sampling state, one per ``sigma_rels`` entry."""

    def __init__(self, sigma_rels: tuple[float, ...], tensors: dict[str, Tensor]) -> None:
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = [sigma_to_gamma(s) for s in self.sigma_rels]
        self.averages = [{k: v.clone() for k, v in tensors.items()} for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, tensors: dict[str, Tensor], images: int, batch: int) -> None:
        """Average in ``tensors`` after the step that brought the images seen to ``images``."""
        live = [tensors[k] for k in self.averages[0]]
        for gamma, average in zip(self.gammas, self.averages, strict=True):
            weight = 1.0 - power_beta(gamma, images, batch)
            torch._foreach_lerp_(list(average.values()), live, weight)


@dataclass
class Snapshot:
    """One snapshot file: every profile's average at ``images`` seen."""

    path: Path
    images: int
    index: int
    sigma_rels: tuple[float, ...]
    model: str


def snapshot_name(index: int) -> str:
    return f"{index:06d}{SUFFIX}"


def write_snapshot(
    path: Path, ema: PowerEMA, images: int, index: int, model: str, every: int
) -> None:
    """Both profiles' averages as one safetensors file, written atomically."""
    from safetensors.torch import save

    tensors = {
        f"{sigma:.6f}/{k}": v.detach().to("cpu", copy=True).contiguous()
        for sigma, average in zip(ema.sigma_rels, ema.averages, strict=True)
        for k, v in average.items()
    }
    metadata = {
        "format": FORMAT,
        "images": str(images),
        "index": str(index),
        "sigma_rels": json.dumps(list(ema.sigma_rels)),
        "model": model,
        "every_n_images": str(every),
    }
    atomic_write(path, lambda f: f.write(save(tensors, metadata)))


def read_snapshots(directory: Path, key: str = "ema.snapshots") -> list[Snapshot]:
    """The snapshots in ``directory``, oldest first; one line for none, a damaged one or a gap."""
    from safetensors import safe_open

    files = sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []
    if not files:
        raise GenlabError(
            f"{key}={directory}: no post-hoc EMA snapshots (train with "
            "callbacks.posthoc_ema.every_n_images > 0)"
        )
    snapshots = []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # truncated or not a safetensors file
            raise GenlabError(
                f"{key}: {path} is not a readable snapshot ({type(e).__name__})"
            ) from None
        if meta.get("format") != FORMAT:
            raise GenlabError(f"{key}: {path} is not a genlab post-hoc EMA snapshot")
        sigmas = tuple(json.loads(meta["sigma_rels"]))
        snapshots.append(
            Snapshot(path, int(meta["images"]), int(meta["index"]), sigmas, meta["model"])
        )
    snapshots.sort(key=lambda s: s.index)
    missing = sorted(set(range(snapshots[-1].index + 1)) - {s.index for s in snapshots})
    if missing:
        raise GenlabError(
            f"{key}={directory}: snapshot {snapshot_name(missing[0])} is missing "
            f"({len(missing)} of {snapshots[-1].index + 1})"
        )
    return snapshots


def check_sigma(sigma_rel: float, key: str) -> None:
    """A relative std a power profile can have."""
    if not 0 < sigma_rel < SIGMA_MAX:
        raise GenlabError(
            f"{key}={sigma_rel}: a power-function EMA has 0 < sigma_rel < {SIGMA_MAX:.4f}"
        )


def plan(
    snapshots: list[Snapshot],
    sigma_rel: float,
    images: int | None = None,
    use: tuple[float, ...] | None = None,
    key: str = "ema.sigma_rel",
) -> tuple[list[tuple[Snapshot, float, float]], dict]:
    """The (snapshot, its profile, weight) terms of the profile ``sigma_rel`` at ``images``
    (default: the last snapshot's), from the profiles ``use`` (default: all stored).

    Fails in one line naming ``key`` when the fit misses the profile by more than MAX_FIT_ERROR.
    """
    check_sigma(sigma_rel, key)
    images = snapshots[-1].images if images is None else images
    terms = [
        (s, sigma)
        for s in snapshots
        if s.images <= images
        for sigma in s.sigma_rels
        if use is None or any(math.isclose(sigma, u) for u in use)
    ]
    if not terms:
        raise GenlabError(f"ema.images={images}: no snapshot at or before it")
    weights, error = solve(
        [s.images for s, _ in terms],
        [sigma_to_gamma(sigma) for _, sigma in terms],
        images,
        sigma_to_gamma(sigma_rel),
    )
    stored = sorted({sigma for _, sigma in terms})
    if error > MAX_FIT_ERROR:
        raise GenlabError(
            f"{key}={sigma_rel}: the snapshots (profiles {stored}, {len(terms)} terms up to "
            f"{images} images) rebuild it only to within {error:.1%} (at most "
            f"{MAX_FIT_ERROR:.0%}; more snapshots or a sigma_rel nearer the stored ones)"
        )
    info = {
        "sigma_rel": sigma_rel,
        "images": images,
        "stored_sigma_rels": stored,
        "snapshots": len({s.index for s, _ in terms}),
        "fit_error": error,
    }
    return [(s, sigma, float(w)) for (s, sigma), w in zip(terms, weights, strict=True)], info


def reconstruct(
    terms: list[tuple[Snapshot, float, float]], reference: dict[str, Tensor], key: str
) -> dict[str, Tensor]:
    """The weighted sum of the snapshots' tensors, checked against ``reference`` (the model's
    sampling state): the same names and shapes, or one line naming ``key``."""
    from safetensors import safe_open

    total = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in reference.items()}
    for snapshot, sigma, weight in terms:
        prefix = f"{sigma:.6f}/"
        try:
            with safe_open(str(snapshot.path), framework="pt") as f:
                names = {n[len(prefix) :] for n in f.keys() if n.startswith(prefix)}  # noqa: SIM118
                if names != set(reference):
                    other = sorted(names ^ set(reference))[0]
                    raise GenlabError(
                        f"{key}: {snapshot.path} holds another model's state ({snapshot.model}; "
                        f"first difference: {other})"
                    )
                for k in reference:
                    tensor = f.get_tensor(prefix + k)
                    if tensor.shape != reference[k].shape:
                        raise GenlabError(
                            f"{key}: {snapshot.path} holds another model's state "
                            f"({snapshot.model}; {k} is {tuple(tensor.shape)})"
                        )
                    total[k] += weight * tensor.double()
        except GenlabError:
            raise
        except Exception as e:  # a file cut short after its header
            raise GenlabError(
                f"{key}: {snapshot.path} is not a readable snapshot ({type(e).__name__})"
            ) from None
    return {k: total[k].to(reference[k].dtype) for k in reference}
