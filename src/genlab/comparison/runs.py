"""Runs as genlab-compare reads them, offline: ``.hydra/`` configs and ``csv/metrics.csv``, else
the history in W&B's offline run files."""

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from genlab.errors import GenlabError

CONFIG_FILE = ".hydra/config.yaml"
OVERRIDES_FILE = ".hydra/overrides.yaml"
HYDRA_FILE = ".hydra/hydra.yaml"
METRICS_FILE = "csv/metrics.csv"
# W&B's offline run files, one per fragment of a resumed run (read when a run has no CSV)
WANDB_FILES = "wandb/offline-run-*/run-*.wandb"


@dataclass
class Run:
    """One training run: its name under the compared directory, config and logged metrics."""

    name: str
    path: Path
    config: dict[str, Any]  # unresolved: ${hydra:...} cannot be resolved outside Hydra
    overrides: dict[str, str | None]
    choices: dict[str, Any]  # config group -> option, from .hydra/hydra.yaml
    metrics: pd.DataFrame  # csv/metrics.csv as Lightning's CSVLogger wrote it (sparse rows),
    # or the W&B offline history in the same shape


def natural_key(text: str) -> list[Any]:
    """Sort key that puts run 10 after run 9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def find_runs(root: Path) -> list[Path]:
    """Every directory at or below ``root`` holding ``.hydra/config.yaml``, in natural order."""
    found = [p.parent.parent for p in root.rglob(CONFIG_FILE)]
    if (root / CONFIG_FILE).is_file() and root not in found:
        found.append(root)
    return sorted(found, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def parse_overrides(overrides: Sequence[str]) -> dict[str, str | None]:
    """Hydra's overrides.yaml as a dict: ``["+a.b=1", "~c"]`` -> ``{"a.b": "1", "c": None}``."""
    out: dict[str, str | None] = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        out[key.lstrip("+~")] = value if sep and not key.startswith("~") else None
    return out


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"model.optimizer_g.lr": 2e-4, ...}``; lists stay whole values."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node} if prefix else {}


def read_metrics(path: Path) -> pd.DataFrame:
    """A CSVLogger file; a run that crashed before logging gives an empty frame."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=["epoch", "step"])


def wandb_reader() -> str:
    """W&B's own command-line reader of run files (installed with the package)."""
    beside = Path(sys.executable).parent / "wandb"
    found = str(beside) if beside.is_file() else shutil.which("wandb")
    if found is None:
        raise GenlabError("reading W&B run files needs the wandb command (pip install wandb)")
    return found


def read_wandb_history(path: Path) -> pd.DataFrame:
    """The history of a run's W&B offline files, fragments in start order, as CSVLogger rows.

    Read through ``wandb leet inspect --json`` (W&B's reader): no network, no W&B import here.
    Media rows (images, tables) are left out; ``trainer/global_step`` becomes ``step``.
    """
    rows = []
    for wandb_file in sorted(path.glob(WANDB_FILES)):  # directory names start with the time
        out = subprocess.run(
            [wandb_reader(), "leet", "inspect", "--json", str(wandb_file)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if out.returncode != 0:
            raise GenlabError(f"{wandb_file}: W&B could not read it ({out.stderr.strip()[:200]})")
        for line in out.stdout.splitlines():
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("type") != "history":
                continue
            item = record["history"]["item"]
            if any(k.endswith("._type") for k in item):
                continue
            rows.append({k: v for k, v in item.items() if not k.startswith("_")})
    frame = pd.DataFrame(rows)
    return frame.rename(columns={"trainer/global_step": "step"})


def has_metrics(path: Path) -> bool:
    """True for a training run that logged metrics: a CSV file or W&B offline files."""
    return (path / METRICS_FILE).is_file() or any(path.glob(WANDB_FILES))


def load_yaml(path: Path) -> Any:
    """A YAML file as plain containers, interpolations left as written."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


def load_run(path: Path, root: Path) -> Run:
    """Read one run directory (``.hydra/`` and ``csv/metrics.csv``, else its W&B files)."""
    hydra_cfg = load_yaml(path / HYDRA_FILE) or {}
    choices = hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
    name = path.relative_to(root).as_posix()
    return Run(
        name=path.name if name == "." else name,
        path=path,
        config=load_yaml(path / CONFIG_FILE) or {},
        overrides=parse_overrides(load_yaml(path / OVERRIDES_FILE) or []),
        choices={k: v for k, v in choices.items() if not k.startswith("hydra/")},
        metrics=(
            read_metrics(path / METRICS_FILE)
            if (path / METRICS_FILE).is_file()
            else read_wandb_history(path)
        ),
    )


def load_runs(root: str | Path) -> list[Run]:
    """Every run with logged metrics at or below ``root`` (a run directory or a sweep)."""
    root = Path(root)
    if not root.is_dir():
        raise GenlabError(f"{root}: no such directory")
    candidates = find_runs(root)
    if not candidates:
        raise GenlabError(f"{root}: no genlab runs found (no {CONFIG_FILE} below it)")
    # genlab-eval and genlab-sample also write .hydra/ (task_name eval/sample): not runs
    runs = [load_run(p, root) for p in candidates if has_metrics(p)]
    if not runs:
        raise GenlabError(
            f"{root}: none of its {len(candidates)} run(s) has {METRICS_FILE} or {WANDB_FILES} "
            "(train with logger=csv, logger=wandb or logger=default)"
        )
    return runs
