"""What genlab-sample runs: sample grids, latent interpolations, per-class rows, reconstructions.

Imported by the entry point (``genlab.cli.sample``) only once Hydra has composed a valid config.
"""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from genlab.callbacks.images import grid_uint8, save_png
from genlab.checkpoints import load_model, local_checkpoint, weights_file
from genlab.config import DEVICES, check_sample, instantiate
from genlab.errors import GenlabError, check_choice
from genlab.models.samplers import LatentSampler, load_or_fit, sample_through
from genlab.models.vae import reconstruction_rows

log = logging.getLogger("genlab")


def lerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Straight lines between end points (B, Z) at fractions t (T,): (B, T, Z)."""
    t = t.view(1, -1, 1)
    return z0[:, None] * (1 - t) + z1[:, None] * t


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Great-circle paths between end points (B, Z) at fractions t (T,): (B, T, Z).

    Midpoints of two Gaussian draws keep the norm typical of the prior, whereas lerp pulls them
    toward the origin, where the generator saw no training noise (White 2016).
    """
    t = t.view(1, -1, 1)
    omega = torch.arccos(F.cosine_similarity(z0, z1, dim=1).clamp(-1, 1)).view(-1, 1, 1)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6  # the formula is 0/0 there; slerp tends to lerp
    sin = torch.where(parallel, torch.ones_like(sin), sin)
    arc = torch.sin((1 - t) * omega) / sin * z0[:, None] + torch.sin(t * omega) / sin * z1[:, None]
    return torch.where(parallel, lerp(z0, z1, t), arc)


