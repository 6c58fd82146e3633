"""genlab-eval: score a checkpoint's samples with FID/IS/KID (VAE: also NLL); write metrics.json."""

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import WandbLogger

import genlab
from genlab.atomic import atomic_json
from genlab.callbacks.sample_metrics import data_key
from genlab.config import CONFIG_DIR, instantiate, load_model, report_errors, run_task
from genlab.metrics import file_sha256
from genlab.train import flat_config, prepare_wandb
from genlab.vae import VAE

log = logging.getLogger("genlab")

# eval writes next to the run it scores: RUN/checkpoints/x.ckpt -> RUN
OmegaConf.register_new_resolver(
    "genlab_run_dir",
    lambda ckpt: str(Path(ckpt).expanduser().resolve().parent.parent),
    replace=True,
)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path``; returns what metrics.json holds (written by rank 0)."""
    run_cfg, model = load_model(cfg.ckpt_path)
    if cfg.get("data_root"):
        run_cfg.data.root = cfg.data_root
    datamodule = instantiate(run_cfg.data)
    if isinstance(model, VAE):
        model.hparams.nll_k = cfg.nll_k
    out_dir = Path(cfg.paths.output_dir)
    save_dir = str(out_dir / "samples") if cfg.save_samples else None
    metrics = instantiate(cfg.metrics, save_dir=save_dir)  # no weights: a one-line error
    with open_dict(cfg):
        prepare_wandb(cfg)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=[metrics], logger=loggers or False)
    pl.seed_everything(cfg.seed, workers=True)
    try:
        for logger in loggers:
            logger.log_hyperparams(flat_config(cfg) if isinstance(logger, WandbLogger) else {})
        trainer.validate(model, datamodule=datamodule, verbose=False)
    finally:
        if loggers and "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.run.summary.update({"eval/" + k: v for k, v in metrics.results.items()})
            wandb.finish()
    # the sample metrics come from the callback at full precision; the rest from the val loop
    values = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k not in metrics.logged_keys()
    }
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    result = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "model": run_cfg.model._target_,
        "metrics": {**metrics.results, **values},
        "protocol": {
            **metrics.image_metrics.protocol(),
            **metrics.reference,
            "n_fake": metrics.num_samples,
            "reference_data": data_key(datamodule),
            "sample_seed": cfg.metrics.seed,
            "seed": cfg.seed,
            "sampling_generator": "ema" if getattr(model, "generator_ema", None) else "raw",
            "vae_nll_k": cfg.nll_k if isinstance(model, VAE) else None,
            "genlab": genlab.__version__,
            "pytorch_lightning": pl.__version__,
        },
    }
    if trainer.is_global_zero:
        atomic_json(result, out_dir / "metrics.json")
        log.info(f"wrote {out_dir / 'metrics.json'}: {json.dumps(metrics.results)}")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg, "genlab-eval")


def main() -> None:
    """Console entry point ``genlab-eval``."""
    report_errors(_main, "genlab-eval")


if __name__ == "__main__":
    main()
