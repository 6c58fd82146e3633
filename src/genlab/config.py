"""The shipped configs: where they live, the resolvers they use, instantiation, and the checks of
their values that need no torch (entry points run them before anything heavy loads)."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from genlab.errors import GenlabError, check_choice, check_type

# a Hugging Face Hub repo id (org/name), with an optional @revision after it
HUB_ID = re.compile(r"(?P<repo>[\w][\w.-]*/[\w][\w.-]*)(?:@(?P<revision>[\w][\w./-]*))?")
SPLITS = ("train", "val", "test")  # genlab-eval split=
DEVICES = ("auto", "cpu", "cuda")  # genlab-sample device=
# genlab-sample: each count and the least value that still makes a grid
SAMPLE_COUNTS = {"num_samples": 1, "nrow": 1, "interpolation.count": 1, "interpolation.steps": 2}


def _config_dir() -> str:
    here = Path(__file__).resolve().parent
    # a wheel carries conf/ inside the package; an editable install reads the checkout's conf/
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"genlab's conf/ directory is missing next to {here}")


CONFIG_DIR = _config_dir()


def packed_channels(channels: int, pack: Any) -> int:
    """A packed discriminator's input channels: ``model.pack`` images of ``data.channels``."""
    if not (isinstance(pack, int) and not isinstance(pack, bool) and pack >= 1):
        raise GenlabError(f"model.pack={pack} must be an integer >= 1 (1 = no packing)")
    return channels * pack


def run_dir_of(ckpt: Any) -> str:
    """Where genlab-eval writes: RUN for RUN/checkpoints/x.ckpt, the folder of a genlab-export,
    outputs/hub/ORG/NAME for hf://ORG/NAME[@revision]; ``outputs`` for an unset ckpt_path (the
    task then says it is required, and the empty directory goes)."""
    if not isinstance(ckpt, str):
        return "outputs"
    if ckpt.startswith("hf://"):
        return str(Path("outputs", "hub", *ckpt[len("hf://") :].split("@")[0].split("/")))
    path = Path(ckpt).expanduser().resolve()
    return str(path if path.is_dir() else path.parent.parent)


# registered at import, before any entry point or test composes a config
OmegaConf.register_new_resolver("genlab_packed", packed_channels, replace=True)
OmegaConf.register_new_resolver("genlab_run_dir", run_dir_of, replace=True)


