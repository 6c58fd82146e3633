"""genlab-eval: a checkpoint's FID/IS/KID and (VAE) NLL on a chosen split; writes metrics.json.

The scoring lives in ``genlab.evaluation``, imported only once the config is good: ``--help``,
``--cfg job`` and config errors (a missing checkpoint file too) answer without loading torch.
"""

import hydra
from omegaconf import DictConfig

from genlab.checkpoints import require_file
from genlab.cli.report import report_errors, run_task
from genlab.config import CONFIG_DIR, check_split, check_types
from genlab.console import quiet_libraries
from genlab.errors import GenlabError

TYPES = {
    "ckpt_path": (str,),
    "seed": (int,),
    "nll_k": (int,),
    "seeds": (int,),
    "truncation": (int, float),
    "metrics.num_samples": (int, type(None)),
}


def task(cfg: DictConfig) -> None:
    """Check what needs no torch, then score (``genlab.evaluation.evaluate``)."""
    check_types(cfg, TYPES)
    if cfg.seeds < 1:
        raise GenlabError(f"seeds={cfg.seeds} must be >= 1 (the number of sample sets scored)")
    check_split(cfg.get("split"))
    require_file(cfg.ckpt_path)
    quiet_libraries()  # filters on Lightning's loggers, set before it logs anything
    from genlab.evaluation import evaluate

    evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _main(cfg: DictConfig) -> None:
    run_task(task, cfg, "genlab-eval")


def main() -> None:
    """Console entry point ``genlab-eval``."""
    report_errors(_main, "genlab-eval")


if __name__ == "__main__":
    main()
