"""genlab-prepare: decode, convert and resize a source once into memory-mapped uint8 arrays.

The writing lives in ``genlab.preparation``, imported only once the config is good: ``--help``
and config errors answer without loading torch.
"""

import hydra
from omegaconf import DictConfig

from genlab.cli.report import report_errors, run_task
from genlab.config import CONFIG_DIR, check_prepare

PROG = "genlab-prepare"


def task(cfg: DictConfig) -> None:
    """Check what needs no torch, then write ``cfg.out`` (``genlab.preparation.prepare``)."""
    check_prepare(cfg)
    from genlab.preparation import prepare

    prepare(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prepare")
def _main(cfg: DictConfig) -> None:
    run_task(task, cfg, PROG)


def main() -> None:
    """Console entry point ``genlab-prepare``."""
    report_errors(_main, PROG)


if __name__ == "__main__":
    main()