def instantiate(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose bad-value errors come out as one GenlabError.

    A constructor that rejects its config (GenlabError, or TypeError/ValueError such as a string
    where a number belongs or an unknown keyword) is reported with the config node it came from.
    """
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, GenlabError):
            raise cause from None
        if isinstance(cause, (TypeError, ValueError)):
            key = str(e).rsplit("full_key: ", 1)[-1].strip() if "full_key: " in str(e) else ""
            raise GenlabError(f"{key or 'config'}: {cause}") from None
        raise


def check_types(cfg: DictConfig, types: dict[str, tuple[type, ...]]) -> None:
    """Reject a value of the wrong type (``seed=abc``) by its key, before anything is built; a
    value that cannot be null and is unset (``???``) or null is named as required."""
    for key, wanted in types.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if value is None and type(None) not in wanted:
            raise GenlabError(f"{key} is required: add {key}=... to the command")
        check_type(key, value, wanted)


def check_optimizer(factory: Callable[..., Any], key: str) -> None:
    """Build the optimizer partial once on a dummy parameter so a bad value fails at startup."""
    import torch

    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as e:
        raise GenlabError(f"{key}: {e}") from None


def check_split(split: str | None) -> None:
    """Reject an unknown genlab-eval ``split`` before anything is loaded."""
    if split is not None and split not in SPLITS:
        raise GenlabError(
            f"split={split!r}: use train, val or test (null: test where the source has an "
            "official test split, else val)"
        )


def check_sample(cfg: DictConfig) -> None:
    """Raise GenlabError naming the first genlab-sample value that cannot make a grid."""
    check_types(cfg, {"ckpt_path": (str,), "seed": (int,)} | {k: (int,) for k in SAMPLE_COUNTS})
    check_types(cfg, {"truncation": (int, float), "trust_checkpoint": (bool,)})
    for key, least in SAMPLE_COUNTS.items():
        value = OmegaConf.select(cfg, key)
        if value < least:
            raise GenlabError(f"{key}={value} must be >= {least}")
    check_choice("device", cfg.device, DEVICES)
    sampler_settings(cfg.get("sampler") or {"name": "prior"})  # a config from before samplers


SAMPLERS = ("prior", "gmm", "two_stage")  # genlab-sample/genlab-eval sampler=
# the settings of each fitted sampler (conf/sampler/NAME.yaml) and their least; a float: a number
SAMPLER_SETTINGS = {
    "gmm": {"components": 1, "max_iter": 1, "tol": 0.0, "reg_covar": 0.0, "seed": 0},
    "two_stage": {"width": 1, "depth": 0, "epochs": 1, "batch_size": 1, "lr": 0.0, "seed": 0},
}


def sampler_settings(spec: Any) -> dict[str, Any]:
    """The name and settings of a ``sampler`` config node, checked; one line naming the key."""
    name = spec.get("name")
    check_choice("sampler", name, SAMPLERS)
    out: dict[str, Any] = {"name": name}
    for key, least in SAMPLER_SETTINGS.get(name, {}).items():
        value = spec.get(key)
        real = isinstance(least, float)  # the others count
        ok = isinstance(value, int | float) if real else isinstance(value, int)
        if not ok or isinstance(value, bool) or value < least:
            kind = "a number" if real else "an integer"
            raise GenlabError(f"sampler.{key}={value} must be {kind} >= {least}")
        out[key] = value
    return out


# the modules that step their optimizers themselves (a D and a G step per batch), by config name
MANUAL_OPTIMIZATION = {
    "genlab.models.gan.GAN": "GAN",
    "genlab.models.vqgan.VQGAN": "VQGAN",
    "genlab.models.vae_objectives.FactorVAE": "FactorVAE",
}


def check_manual_trainer(model: str, clip: Any, accumulate: Any) -> None:
    """Lightning's clipping and accumulation do not reach a manually optimising ``model``."""
    if clip:
        raise GenlabError(
            f"trainer.gradient_clip_val={clip} does not apply to the {model}'s manual "
            "optimisation; set model.grad_clip (max gradient norm) instead"
        )
    if accumulate not in (None, 1):
        raise GenlabError(
            f"trainer.accumulate_grad_batches={accumulate} does not apply to the {model}'s "
            "manual optimisation (it steps every batch): raise data.batch_size instead"
        )


def check_training(cfg: DictConfig) -> None:
    """genlab-train's checks that need only the composed config: run before anything is written
    (no run directory, no W&B run), as the door runs them."""
    trainer = cfg.get("trainer") or {}
    model = MANUAL_OPTIMIZATION.get(OmegaConf.select(cfg, "model._target_", default=None))
    if model is not None:
        clip, accumulate = trainer.get("gradient_clip_val"), trainer.get("accumulate_grad_batches")
        check_manual_trainer(model, clip, accumulate)
    check_ddp_timeout(trainer)
    pack, batch = OmegaConf.select(cfg, "model.pack"), OmegaConf.select(cfg, "data.batch_size")
    if isinstance(pack, int) and isinstance(batch, int) and pack > 1 and batch % pack:
        raise GenlabError(
            f"model.pack={pack} does not divide data.batch_size={batch}: "
            "make the batch size a multiple of it"
        )


def check_ddp_timeout(trainer: Any) -> None:
    """``trainer.ddp_timeout``: null, or seconds > 0 for a DDP strategy (the one that has one)."""
    timeout, strategy = trainer.get("ddp_timeout"), trainer.get("strategy")
    if timeout is None:
        return
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not number or timeout <= 0 or "ddp" not in str(strategy):
        raise GenlabError(
            f"trainer.ddp_timeout={timeout} must be seconds > 0 with a DDP strategy "
            f"(trainer=ddp or trainer=ddp_cpu; this run has trainer.strategy={strategy}), or null"
        )


def check_export(cfg: DictConfig) -> None:
    """genlab-export's values that need no torch: out set, push_to a Hub id."""
    if not cfg.get("out"):
        raise GenlabError("out is not set: genlab-export ckpt_path=... out=DIR")
    repo = cfg.get("push_to")
    if repo is not None and (not isinstance(repo, str) or HUB_ID.fullmatch(repo) is None
                             or "@" in repo):  # fmt: skip
        raise GenlabError(f"push_to={repo}: not a Hub repo id (org/name)")


PREPARE_FORMATS = ("npy", "zip", "litdata")  # genlab-prepare's outputs


def check_prepare(cfg: DictConfig) -> None:
    """genlab-prepare's values: a source that needs preparing, workers and chunk size."""
    if cfg.get("data") is None:
        raise GenlabError(
            "data: choose the source to prepare (data=folder data.root=DIR, data=cifar10, ...; "
            "genlab-prepare --help lists them)"
        )
    if cfg.data.source == "prepared":
        raise GenlabError("data=prepared is prepared already; choose its source (data=folder ...)")
    if cfg.num_workers < 0 or cfg.chunk < 1:
        raise GenlabError(f"num_workers={cfg.num_workers} must be >= 0 and chunk={cfg.chunk} >= 1")
    fmt = cfg.get("format", "npy")
    check_choice("format", fmt, PREPARE_FORMATS)
    if fmt == "zip" and not str(cfg.out).endswith(".zip"):
        raise GenlabError(f"out={cfg.out}: format=zip writes one zip file; name it out=NAME.zip")
    if "://" in str(cfg.out) and fmt != "litdata":
        raise GenlabError(f"out={cfg.out}: only format=litdata writes to a URL")
    if cfg.get("storage_options") and fmt != "litdata":
        raise GenlabError("storage_options are for format=litdata's s3:// outputs only")
