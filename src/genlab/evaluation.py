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
from genlab.checkpoints import load_model
from genlab.config import check_split, instantiate
from genlab.errors import GenlabError
from genlab.loggers import evaluated_run, finish_evaluation
from genlab.metrics import file_sha256
from genlab.models.vae import VAE
from genlab.sampling import set_truncation
from genlab.training import flat_config, prepare_wandb

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


def score_split(datamodule: Any, split: str) -> int:
    """Point the datamodule's validation loader at ``split``; returns the split's size."""
    dataset = datamodule.dataset(split)
    # the sample metrics read trainer.datamodule, so the datamodule stays what validate() gets;
    # a partial, not a lambda, so that ddp_spawn can pickle it
    datamodule.val_dataloader = partial(datamodule.loader, dataset, shuffle=False, drop_last=False)
    return len(dataset)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path``; returns what metrics.json holds (written by rank 0)."""
    check_split(cfg.get("split"))
    run_cfg, model = load_model(cfg.ckpt_path)
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
    datamodule = instantiate(run_cfg.data)
    if is_vae:
        model.hparams.nll_k = cfg.nll_k
        model.hparams.binarized = bool(datamodule.binarize)  # the data scored, whatever the run
    out_dir = Path(cfg.paths.output_dir)
    metrics = sample_metrics(cfg, run_cfg, out_dir)
    split = eval_split(cfg.get("split"), datamodule)
    split_size = score_split(datamodule, split)
    with open_dict(cfg):
        evaluated = evaluated_run(cfg, run_cfg)  # joins the training run's W&B group
        prepare_wandb(cfg)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = [metrics] if metrics is not None else []
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    pl.seed_everything(cfg.seed, workers=True)
    results, scored = {}, False
    try:
        for logger in loggers:
            flat = {**flat_config(cfg), **evaluated}
            logger.log_hyperparams(flat if isinstance(logger, WandbLogger) else {})
        trainer.validate(model, datamodule=datamodule, verbose=False)
        results = dict(metrics.results) if metrics is not None else {}
        scored = True
    finally:
        if loggers and "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                values = {k: float(v) for k, v in trainer.callback_metrics.items()}
                wandb.run.summary.update({"eval/" + k: v for k, v in {**values, **results}.items()})
            if not scored:
                wandb.finish(exit_code=1)  # else after metrics.json, its artifact logged
    # the sample metrics come from the callback at full precision; the rest from the val loop
    logged = metrics.logged_keys() if metrics is not None else set()
    values = {k: float(v) for k, v in trainer.callback_metrics.items() if k not in logged}
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    result = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "model": run_cfg.model._target_,
        "metrics": {**results, **values},
        "protocol": {
            **(sample_protocol(cfg, metrics, model) if metrics is not None else {}),
            "eval_split": split,  # the split of the val loop: val/nll, val/elbo, val/swd, ...
            "eval_split_size": split_size,
            "reference_data": data_key(datamodule),
            "seed": cfg.seed,
            "vae_nll_k": cfg.nll_k if is_vae else None,
            "vae_likelihood": model.hparams.likelihood if is_vae else None,
            "genlab": genlab.__version__,
            "pytorch_lightning": pl.__version__,
        },
    }
    if metrics is not None and len(metrics.per_seed) > 1:
        result.update(seed_table(metrics.per_seed, cfg.metrics.seed))
    if trainer.is_global_zero:
        atomic_json(result, out_dir / "metrics.json")
        log.info(f"wrote {out_dir / 'metrics.json'}: {json.dumps(result['metrics'])}")
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
        "sampling_generator": "ema" if getattr(model, "generator_ema", None) else "raw",
        "truncation_psi": cfg.truncation,
        "seeds": len(metrics.per_seed) or 1,
        **({"ppl": metrics.ppl.protocol()} if metrics.ppl is not None else {}),
    }
