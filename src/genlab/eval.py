"""genlab-eval: a checkpoint's FID/IS/KID and (VAE) NLL on a chosen split; writes metrics.json.

The scoring lives in ``genlab.evaluation``, imported only once the config is good: ``--help``,
``--cfg job`` and config errors (a missing checkpoint file too) answer without loading torch.
"""

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from genlab.config import CONFIG_DIR, check_types, report_errors, require_file, run_task
from genlab.console import quiet_libraries
from genlab.errors import GenlabError

# eval writes next to the run it scores: RUN/checkpoints/x.ckpt -> RUN (registered at import,
# before Hydra composes conf/eval.yaml)
OmegaConf.register_new_resolver(
    "genlab_run_dir",
    lambda ckpt: str(Path(ckpt).expanduser().resolve().parent.parent),
    replace=True,
)

SPLITS = ("train", "val", "test")
TYPES = {
    "ckpt_path": (str,),
    "seed": (int,),
    "nll_k": (int,),
    "truncation": (int, float),
    "metrics.num_samples": (int, type(None)),
}


def check_split(split: str | None) -> None:
    """Reject an unknown ``split`` before anything is loaded."""
    if split is not None and split not in SPLITS:
        raise GenlabError(
            f"split={split!r}: use train, val or test (null: test where the source has an "
            "official test split, else val)"
        )


def task(cfg: DictConfig) -> None:
    """Check what needs no torch, then score (``genlab.evaluation.evaluate``)."""
    check_types(cfg, TYPES)
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


def __getattr__(name: str) -> Any:
    """``from genlab.eval import evaluate`` keeps working: the names moved to genlab.evaluation."""
    if name.startswith("__"):
        raise AttributeError(name)
    import genlab.evaluation

    return getattr(genlab.evaluation, name)


if __name__ == "__main__":
    main()
