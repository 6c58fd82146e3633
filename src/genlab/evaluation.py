"""What genlab-eval runs: a checkpoint's FID/IS/KID and (VAE) NLL on a split, to metrics.json.

Imported by the entry point (``genlab.cli.eval``) only once Hydra has composed a valid config.
"""

import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict
from pytorch_lightning.loggers import WandbLogger

import genlab
from genlab.atomic import atomic_json
from genlab.callbacks.sample_features import data_key
from genlab.checkpoints import load_model, local_checkpoint, weights_file
from genlab.config import check_split, instantiate
from genlab.errors import GenlabError
from genlab.keys import MAXIMISED
from genlab.loggers import evaluated_run, finish_evaluation
from genlab.metrics import file_sha256
from genlab.models import posthoc_ema as phema
from genlab.models.vae import VAE
from genlab.sampling import latent_sampler, set_truncation
from genlab.training import flat_config, instantiate_trainer, prepare_wandb

log = logging.getLogger("genlab")


def eval_split(split: str | None, datamodule: Any) -> str:
    """The split the validation loop scores: test where the source has an official one, else val."""
    has_test = datamodule.has_test_split
    if split == "test" and not has_test:
        log.warning(
            f"split=test: data.source={datamodule.source} has no official test split; "
            "scoring the val split"
        )
    if split is None or split == "test":
        return "test" if has_test else "val"
    return split


def fid_reference_split(cfg: DictConfig, run_cfg: DictConfig) -> str:
    """FID's real split: ``split=``, else eval's ``metrics.reference_split``, else the run's."""
    recipe = (run_cfg.get("metrics") or {}).get("reference_split")
    return cfg.get("split") or cfg.metrics.get("reference_split") or recipe or "train"


def sample_metrics(cfg: DictConfig, run_cfg: DictConfig, out_dir: Path) -> Any:
    """The SampleMetrics callback of ``cfg.metrics``, or None for ``metrics=none``."""
    if "_target_" not in cfg.metrics:
        return None
    save_dir = str(out_dir / "samples") if cfg.save_samples else None
    # no weights: a one-line error
    return instantiate(
        cfg.metrics,
        save_dir=save_dir,
        reference_split=fid_reference_split(cfg, run_cfg),
        seeds=cfg.get("seeds", 1),
    )


def fit_device(cfg: DictConfig) -> torch.device:
    """Where a sampler is fitted: CUDA when the trainer may use it and one is there."""
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def score_split(datamodule: Any, split: str) -> int:
    """Point the datamodule's validation loader at ``split``; returns the split's size."""
    dataset = datamodule.dataset(split)
    # the sample metrics read trainer.datamodule, so the datamodule stays what validate() gets;
    # a partial, not a lambda, so that ddp_spawn can pickle it
    datamodule.val_dataloader = partial(datamodule.loader, dataset, shuffle=False, drop_last=False)
    return len(dataset)