def decode(model: nn.Module, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """Images (B, C, H, W) from latents (B, Z): the VAE's decoder mean or the GAN's generator."""
    if hasattr(model, "decode_mean"):
        return model.decode_mean(z, labels)
    return model.sampling_generator(z, labels)  # the EMA generator when the run kept one


def interpolations(
    model: nn.Module, count: int, steps: int, ends: Callable[[int], Tensor] | None = None
) -> dict[str, Tensor]:
    """``count`` strips of ``steps`` images, lerp and slerp between the same random end points.

    End points are N(0, I) draws, or ``ends(2 * count)`` (a fitted sampler's latents, (2N, Z)).
    Each strip of a conditional model keeps one random class. Images come strip after strip:
    (count * steps, C, H, W).
    """
    if ends is None:
        z0, z1 = torch.randn(2, count, model.latent_dim, device=model.device)
    else:
        z0, z1 = ends(2 * count).view(2, count, -1)
    labels = None
    if model.num_classes:
        labels = torch.randint(model.num_classes, (count,), device=model.device)
        labels = labels.repeat_interleave(steps)
    t = torch.linspace(0, 1, steps, device=model.device)
    return {
        name: decode(model, path(z0, z1, t).flatten(0, 1), labels)
        for name, path in (("lerp", lerp), ("slerp", slerp))
    }


def class_rows(model: nn.Module, per_class: int) -> Tensor:
    """``per_class`` samples of every class, class after class: (K * per_class, C, H, W)."""
    labels = torch.arange(model.num_classes, device=model.device).repeat_interleave(per_class)
    return model.sample(len(labels), labels)


def real_images(run_cfg: DictConfig, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` validation images of the run's dataset (training images if val is empty)."""
    datamodule = instantiate(run_cfg.data)
    dataset = datamodule.dataset("val")
    if len(dataset) == 0:
        dataset = datamodule.dataset("train")
    images, labels = zip(*(dataset[i] for i in range(min(n, len(dataset)))), strict=True)
    return torch.stack(images), torch.stack(labels)


def set_truncation(model: nn.Module, psi: float) -> None:
    """Sample with truncation ``psi``; a one-line error for a model without it (a VAE too)."""
    if not hasattr(model, "set_truncation"):
        raise GenlabError(f"truncation={psi}: {type(model).__name__} has no truncation")
    model.set_truncation(psi)


def nearest_rows(cfg: DictConfig, run_cfg: DictConfig, model: nn.Module) -> Tensor:
    """Rows of ``nrow`` samples, each above a row of their nearest reference (training) images.

    Nearest in the feature space of the run's metrics config (``metrics.*`` here overrides it;
    a run without one gets conf/metrics/default.yaml), reference split and cache included.
    """
    from omegaconf import OmegaConf

    from genlab.callbacks.sample_features import single_process
    from genlab.config import CONFIG_DIR

    base = run_cfg.get("metrics") or {}
    if "_target_" not in base:
        base = OmegaConf.load(Path(CONFIG_DIR) / "metrics" / "default.yaml")
    metrics_cfg = OmegaConf.merge(base, cfg.get("metrics") or {}, {"metrics": ["copies"]})
    metrics_cfg.pop("defaults", None)
    # a terminal gets a bar (the run's setting is for training, where Lightning's bar shows)
    metrics = instantiate(metrics_cfg, batch_size=min(64, cfg.nearest_count), progress=True)
    datamodule = instantiate(run_cfg.data)
    samples, neighbours = metrics.nearest_training(
        single_process(datamodule), model, cfg.nearest_count
    )
    rows = [
        part[i : i + cfg.nrow].cpu()
        for i in range(0, len(samples), cfg.nrow)
        for part in (samples, neighbours)
    ]
    return torch.cat(rows)


def latent_sampler(
    cfg: DictConfig,
    run_cfg: DictConfig,
    model: nn.Module,
    device: torch.device,
    datamodule: Any = None,
) -> LatentSampler:
    """genlab-sample's or genlab-eval's ``sampler`` for ``model``: its prior, or a sampler
    fitted on the training split of the run's data (``datamodule``, else built from
    ``run_cfg.data``), saved beside ``cfg.ckpt_path`` and reused. ``model.sample`` draws
    from it afterwards."""
    spec = cfg.get("sampler") or {"name": "prior"}  # a config composed before samplers existed
    ckpt = weights_file(local_checkpoint(cfg.ckpt_path))  # a file, or an export's weights

    def batches():  # only read when the sampler is fitted
        data = datamodule if datamodule is not None else instantiate(run_cfg.data)
        return data.loader(data.dataset("train"), shuffle=False, drop_last=False)

    sampler = load_or_fit(model, spec, ckpt, batches, device)
    sample_through(model, sampler)
    return sampler


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_choice("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise GenlabError("device=cuda: no CUDA device is available")
    return torch.device(name)


def sample(cfg: DictConfig) -> list[Path]:
    """Write every grid for ``cfg.ckpt_path`` into ``cfg.output_dir``; returns the PNG paths."""
    check_sample(cfg)
    run_cfg, model = load_model(cfg.ckpt_path, trust=cfg.trust_checkpoint)
    if cfg.get("data_root"):
        run_cfg.data.root = cfg.data_root
    if cfg.get("data_storage_options") is not None:  # saved configs hold it redacted
        run_cfg.data.storage_options = cfg.data_storage_options
    if cfg.truncation != 1:
        set_truncation(model, cfg.truncation)
        log.info(f"truncation psi={cfg.truncation}")
    device = pick_device(cfg.device)
    model.to(device)
    sampler = latent_sampler(cfg, run_cfg, model, device)
    ends = None if sampler.name == "prior" else lambda n: sampler.latents(n, device)
    torch.manual_seed(cfg.seed)
    steps = cfg.interpolation.steps
    grids: dict[str, tuple[Tensor, int]] = {}
    with torch.no_grad():
        grids["samples"] = (model.sample(cfg.num_samples), cfg.nrow)
        # discrete-latent models (VQ-VAE, its prior) have no continuous latent to interpolate
        count = cfg.interpolation.count
        paths = interpolations(model, count, steps, ends) if model.latent_dim else {}
        for name, images in paths.items():
            grids[f"interpolation_{name}"] = (images, steps)
        if model.num_classes:
            grids["classes"] = (class_rows(model, cfg.nrow), cfg.nrow)
        if hasattr(model, "reconstruct") and cfg.reconstructions:
            x, labels = real_images(run_cfg, 4 * cfg.nrow)
            x, labels = x.to(model.device), labels.to(model.device)
            grids["reconstructions"] = (reconstruction_rows(model, x, labels, cfg.nrow), cfg.nrow)
    if cfg.get("nearest"):
        grids["nearest"] = (nearest_rows(cfg, run_cfg, model), cfg.nrow)
    paths = []
    for name, (images, nrow) in grids.items():
        path = Path(cfg.output_dir) / f"{name}.png"
        save_png(grid_uint8(images, nrow), path)
        paths.append(path)
        log.info(f"wrote {path}")
    return paths
