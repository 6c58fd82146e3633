"""genlab-sample: sample grids, latent interpolations, per-class rows and VAE reconstructions.

The sampling lives in ``genlab.sampling``, imported only once the config is good: ``--help``,
``--cfg job`` and config errors (a missing checkpoint file too) answer without loading torch.
"""

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from genlab.config import CONFIG_DIR, check_types, report_errors, require_file, run_task
from genlab.console import quiet_libraries
from genlab.errors import GenlabError

DEVICES = ("auto", "cpu", "cuda")
# each count and the least value that still makes a grid
COUNTS = {"num_samples": 1, "nrow": 1, "interpolation.count": 1, "interpolation.steps": 2}


def check(cfg: DictConfig) -> None:
    """Raise GenlabError naming the first value that cannot make a grid."""
    check_types(cfg, {"ckpt_path": (str,), "seed": (int,)} | {k: (int,) for k in COUNTS})
    check_types(cfg, {"truncation": (int, float)})
    for key, least in COUNTS.items():
        value = OmegaConf.select(cfg, key)
        if value < least:
            raise GenlabError(f"{key}={value} must be >= {least}")
    if cfg.device not in DEVICES:
        raise GenlabError(f"device={cfg.device!r} is not one of {', '.join(DEVICES)}")


def task(cfg: DictConfig) -> None:
    """Check what needs no torch, then write the grids (``genlab.sampling.sample``)."""
    check(cfg)
    require_file(cfg.ckpt_path)
    quiet_libraries()  # filters on Lightning's loggers, set before it logs anything
    from genlab.sampling import sample

    sample(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def _main(cfg: DictConfig) -> None:
    run_task(task, cfg, "genlab-sample")


def main() -> None:
    """Console entry point ``genlab-sample``."""
    report_errors(_main, "genlab-sample")


def __getattr__(name: str) -> Any:
    """``from genlab.sample import lerp`` keeps working: the names moved to genlab.sampling."""
    if name.startswith("__"):
        raise AttributeError(name)
    import genlab.sampling

    return getattr(genlab.sampling, name)


if __name__ == "__main__":
    main()
