"""genlab-eval: a checkpoint's FID/IS/KID and (VAE) NLL on a chosen split; writes metrics.json.

The scoring lives in ``genlab.evaluation``, imported only once the config is good: ``--help``,
``--cfg job`` and config errors (a missing checkpoint file too) answer without loading torch.
"""

import hydra
from omegaconf import DictConfig, ListConfig

from genlab.checkpoints import require_checkpoint
from genlab.cli.report import report_errors, run_task
from genlab.config import CONFIG_DIR, check_split, check_types, sampler_settings
from genlab.console import quiet_libraries
from genlab.errors import GenlabError

TYPES = {
    "ckpt_path": (str,),
    "trust_checkpoint": (bool,),
    "seed": (int,),
    "nll_k": (int,),
    "seeds": (int,),
    "truncation": (int, float),
    "metrics.num_samples": (int, type(None)),
    "ema.sigma_rel": (int, float, type(None)),
    "ema.images": (int, type(None)),
    "ema.save_best": (bool,),
    "save_samples": (bool,),
}


def task(cfg: DictConfig) -> None:
    """Check what needs no torch, then score (``genlab.evaluation.evaluate``)."""
    check_types(cfg, TYPES)
    if cfg.seeds < 1:
        raise GenlabError(f"seeds={cfg.seeds} must be >= 1 (the number of sample sets scored)")
    check_split(cfg.get("split"))
    check_posthoc(cfg.get("ema") or {})
    if cfg.save_samples and "_target_" not in (cfg.get("metrics") or {}):
        raise GenlabError(
            "save_samples=true saves the samples the metrics score, and metrics=none scores "
            "none: drop metrics=none, or draw images with genlab-sample num_samples=N"
        )
    check_sampler(cfg)
    require_checkpoint(cfg.ckpt_path)
    quiet_libraries()  # filters on Lightning's loggers, set before it logs anything
    from genlab.evaluation import evaluate

    evaluate(cfg)


def check_sampler(cfg: DictConfig) -> None:
    """A fitted sampler's settings, and something for it to sample: the sample metrics, and the
    checkpoint's own weights (it is fitted on them, not on a post-hoc EMA profile's)."""
    name = sampler_settings(cfg.sampler)["name"]
    if name == "prior":
        return
    if "_target_" not in (cfg.get("metrics") or {}):
        raise GenlabError(
            f"sampler={name} draws the samples the metrics score, and metrics=none scores none: "
            "drop metrics=none (or sampler=)"
        )
    ema = cfg.get("ema") or {}
    if ema.get("sigma_rel") is not None or ema.get("sweep"):
        raise GenlabError(
            f"sampler={name} is fitted on the checkpoint's weights, not on a post-hoc EMA "
            "profile's: drop ema.sigma_rel/ema.sweep, or save the profile (ema.save_best=true) "
            "and evaluate that checkpoint"
        )


def check_posthoc(ema: DictConfig) -> None:
    """ema.sigma_rel and ema.sweep: numbers, not both."""
    sweep = ema.get("sweep") or []
    if not isinstance(sweep, ListConfig | list) or not all(
        isinstance(s, int | float) and not isinstance(s, bool) for s in sweep
    ):
        raise GenlabError(f"ema.sweep={sweep} must be a list of numbers, e.g. [0.05,0.1]")
    if sweep and ema.get("sigma_rel") is not None:
        raise GenlabError("ema.sigma_rel and ema.sweep are exclusive: set one")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _main(cfg: DictConfig) -> None:
    run_task(task, cfg, "genlab-eval")


def main() -> None:
    """Console entry point ``genlab-eval``."""
    report_errors(_main, "genlab-eval")


if __name__ == "__main__":
    main()
