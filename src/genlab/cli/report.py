"""How a door runs: a Hydra task whose bad input ends in one line on stderr and exit status 2,
with no traceback and no empty run directory left behind."""

import difflib
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genlab.config import CONFIG_DIR
from genlab.console import FAILED_JOBS, job_error
from genlab.errors import GenlabError

T = TypeVar("T")


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
    """Print ``error`` as one line (with the keys it may have meant) and exit 2."""
    print(f"{prog}: error: {one_line(error)}{suggestion(error, prog)}", file=sys.stderr)
    sys.exit(2)


UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'\. Key '([^']+)' is not in struct")


def suggestion(error: BaseException, prog: str) -> str:
    """For an override of a key that does not exist: the closest keys where it was meant to go
    and, for a key of another option of its group, that option (``model.likelihood`` is a VAE
    key). Empty for other errors, or when the config cannot be composed without it."""
    found = UNKNOWN_KEY.search(one_line(error))
    if found is None:
        return ""
    full, bad = found.groups()
    parent = full[: full.index(bad)].rstrip(".") if bad in full else ""
    overrides = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    kept = [o for o in overrides if not o.lstrip("+~").split("=")[0].startswith(full)]
    cfg = composed(prog.removeprefix("genlab-"), kept)
    if cfg is None:
        return ""
    node = OmegaConf.select(cfg, parent) if parent else cfg
    keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
    close = [f"{parent}.{k}" if parent else k for k in difflib.get_close_matches(bad, keys, n=3)]
    hints = [f"did you mean {' or '.join(close)}?"] if close else []
    chosen = cfg.hydra.runtime.choices.get(parent) if "." not in parent else None
    if chosen is not None and (Path(CONFIG_DIR) / parent).is_dir():
        owners = sorted(p.stem for p in (Path(CONFIG_DIR) / parent).glob("*.yaml")
                        if re.search(rf"^{re.escape(bad)}:", p.read_text(), re.M))  # fmt: skip
        if owners:
            options = ", ".join(f"{parent}={o}" for o in owners[:4])
            options += f" and {len(owners) - 4} more" if len(owners) > 4 else ""
            hints.append(f"{parent}.{bad} is a key of {options}; this run has {parent}={chosen}")
    return f" ({'; '.join(hints)})" if hints else ""


def composed(config_name: str, overrides: list[str]) -> DictConfig | None:
    """The door's config composed with ``overrides`` (Hydra's node too), or None if it fails."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    except Exception:  # the suggestion is a courtesy: the error itself is already worded
        return None


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
            job_error(prog, job.num, job.override_dirname, one_line(e))
            # Hydra's own report of a raised job would repeat the error and add a line
            return float("nan")  # type: ignore[return-value]
        discard_empty_run_dir()
        fail(prog, e)


def discard_empty_run_dir(run_dir: Path | None = None, stop: Path | None = None) -> bool:
    """Remove a failed run's directory when it holds only Hydra's own files; True if removed.

    Hydra makes the directory (default: this run's) before the task can check its input, so a
    bad ``ckpt_path`` would leave an empty run behind. Parents left empty go too, up to ``stop``
    (default: the working directory), which stays. The working directory and those above it are
    never a run's own (genlab-prepare runs in "."), whatever they hold.
    """
    if run_dir is None:
        if not HydraConfig.initialized():
            return False
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    cwd = Path.cwd().resolve()
    if not run_dir.is_dir() or run_dir.resolve() in (cwd, *cwd.parents):
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
