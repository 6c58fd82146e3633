"""Reading genlab checkpoints: weights only, a one-line error for a bad file, and the saved run
config with its ``_target_``s mapped to where those classes live today.

Imports torch only inside the functions: entry points check ``ckpt_path`` before torch loads.
"""

import pickle
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genlab.config import instantiate
from genlab.errors import GenlabError

# Every class a checkpoint's saved config may name under an earlier home, and its home today.
# Checkpoints written by earlier versions load through it (tests/fixtures/v0.1-layout).
MOVED = {
    "genlab.gan.GAN": "genlab.models.gan.GAN",
    "genlab.vae.VAE": "genlab.models.vae.VAE",
    "genlab.callbacks.ImageGrid": "genlab.callbacks.images.ImageGrid",
    "genlab.callbacks.LastCheckpoint": "genlab.callbacks.checkpointing.LastCheckpoint",
    "genlab.callbacks.SampleMetrics": "genlab.callbacks.sample_metrics.SampleMetrics",
}


def current_targets(node: Any) -> Any:
    """A saved config (plain dicts and lists) with each moved ``_target_`` at its home today."""
    if isinstance(node, dict):
        return {
            k: MOVED.get(v, v) if k == "_target_" and isinstance(v, str) else current_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [current_targets(v) for v in node]
    return node


def require_file(path: str, key: str = "ckpt_path") -> None:
    """A missing checkpoint fails in one line, checked before torch is imported."""
    if not Path(path).is_file():
        raise GenlabError(f"{key}={path}: no such checkpoint file")


def read_checkpoint(ckpt_path: str, key: str = "ckpt_path") -> dict:
    """A Lightning checkpoint as a dict (weights only, no pickled code), or a one-line error.

    Its saved run config (``genlab_config``) names today's homes of the classes it builds.
    """
    import torch

    require_file(ckpt_path, key)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler names the class it refused; a damaged file names none
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            reason = "UnpicklingError"
            raise GenlabError(f"{key}={ckpt_path}: not a readable checkpoint ({reason})") from None
        raise GenlabError(
            f"{key}={ckpt_path}: holds pickled code ({found.group(1)}), which could run on load; "
            "genlab reads checkpoints with weights_only=True"
        ) from None
    except Exception as e:  # truncated file, not a torch file
        reason = type(e).__name__
        raise GenlabError(f"{key}={ckpt_path}: not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise GenlabError(f"{key}={ckpt_path}: not a Lightning checkpoint (no state_dict)")
    if isinstance(ckpt.get("genlab_config"), dict):
        ckpt["genlab_config"] = current_targets(ckpt["genlab_config"])
    return ckpt


def load_model(ckpt_path: str, key: str = "ckpt_path") -> tuple[DictConfig, Any]:
    """Rebuild a trained module from a genlab checkpoint: its saved config, then its weights.

    Returns the run's resolved config and the module (on CPU, eval mode).
    """
    from omegaconf import OmegaConf

    ckpt = read_checkpoint(ckpt_path, key)
    if "genlab_config" not in ckpt:
        raise GenlabError(f"{key}={ckpt_path}: not a genlab checkpoint (no saved run config)")
    cfg = OmegaConf.create(ckpt["genlab_config"])
    model = instantiate(cfg.model, _convert_="object")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        msg = f"{key}={ckpt_path}: weights do not fit the saved model config ({first})"
        raise GenlabError(msg) from None
    return cfg, model.eval()


def check_checkpoint(ckpt_path: str, model: Any, key: str = "ckpt_path") -> dict:
    """The checkpoint; fails in one line when it is unreadable or was saved by another model."""
    ckpt = read_checkpoint(ckpt_path, key)
    saved = ckpt.get("genlab_config", {}).get("model", {}).get("_target_", "another model")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    got = {k: v.shape for k, v in ckpt["state_dict"].items()}
    if expected != got:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise GenlabError(
            f"{key}={ckpt_path}: saved by {saved} with different weights than this "
            f"{type(model).__name__} config (first mismatch: {diff[0]})"
        )
    return ckpt
