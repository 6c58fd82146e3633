"""genlab-export: a checkpoint as a Hugging Face Hub model folder (safetensors, card, samples).

The export lives in ``genlab.exporting``, imported only once the config is good: ``--help``,
``--cfg job`` and config errors (a missing checkpoint, a bad ``push_to``) answer without torch.
"""

import hydra
from omegaconf import DictConfig

from genlab.checkpoints import require_file
from genlab.cli.report import report_errors, run_task
from genlab.config import CONFIG_DIR, check_export, check_types
from genlab.console import quiet_libraries

TYPES = {"ckpt_path": (str,), "out": (str,), "trust_checkpoint": (bool,)}


def task(cfg: DictConfig) -> None:
    """Check what needs no torch, then export (``genlab.exporting.export``)."""
    check_types(cfg, TYPES)
    check_export(cfg)
    require_file(cfg.ckpt_path)
    quiet_libraries()
    from genlab.exporting import export

    export(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def _main(cfg: DictConfig) -> None:
    run_task(task, cfg, "genlab-export")


def main() -> None:
    """Console entry point ``genlab-export``."""
    report_errors(_main, "genlab-export")


if __name__ == "__main__":
    main()