def scored_size(trainer: pl.Trainer, datamodule: Any, split_size: int) -> int:
    """How many images of the split the val loop scored: ``trainer.limit_val_batches`` cuts it."""
    batches = sum(trainer.num_val_batches)  # per rank; the last batch is partial only at the end
    return min(split_size, batches * datamodule.batch_size * trainer.world_size)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path``; returns what metrics.json holds (written by rank 0)."""
    check_split(cfg.get("split"))
    run_cfg, model = load_model(cfg.ckpt_path, trust=cfg.trust_checkpoint)
    if cfg.truncation != 1:
        set_truncation(model, cfg.truncation)
    is_vae = isinstance(model, VAE)
    # autoencoders (VAE, VQ-VAE and its prior) score reconstructions and likelihoods themselves
    if not hasattr(model, "reconstruct") and "_target_" not in cfg.metrics:
        raise GenlabError(
            "metrics=none leaves nothing to evaluate for a GAN (it has no likelihood): "
            "use metrics=default or metrics=fid"
        )
    if cfg.get("data_root"):
        run_cfg.data.root = cfg.data_root
    if cfg.get("data_storage_options") is not None:  # saved configs hold it redacted
        run_cfg.data.storage_options = cfg.data_storage_options
    datamodule = instantiate(run_cfg.data)
    if is_vae:
        model.hparams.nll_k = cfg.nll_k
        model.hparams.binarized = bool(datamodule.binarize)  # the data scored, whatever the run
    # the scored samples (model.sample) decode the sampler's latents from here on
    sampler = latent_sampler(cfg, run_cfg, model, fit_device(cfg), datamodule)
    out_dir = Path(cfg.paths.output_dir)
    metrics = sample_metrics(cfg, run_cfg, out_dir)
    split = eval_split(cfg.get("split"), datamodule)
    split_size = score_split(datamodule, split)
    with open_dict(cfg):
        evaluated = evaluated_run(cfg, run_cfg)  # joins the training run's W&B group
        prepare_wandb(cfg)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = [metrics] if metrics is not None else []
    trainer = instantiate_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    profiles, reference = posthoc_profiles(cfg, model)  # fails before anything is scored
    scores, posthoc, scored = {}, None, False
    try:
        for logger in loggers:
            flat = {**flat_config(cfg), **evaluated}
            logger.log_hyperparams(flat if isinstance(logger, WandbLogger) else {})
        if profiles is None:
            scores = score(cfg, trainer, model, datamodule, metrics)
        else:
            rows = []
            for terms, info in profiles:
                apply_profile(model, terms, reference)
                rows.append({**info, "metrics": score(cfg, trainer, model, datamodule, metrics)})
            posthoc, best = best_profile(rows, cfg.ema.get("best_by"), model)
            scores = rows[best]["metrics"]
            if best != len(rows) - 1:  # the model holds the best profile (save_best, W&B grid)
                apply_profile(model, profiles[best][0], reference)
        scored = True
    finally:
        if loggers and "wandb" in sys.modules:
            import wandb

            if wandb.run is not None and scored:
                wandb.run.summary.update({"eval/" + k: v for k, v in scores.items()})
            if not scored:
                wandb.finish(exit_code=1)  # else after metrics.json, its artifact logged
    ckpt = weights_file(local_checkpoint(cfg.ckpt_path)).resolve()  # a file, an export's weights
    result = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "model": run_cfg.model._target_,
        "metrics": scores,
        **({"posthoc_ema": posthoc} if posthoc else {}),
        "protocol": {
            **(sample_protocol(cfg, metrics, model) if metrics is not None else {}),
            "sampler": sampler.record,  # what the sample metrics' latents came from
            "eval_split": split,  # the split of the val loop: val/nll, val/elbo, val/swd, ...
            "eval_split_size": split_size,
            "eval_split_scored": scored_size(trainer, datamodule, split_size),
            "reference_data": data_key(datamodule),
            "seed": cfg.seed,
            "vae_nll_k": cfg.nll_k if is_vae else None,
            "vae_likelihood": model.hparams.likelihood if is_vae else None,
            "genlab": genlab.__version__,
            "pytorch_lightning": pl.__version__,
        },
    }
    swept = posthoc is not None and "profiles" in posthoc  # per_seed is the last profile's
    if metrics is not None and len(metrics.per_seed) > 1 and not swept:
        result.update(seed_table(metrics.per_seed, cfg.metrics.seed))
    if trainer.is_global_zero:
        atomic_json(result, out_dir / "metrics.json")
        log.info(f"wrote {out_dir / 'metrics.json'}: {json.dumps(result['metrics'])}")
        if posthoc and cfg.ema.get("save_best"):
            save_profile(ckpt, model, posthoc, out_dir / "posthoc_ema.ckpt")
    finish_evaluation(out_dir / "metrics.json", result, metrics, datamodule, model)
    return result


def seed_table(per_seed: list[dict[str, float]], first: int) -> dict[str, Any]:
    """EDM2's report of independent sample sets: each one's numbers, then per metric the
    minimum, mean and sample standard deviation over the sets."""
    seeds = [{"seed": first + i, **values} for i, values in enumerate(per_seed)]
    over = {}
    for key in per_seed[0]:
        if key in ("n_real", "n_fake"):
            continue
        v = torch.tensor([values[key] for values in per_seed], dtype=torch.float64)
        over[key] = {"min": float(v.min()), "mean": float(v.mean()), "std": float(v.std())}
    return {"per_seed": seeds, "over_seeds": over}


def sample_protocol(cfg: DictConfig, metrics: Any, model: Any) -> dict[str, Any]:
    """How the sample metrics were computed: feature extractor, reference split and counts."""
    return {
        **metrics.image_metrics.protocol(),
        **metrics.reference,  # split and n_real of FID's real images
        "n_fake": metrics.num_samples,
        "sample_seed": cfg.metrics.seed,
        "sampling_generator": sampling_generator(cfg, model),
        "truncation_psi": cfg.truncation,
        "seeds": len(metrics.per_seed) or 1,
        **({"ppl": metrics.ppl.protocol()} if metrics.ppl is not None else {}),
    }


def score(cfg: DictConfig, trainer: pl.Trainer, model: Any, datamodule: Any, metrics: Any) -> dict:
    """One validation run: the sample metrics (full precision) and the val loop's values."""
    pl.seed_everything(cfg.seed, workers=True)  # each profile of a sweep sees the same draws
    trainer.validate(model, datamodule=datamodule, verbose=False)
    results = dict(metrics.results) if metrics is not None else {}
    logged = metrics.logged_keys() if metrics is not None else set()
    values = {k: float(v) for k, v in trainer.callback_metrics.items() if k not in logged}
    return {**results, **values}


