"""Reading genlab checkpoints: weights only, a one-line error for a bad file, and the saved run
config with its ``_target_``s mapped to where those classes live today.

Imports torch only inside the functions: entry points check ``ckpt_path`` before torch loads.
"""

import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genlab.config import HUB_ID, instantiate
from genlab.errors import GenlabError, first_line

# The networks genlab ships (genlab.nets re-exports the first group; the VQ family is addressed
# by its module, as conf/model/vq*.yaml does)
NETS = (
    "BigGANDiscriminator", "BigGANGenerator", "ConvDecoder", "ConvEncoder",
    "DCGANDiscriminator", "DCGANGenerator", "HierarchicalDecoder", "HierarchicalEncoder",
    "MLPDiscriminator", "MLPGenerator", "R3GANDiscriminator", "R3GANGenerator",
    "ResNetDiscriminator", "ResNetGenerator", "StyleGAN2Discriminator", "StyleGAN2Generator",
)  # fmt: skip
VQ_NETS = ("GatedPixelCNN", "PatchDiscriminator", "VQDecoder", "VQEncoder", "VectorQuantizer")
TAMING_NETS = ("TamingDecoder", "TamingEncoder")  # VQGAN's, as conf/model/vq_nets/taming.yaml
# torch classes a config may swap in: they take numbers and parameters, and run no code of theirs
OPTIMIZERS = ("Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "SGD")
SCHEDULERS = ("ConstantLR", "CosineAnnealingLR", "ExponentialLR", "LinearLR", "MultiStepLR",
              "PolynomialLR", "StepLR")  # fmt: skip
CURRENT = (
    "genlab.models.gan.GAN", "genlab.models.vae.VAE", "genlab.models.vqvae.VQVAE",
    "genlab.models.vqgan.VQGAN", "genlab.models.vq_prior.VQPrior", "genlab.data.ImageDataModule",
    "genlab.data.streaming.StreamingDataModule",
    "genlab.callbacks.sample_metrics.SampleMetrics", "genlab.callbacks.images.ImageGrid",
    "genlab.callbacks.checkpointing.LastCheckpoint",
    *(f"genlab.models.vae_objectives.{name}" for name in ("TCVAE", "FactorVAE", "InfoVAE", "WAE")),
    "genlab.nets.latent.LatentDiscriminator",
    *(f"genlab.nets.{name}" for name in NETS), *(f"genlab.nets.vq.{name}" for name in VQ_NETS),
    *(f"genlab.nets.taming.{name}" for name in TAMING_NETS),
    "genlab.models.ladder.LadderVAE",
    *(f"genlab.nets.ladder.Ladder{n}" for n in ("Encoder", "Decoder")),
    *(f"torch.optim.{name}" for name in OPTIMIZERS),
    *(f"torch.optim.lr_scheduler.{name}" for name in SCHEDULERS),
)  # fmt: skip
# The one table of what a checkpoint's saved config may build: each name a checkpoint may hold,
# today's or an earlier layout's (tests/fixtures/v0.1-layout), and the class's home today.
# Anything else is refused before it is imported, unless the user passes trust_checkpoint=true.
TARGETS = {
    **{name: name for name in CURRENT},
    "genlab.gan.GAN": "genlab.models.gan.GAN",
    "genlab.vae.VAE": "genlab.models.vae.VAE",
    "genlab.callbacks.ImageGrid": "genlab.callbacks.images.ImageGrid",
    "genlab.callbacks.LastCheckpoint": "genlab.callbacks.checkpointing.LastCheckpoint",
    "genlab.callbacks.SampleMetrics": "genlab.callbacks.sample_metrics.SampleMetrics",
}
# genlab-export's folder, in the Hugging Face Hub layout; hf://org/name[@revision] names one there
EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.yaml"
HUB_SCHEME = "hf://"
# A VQ prior's export holds its VQ-VAE's export in this subfolder; its config's
# model.vqvae_ckpt names it
VQVAE_FOLDER = "vqvae"
BUILT = ("model", "data", "metrics")  # the nodes of a saved config that genlab-eval/-sample build
TRUST_SWITCH = "trust_checkpoint=true"
_trusted: ContextVar[bool] = ContextVar("genlab_trust_checkpoint", default=False)


@contextmanager
def trusting(trust: bool) -> Iterator[None]:
    """Within this block, checkpoints loaded (``model.vqvae_ckpt`` too) build any saved target."""
    token = _trusted.set(bool(trust))
    try:
        yield
    finally:
        _trusted.reset(token)


def current_targets(node: Any) -> Any:
    """A saved config (plain dicts and lists) with each moved ``_target_`` at its home today."""
    if isinstance(node, dict):
        return {
            k: TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else current_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [current_targets(v) for v in node]
    return node


def leaves(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) under ``node``; list items are ``key[i]``."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, f"{key}[{i}]")
    else:
        yield key, node


def check_saved_config(config: dict, source: str) -> None:
    """Refuse, in one line, a saved config that would build anything outside ``TARGETS``.

    Nothing is imported or called first. A resolver (``${oc.env:...}``) is refused too: genlab
    saves resolved configs, so one in a checkpoint was put there by hand.
    """
    for node in BUILT:
        for key, value in leaves(config.get(node), node):
            if key.endswith("._target_") and value in TARGETS:
                continue
            if key.endswith("._target_"):
                why = "a class genlab does not build from a checkpoint (it could run code)"
            elif isinstance(value, str) and "${" in value:
                why = "an interpolation, which genlab never saves (it could read the environment)"
            else:
                continue
            raise GenlabError(
                f"{source}: its saved config sets {key}={value}, {why}; "
                f"pass {TRUST_SWITCH} only if you trust this file"
            )


def hub_id(spec: str, key: str = "ckpt_path") -> tuple[str, str | None] | None:
    """``hf://org/name[@revision]`` -> (``org/name``, revision); None for a local path."""
    if not spec.startswith(HUB_SCHEME):
        return None
    found = HUB_ID.fullmatch(spec[len(HUB_SCHEME) :])
    if found is None:
        raise GenlabError(f"{key}={spec}: not a Hub id (hf://org/name or hf://org/name@revision)")
    return found["repo"], found["revision"]


def require_file(path: str, key: str = "ckpt_path") -> None:
    """A missing checkpoint file fails in one line, checked before torch is imported."""
    if Path(path).is_dir():
        raise GenlabError(f"{key}={path}: a directory, not a checkpoint file{listing(path)}")
    if not Path(path).is_file():
        raise GenlabError(f"{key}={path}: no such checkpoint file")


def listing(directory: str) -> str:
    """The checkpoints in ``directory`` (and its checkpoints/), for an error that names it."""
    root = Path(directory)
    found = sorted(str(p) for p in (*root.glob("*.ckpt"), *root.glob("checkpoints/*.ckpt")))
    if not found:
        return "; it holds no *.ckpt"
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return f"; the checkpoints in it: {', '.join(found[:5])}{more}"


def require_checkpoint(path: str, key: str = "ckpt_path") -> None:
    """A missing checkpoint fails in one line, checked before torch is imported.

    ``path`` is a checkpoint file, a ``genlab-export`` folder or ``hf://org/name[@revision]``.
    """
    if hub_id(path, key) is not None:
        return
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / EXPORT_WEIGHTS).is_file():
        raise GenlabError(
            f"{key}={path}: a directory, neither a checkpoint file nor a genlab-export folder "
            f"(no {EXPORT_WEIGHTS}){listing(path)}"
        )
    if not folder.exists():
        raise GenlabError(f"{key}={path}: no such checkpoint file")


def local_checkpoint(path: str, key: str = "ckpt_path") -> Path:
    """The file or export folder ``path`` names; a Hub id through huggingface_hub's cache
    (downloaded when online, read from the cache under ``HF_HUB_OFFLINE=1``)."""
    found = hub_id(path, key)
    if found is None:
        require_checkpoint(path, key)
        return Path(path).expanduser()
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GenlabError(
            f"{key}={path}: needs huggingface_hub (pip install genlab[hub])"
        ) from None
    repo, revision = found
    try:
        return Path(snapshot_download(repo, revision=revision))
    except Exception as e:  # offline and not cached, unknown repo, no such revision
        reason = first_line(e)
        raise GenlabError(
            f"{key}={path}: not in the Hub cache and not downloadable ({reason})"
        ) from None


def weights_file(path: Path) -> Path:
    """The file holding a checkpoint's weights: the file itself, or an export's safetensors."""
    return path / EXPORT_WEIGHTS if path.is_dir() else path


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


def load_model(
    ckpt_path: str, key: str = "ckpt_path", trust: bool = False
) -> tuple[DictConfig, Any]:
    """Rebuild a trained module from a genlab checkpoint: its saved config, then its weights.

    The saved config may build only the classes of ``TARGETS``, unless ``trust`` (or an
    enclosing ``trusting(True)``) vouches for the file. Returns the run's resolved config and
    the module (on CPU, eval mode).
    """
    from omegaconf import OmegaConf

    path = local_checkpoint(str(ckpt_path), key)
    ckpt = read_export(path, ckpt_path, key) if path.is_dir() else read_checkpoint(str(path), key)
    if not isinstance(ckpt.get("genlab_config"), dict):
        raise GenlabError(f"{key}={ckpt_path}: not a genlab checkpoint (no saved run config)")
    trust = trust or _trusted.get()
    if not trust:
        check_saved_config(ckpt["genlab_config"], f"{key}={ckpt_path}")
    cfg = OmegaConf.create(ckpt["genlab_config"])
    with trusting(trust):  # a checkpoint the user vouches for vouches for the ones it names
        model = instantiate(cfg.model, _convert_="object")
    try:
        if path.is_dir():
            load_exported(model, ckpt["state_dict"])
        else:
            model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        msg = f"{key}={ckpt_path}: weights do not fit the saved model config ({first})"
        raise GenlabError(msg) from None
    return cfg, model.eval()


def exported_state(model: Any) -> dict:
    """The state a model samples with, contiguous for safetensors: all of it but the
    discriminators, and but the raw generator when an EMA copy samples."""
    raw = ("generator.",) if "generator_ema" in dict(model.named_children()) else ()
    return {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if "discriminator" not in k.split(".") and not k.startswith(raw)
    }


def load_exported(model: Any, state: dict) -> None:
    """Load an export's state: every key ``exported_state`` keeps must be there, and fit."""
    expected = exported_state(model)
    missing = sorted(set(expected) - set(state))
    if missing or set(state) - set(expected):
        first = (missing or sorted(set(state) - set(expected)))[0]
        raise RuntimeError(f"the exported weights do not match the config at {first}")
    model.load_state_dict(state, strict=False)


def read_export(folder: Path, spec: str, key: str) -> dict:
    """A genlab-export folder as a checkpoint dict: its config and its safetensors weights."""
    import yaml
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = yaml.safe_load((folder / EXPORT_CONFIG).read_text())
        state = load_file(str(folder / EXPORT_WEIGHTS))
    except (OSError, yaml.YAMLError, SafetensorError) as e:
        reason = type(e).__name__
        raise GenlabError(f"{key}={spec}: not a readable genlab export ({reason})") from None
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and model.get("vqvae_ckpt") == VQVAE_FOLDER:
        model["vqvae_ckpt"] = str(folder / VQVAE_FOLDER)  # a VQ prior's bundled VQ-VAE
    return {"genlab_config": current_targets(config), "state_dict": state}


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
