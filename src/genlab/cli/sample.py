"""genlab-sample: sample grids, latent interpolations, per-class rows and VAE reconstructions.

The sampling lives in ``genlab.sampling``, imported only once the config is good: ``--help``,
``--cfg job`` and config errors (a missing checkpoint file too) answer without loading torch.
"""

import hydra
from omegaconf import DictConfig

from genlab.checkpoints import require_checkpoint
from genlab.cli.report import report_errors, run_task
from genlab.config import CONFIG_DIR, check_sample
from genlab.console import quiet_libraries


def task(cfg: DictConfig) -> None:
    """Check what needs no torch, then write the grids (``genlab.sampling.sample``)."""
    check_sample(cfg)
    require_checkpoint(cfg.ckpt_path)
    quiet_libraries()  # filters on Lightning's loggers, set before it logs anything
    from genlab.sampling import sample

    sample(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def _main(cfg: DictConfig) -> None:
    run_task(task, cfg, "genlab-sample")


def main() -> None:
    """Console entry point ``genlab-sample``."""
    report_errors(_main, "genlab-sample")


if __name__ == "__main__":
    main()