def sampling_generator(cfg: DictConfig, model: Any) -> str:
    """What sampled: a post-hoc EMA profile, the EMA generator or the raw one."""
    if cfg.get("ema") and (cfg.ema.get("sigma_rel") is not None or cfg.ema.get("sweep")):
        return "posthoc_ema"
    return "ema" if getattr(model, "generator_ema", None) else "raw"


def posthoc_profiles(cfg: DictConfig, model: Any) -> tuple[list | None, dict | None]:
    """The (terms, info) of each asked post-hoc EMA profile and the model's sampling state they
    replace; (None, None) when none is asked. Every profile is checked here, before scoring."""
    ema = cfg.get("ema") or {}
    sigmas = [ema.sigma_rel] if ema.get("sigma_rel") is not None else list(ema.get("sweep") or [])
    if not sigmas:
        return None, None
    key = "ema.sigma_rel" if ema.get("sigma_rel") is not None else "ema.sweep"
    if not hasattr(model, "sampling_state"):
        raise GenlabError(f"{key}: {type(model).__name__} names no sampling_state to rebuild")
    run = Path(cfg.ckpt_path).expanduser().resolve().parent.parent
    folder = Path(ema.get("snapshots") or run / "ema_snapshots").expanduser()
    snapshots = phema.read_snapshots(folder)
    name = phema.model_name(model)
    other = next((s for s in snapshots if s.model != name), None)
    if other is not None:
        raise GenlabError(f"ema.snapshots: {other.path} was written by {other.model}, not {name}")
    profiles = [phema.plan(snapshots, float(s), ema.get("images"), key=key) for s in sigmas]
    return profiles, phema.sampling_tensors(model)


def best_profile(rows: list[dict], best_by: str | None, model: Any) -> tuple[dict, int]:
    """The sweep's record: its rows, the best marked by ``best_by`` (default: the model's
    monitor, else its fallback) with its direction."""
    if len(rows) == 1:  # its numbers are metrics.json's own
        return {k: v for k, v in rows[0].items() if k != "metrics"}, 0
    names = rows[0]["metrics"]
    monitors = [type(model).default_monitor, type(model).fallback_monitor]
    candidates = [best_by] if best_by else monitors
    found = next((k for c in candidates for k in (c, c.removeprefix("val/")) if k in names), None)
    if found is None:
        raise GenlabError(f"ema.best_by={best_by}: not among the scores ({', '.join(names)})")
    sign = -1 if found in MAXIMISED or f"val/{found}" in MAXIMISED else 1
    best = min(range(len(rows)), key=lambda i: sign * rows[i]["metrics"][found])
    for i, row in enumerate(rows):
        row["best"] = i == best
    return {"best_by": found, "best_sigma_rel": rows[best]["sigma_rel"], "profiles": rows}, best


def apply_profile(model: Any, terms: list, reference: dict) -> None:
    """Rebuild a post-hoc EMA profile from its snapshot ``terms`` and sample through it."""
    state = phema.reconstruct(terms, reference, "ema.snapshots")
    if hasattr(model, "load_posthoc"):  # a GAN: into the sampling generator, standing stats
        model.load_posthoc(state)
    else:
        model.load_state_dict(state, strict=False)


def save_profile(ckpt: Path, model: Any, posthoc: dict, path: Path) -> None:
    """The sampling profile as a checkpoint genlab-eval and genlab-sample read (no optimiser,
    no loop state: it does not resume)."""
    from genlab.atomic import atomic_torch_save
    from genlab.checkpoints import read_checkpoint

    if hasattr(model, "sampling_generator"):
        model.sampling_generator  # noqa: B018 -- standing statistics into the saved buffers
    saved = read_checkpoint(str(ckpt))
    keep = ("genlab_config", "hyper_parameters", "pytorch-lightning_version", "epoch")
    out = {k: saved[k] for k in keep if k in saved}
    out["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out["posthoc_ema"] = {k: v for k, v in posthoc.items() if k != "profiles"}
    atomic_torch_save(out, path)
    sigma = posthoc.get("best_sigma_rel", posthoc.get("sigma_rel"))
    log.info(f"wrote {path}: the post-hoc EMA profile sigma_rel={sigma}")
