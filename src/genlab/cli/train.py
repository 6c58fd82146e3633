"""genlab-train: compose the config, check what is cheap to check, then build and fit.

The building and fitting live in ``genlab.training``, imported only once the config is good:
``--help``, ``--cfg job`` and config errors answer without loading torch or Lightning.
"""

import hydra
from omegaconf import DictConfig

from genlab.checkpoints import require_file
from genlab.cli.report import report_errors, run_task
from genlab.config import CONFIG_DIR, check_training, check_types
from genlab.console import quiet_libraries

NONE = type(None)
# Top-level keys whose wrong type would otherwise surface as a traceback deep in Lightning.
TYPES = {
    "seed": (int,),
    "ckpt_path": (str, NONE),
    "auto_resume": (bool, NONE),
    "trust_checkpoint": (bool,),
    "optimized_metric": (str, NONE),
    "trainer.max_epochs": (int, NONE),
    "trainer.max_steps": (int, NONE),
}


def check(cfg: DictConfig) -> None:
    """Config errors that need no torch: value types, settings the model cannot take, and a
    missing ``ckpt_path`` file."""
    check_types(cfg, TYPES)
    check_training(cfg)
    if cfg.get("ckpt_path"):
        require_file(cfg.ckpt_path)


def task(cfg: DictConfig) -> float:
    """Check, then train (``genlab.training.train``); returns the monitored metric."""
    check(cfg)
    quiet_libraries()  # filters on Lightning's loggers, set before it logs anything
    from genlab.training import train

    return train(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _main(cfg: DictConfig) -> float:
    return run_task(task, cfg, "genlab-train")


def main() -> None:
    """Console entry point ``genlab-train``."""
    report_errors(_main, "genlab-train")


if __name__ == "__main__":
    main()
