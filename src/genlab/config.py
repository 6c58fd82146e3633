"""Where the shipped configs live, instantiation, and one-line error reporting for entry points."""

import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genlab.errors import GenlabError, check_type

T = TypeVar("T")


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


# registered at import, before any entry point or test composes a config
OmegaConf.register_new_resolver("genlab_packed", packed_channels, replace=True)


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


def one_line(error: BaseException) -> str:
    """A config or input error as one line: Hydra's first line plus its cause and options."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[0] if lines else type(error).__name__
    if isinstance(error, MissingConfigException) and error.options:
        text += f" (available: {', '.join(error.options)})"
    elif isinstance(error, HydraException) and isinstance(error.__cause__, OmegaConfBaseException):
        cause = str(error.__cause__).splitlines()[0]
        text += f" {cause}"
    elif isinstance(error, OmegaConfBaseException) and len(lines) > 1:
        text += f" ({'; '.join(lines[1:])})"
    return text


# Numbers of the sweep jobs of this process that failed with bad input (run_task).
FAILED_JOBS: list[int] = []


def report_errors(hydra_main: Callable[[], Any], prog: str) -> None:
    """Run a ``@hydra.main`` function; bad config exits 2 with one line on stderr, no traceback."""
    # Hydra would print its own multi-line report; we want the exception to word it ourselves.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
        if FAILED_JOBS:  # each already said why in its one line
            sys.exit(2)
    except (GenlabError, HydraException, OmegaConfBaseException) as e:
        if isinstance(e, InstantiationException):
            raise  # a bug in a constructor, not bad input: keep the traceback
        fail(prog, e)
    except OSError as e:  # e.g. an output directory that cannot be created
        if e.filename is None:
            raise
        fail(prog, GenlabError(f"cannot write {e.filename}: {e.strerror} (hydra.run.dir?)"))


def fail(prog: str, error: BaseException) -> NoReturn:
    """Print ``error`` as one line and exit 2."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    sys.exit(2)


def run_task(task: Callable[[DictConfig], T], cfg: DictConfig, prog: str) -> T:
    """Run a Hydra task; bad input found while running it exits 2 with one line.

    Caught inside the task so that Hydra adds no report of its own. In a sweep (``-m``) only
    the job fails: one line naming it, a NaN result (a failed trial for Optuna), and the sweep
    goes on; ``report_errors`` exits 2 at its end.
    """
    try:
        return task(cfg)
    except (GenlabError, OmegaConfBaseException) as e:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            job = HydraConfig.get().job
            FAILED_JOBS.append(job.num)
            overrides = job.override_dirname or "no overrides"
            print(f"{prog}: error: job {job.num} ({overrides}): {one_line(e)}", file=sys.stderr)
            # Hydra's own report of a raised job would repeat the error and add a line
            return float("nan")  # type: ignore[return-value]
        discard_empty_run_dir()
        fail(prog, e)


def discard_empty_run_dir(run_dir: Path | None = None, stop: Path | None = None) -> bool:
    """Remove a failed run's directory when it holds only Hydra's own files; True if removed.

    Hydra makes the directory (default: this run's) before the task can check its input, so a
    bad ``ckpt_path`` would leave an empty run behind. Parents left empty go too, up to ``stop``
    (default: the working directory), which stays.
    """
    if run_dir is None:
        if not HydraConfig.initialized():
            return False
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not run_dir.is_dir():
        return False
    # what Hydra writes before the task starts: .hydra/ and the job's log file; and .genlab/,
    # the W&B id genlab-train stores while it builds
    if not all(p.name in (".hydra", ".genlab") or p.suffix == ".log" for p in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir)
    stop = (stop or Path.cwd()).resolve()
    parent = run_dir.resolve().parent
    while stop in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


def require_file(path: str, key: str = "ckpt_path") -> None:
    """A missing checkpoint fails in one line, checked before torch is imported."""
    if not Path(path).is_file():
        raise GenlabError(f"{key}={path}: no such checkpoint file")


def check_types(cfg: DictConfig, types: dict[str, tuple[type, ...]]) -> None:
    """Reject a value of the wrong type (``seed=abc``) by its key, before anything is built."""
    for key, wanted in types.items():
        check_type(key, OmegaConf.select(cfg, key), wanted)


def check_optimizer(factory: Callable[..., Any], key: str) -> None:
    """Build the optimizer partial once on a dummy parameter so a bad value fails at startup."""
    import torch

    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as e:
        raise GenlabError(f"{key}: {e}") from None


def read_checkpoint(ckpt_path: str, key: str = "ckpt_path") -> dict:
    """A Lightning checkpoint as a dict (weights only, no pickled code), or a one-line error."""
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
