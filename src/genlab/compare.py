"""genlab-compare: one table and curve plots for a sweep, or any directory of runs, offline."""

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from genlab.config import fail
from genlab.errors import GenlabError
from genlab.keys import MAXIMISED

PROG = "genlab-compare"
CONFIG_FILE = ".hydra/config.yaml"
OVERRIDES_FILE = ".hydra/overrides.yaml"
HYDRA_FILE = ".hydra/hydra.yaml"
METRICS_FILE = "csv/metrics.csv"
# W&B's offline run files, one per fragment of a resumed run (read when a run has no CSV)
WANDB_FILES = "wandb/offline-run-*/run-*.wandb"
SEED = "seed"
# --x choice -> logged column (genlab.callbacks.axes logs the trainer/* ones)
X_AXES = {
    "images_seen": "trainer/images_seen",
    "g_steps": "trainer/g_steps",
    "step": "step",
    "epoch": "epoch",
    "time": "trainer/time",
}
# What each module's best checkpoint follows (GAN/VAE .default_monitor, then .fallback_monitor).
MODEL_METRICS = {"GAN": ("val/fid", "val/swd"), "VAE": ("val/elbo",)}
ANY_MODEL_METRICS = ("val/fid", "val/swd", "val/elbo")

Mode = Literal["min", "max"]


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


@dataclass
class Comparison:
    """Everything ``genlab-compare`` shows: runs, per-run table and seed-aggregated table."""

    runs: list[Run]
    metrics: list[str]
    modes: dict[str, Mode]
    keys: list[str]
    per_run: pd.DataFrame
    table: pd.DataFrame


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


def display_value(value: Any) -> str:
    """A config value as a table cell: ``0.0001``, ``vae``, ``[0.5, 0.9]``; missing is empty."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return "{...}"
    return str(value)


def run_params(run: Run, keys: Sequence[str]) -> dict[str, str]:
    """The value of each key in this run: config value, else group choice, else the override."""
    flat = flatten(run.config)
    out = {}
    for key in keys:
        if key in flat:
            value = flat[key]
        elif key in run.choices:  # a config group (model=vae), or one with package _global_
            value = run.choices[key]
        else:
            value = run.overrides.get(key)
        out[key] = display_value(value)
    return out


def differing_keys(params: Sequence[dict[str, Any]]) -> list[str]:
    """Keys (in first-seen order) whose value is not the same in every dict; missing is None."""
    keys = list(dict.fromkeys(k for p in params for k in p))
    return [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]


def varying_params(runs: Sequence[Run]) -> list[dict[str, str]]:
    """Per run, the keys that tell runs apart: differing overrides, else differing config values."""
    override_keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    params = [run_params(r, override_keys) for r in runs]
    keys = differing_keys(params)
    if not keys and len(runs) > 1:
        # runs launched separately with edited YAML instead of overrides
        flats = [{k: display_value(v) for k, v in flatten(r.config).items()} for r in runs]
        keys = differing_keys(flats)
        params = flats
    return [{k: p.get(k, "") for k in keys} for p in params]


def model_kind(run: Run) -> str:
    """``GAN`` or ``VAE`` from ``model._target_`` (anything else: the class name)."""
    return str((run.config.get("model") or {}).get("_target_", "")).rsplit(".", 1)[-1]


def logged(run: Run) -> list[str]:
    """The metric keys a run logged (columns with at least one value)."""
    axes = set(X_AXES.values())
    return [c for c in run.metrics.columns if c not in axes and run.metrics[c].notna().any()]


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """Each run's monitored metric: ``optimized_metric``, else val/fid, val/swd (GAN), val/elbo."""
    chosen: list[str] = []
    for run in runs:
        own = run.config.get("optimized_metric")
        candidates = [own] if own else MODEL_METRICS.get(model_kind(run), ANY_MODEL_METRICS)
        present = [m for m in candidates if m in logged(run)]
        if present and present[0] not in chosen:
            chosen.append(present[0])
    if not chosen:
        raise GenlabError(
            f"no run logged {', '.join(ANY_MODEL_METRICS)}; choose with --metric "
            f"(available: {', '.join(available_metrics(runs))})"
        )
    return chosen


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Every metric key logged by at least one run, sorted."""
    return sorted({m for r in runs for m in logged(r)})


def check_metrics(runs: Sequence[Run], metrics: Sequence[str]) -> None:
    """Raise a one-line error for a metric no run logged."""
    available = available_metrics(runs)
    for metric in metrics:
        if metric not in available:
            raise GenlabError(
                f"--metric {metric}: no run logged it (available: {', '.join(available)})"
            )


def metric_mode(metric: str, mode: Mode | None = None) -> Mode:
    """``mode`` if given, else max for ELBO/IS-like keys and min for the rest (as in training)."""
    return mode or ("max" if metric in MAXIMISED else "min")


def final_and_best(values: pd.Series, mode: Mode) -> tuple[float, float]:
    """Last logged value and the best one; NaN for a metric never logged."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return float("nan"), float("nan")
    best = values.max() if mode == "max" else values.min()
    return float(values.iloc[-1]), float(best)


def stat_column(metric: str, stat: str) -> str:
    """Column name of a statistic, e.g. ``val/fid best``."""
    return f"{metric} {stat}"


def interval_half_width(frame: pd.DataFrame, metric: str) -> float | None:
    """Half the width of the last bootstrap interval (``metric_ci_low/high``) a run logged."""
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low not in frame or high not in frame:
        return None
    both = frame[[low, high]].dropna()
    return None if both.empty else float(both[high].iloc[-1] - both[low].iloc[-1]) / 2


def summarize(
    runs: Sequence[Run], metrics: Sequence[str], modes: dict[str, Mode]
) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: name, the keys that differ, final and best of each metric; and the keys."""
    params = varying_params(runs)
    keys = list(params[0]) if params else []
    rows = []
    for run, p in zip(runs, params, strict=True):
        row: dict[str, Any] = {"run": run.name, **p}
        for m in metrics:
            column = run.metrics[m] if m in run.metrics else pd.Series(dtype=float)
            final, best = final_and_best(column, modes[m])
            row[stat_column(m, "final")], row[stat_column(m, "best")] = final, best
            half = interval_half_width(run.metrics, m)
            if half is not None:
                row[stat_column(m, "ci")] = half
        rows.append(row)
    return pd.DataFrame(rows), keys


def aggregate(per_run: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Runs that differ only in ``seed`` become one row: mean, sample std (ddof=1), n, runs."""
    group_keys = [k for k in keys if k != SEED]
    stats = [c for c in per_run.columns if c != "run" and c not in keys]
    if group_keys:
        groups = per_run.groupby(group_keys, sort=False, dropna=False)
    else:
        groups = per_run.groupby(lambda _: 0, sort=False)
    rows = []
    for _, frame in groups:
        row: dict[str, Any] = {k: frame[k].iloc[0] for k in group_keys}
        row["n"] = len(frame)
        row["runs"] = tuple(frame["run"])
        for c in stats:
            row[c] = frame[c].mean()
            row[f"{c} std"] = frame[c].std(ddof=1) if len(frame) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def compare(
    root: str | Path, metrics: Sequence[str] | None = None, mode: Mode | None = None
) -> Comparison:
    """Load every run below ``root`` and build the per-run and seed-aggregated tables."""
    runs = load_runs(root)
    metrics = list(dict.fromkeys(metrics)) if metrics else default_metrics(runs)
    check_metrics(runs, metrics)
    modes = {m: metric_mode(m, mode) for m in metrics}
    per_run, keys = summarize(runs, metrics, modes)
    return Comparison(runs, metrics, modes, keys, per_run, aggregate(per_run, keys))


def fmt_number(value: float) -> str:
    """Four significant digits; missing is ``-``."""
    return "-" if pd.isna(value) else f"{value:.4g}"


def display_table(comparison: Comparison) -> pd.DataFrame:
    """The aggregated table as strings: ``mean ± std`` where a group has several seeds."""
    table = comparison.table
    out = pd.DataFrame(index=table.index)
    for k in comparison.keys:
        if k != SEED:
            out[k] = table[k]
    out["n"] = table["n"].astype(str)
    for m in comparison.metrics:
        for stat in ("final", "best"):
            c = stat_column(m, stat)
            cells = []
            for mean, std in zip(table[c], table[f"{c} std"], strict=True):
                cells.append(fmt_number(mean) + ("" if pd.isna(std) else f" ± {std:.2g}"))
            title = f"{c} ({comparison.modes[m]})" if stat == "best" else c
            out[title] = cells
        ci = stat_column(m, "ci")
        if stat == "best" and ci in table:  # metrics.bootstrap: the final value's 95% interval
            out[f"{m} 95% CI"] = ["" if pd.isna(h) else f"± {h:.2g}" for h in table[ci]]
    out["runs"] = [" ".join(r) for r in table["runs"]]
    return out


def markdown(frame: pd.DataFrame) -> str:
    """A frame of strings as a GitHub Markdown table."""

    def row(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(frame.columns), row(["---"] * len(frame.columns))]
    lines += [row(r) for r in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def csv_table(comparison: Comparison) -> pd.DataFrame:
    """The aggregated table with numbers as numbers (mean and std columns) for compare.csv."""
    table = comparison.table.copy()
    table["runs"] = [" ".join(r) for r in table["runs"]]
    return table


def group_label(comparison: Comparison, index: int) -> str:
    """Legend text of one row of the aggregated table: ``key=value, ...`` and n."""
    row = comparison.table.iloc[index]
    parts = [f"{k}={row[k]}" for k in comparison.keys if k != SEED]
    return f"{', '.join(parts) or ' '.join(row['runs'])} (n={row['n']})"


def run_curve(frame: pd.DataFrame, metric: str, column: str) -> pd.Series:
    """``metric`` indexed by the x column, one value per x (the last logged there)."""
    if metric not in frame or column not in frame:
        return pd.Series(dtype=float)
    points = frame[[column, metric]].apply(pd.to_numeric, errors="coerce").dropna()
    return points.groupby(column)[metric].last().sort_index()


def group_curve(curves: Sequence[pd.Series]) -> pd.DataFrame:
    """Seed mean, sample std (ddof=1) and count of runs' curves on the union of their x values.

    A run counts at the x values inside its own range, linearly interpolated between its points
    (identity where runs share x, as images seen and steps do across seeds; needed for time).
    """
    curves = [c for c in curves if not c.empty]
    if not curves:
        return pd.DataFrame(columns=["mean", "std", "n"], dtype=float)
    x = np.unique(np.concatenate([c.index.to_numpy(dtype=float) for c in curves]))
    columns = []
    for c in curves:
        cx, cy = c.index.to_numpy(dtype=float), c.to_numpy(dtype=float)
        y = np.interp(x, cx, cy)
        y[(x < cx[0]) | (x > cx[-1])] = np.nan
        columns.append(y)
    values = pd.DataFrame(np.stack(columns, axis=1), index=pd.Index(x, name="x"))
    return pd.DataFrame(
        {"mean": values.mean(axis=1), "std": values.std(axis=1, ddof=1), "n": values.count(axis=1)}
    )


def plot_curves(
    ax: Any, comparison: Comparison, metric: str, x: str = "step", per_run: bool = False
) -> None:
    """Draw ``metric`` against ``x`` on a matplotlib Axes: per group the seed mean, ±std band.

    ``x`` is a ``--x`` choice (``images_seen``, ``g_steps``, ``step``, ``epoch``, ``time``);
    ``per_run`` adds each run's own line, thin, in its group's colour.
    """
    column = X_AXES[x]
    runs = {r.name: r for r in comparison.runs}
    colours = [f"C{i % 10}" for i in range(len(comparison.table))]
    for i, names in enumerate(comparison.table["runs"]):
        curves = [run_curve(runs[name].metrics, metric, column) for name in names]
        curve = group_curve(curves)
        if curve.empty:
            continue
        ax.plot(curve.index, curve["mean"], color=colours[i], marker=".",
                label=group_label(comparison, i))  # fmt: skip
        band = curve.dropna(subset=["std"])
        if not band.empty:
            ax.fill_between(band.index, band["mean"] - band["std"], band["mean"] + band["std"],
                            color=colours[i], alpha=0.2, linewidth=0)  # fmt: skip
        if per_run:
            for c in curves:
                ax.plot(c.index, c.to_numpy(), color=colours[i], linewidth=0.8, alpha=0.5)
    from matplotlib.ticker import MaxNLocator

    if x != "time":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    ax.set_xlabel(column if column == x else f"{x} ({column})")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} ({comparison.modes[metric]} is best; mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def check_x(runs: Sequence[Run], x: str) -> None:
    """Raise a one-line error when no run logged the ``--x`` axis."""
    column = X_AXES[x]
    if not any(column in r.metrics and r.metrics[column].notna().any() for r in runs):
        raise GenlabError(
            f"--x {x}: no run logged {column} (runs trained before genlab logged it; "
            "use --x step or --x epoch)"
        )


def plot_file(out: Path, metric: str) -> Path:
    """Where the curves of ``metric`` go: ``compare_val_fid.png`` for ``val/fid``."""
    return out / f"compare_{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.png"


def save_plot(
    comparison: Comparison, metric: str, x: str, path: Path, per_run: bool = False
) -> None:
    """Write the curves of one metric as a PNG with the Agg backend (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    plot_curves(fig.add_subplot(), comparison, metric, x, per_run)
    fig.savefig(path, dpi=100)


def write_outputs(
    comparison: Comparison, out: Path, x: str = "step", per_run: bool = False
) -> list[Path]:
    """Write compare.csv, compare.md and one compare_<metric>.png per metric into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "compare.csv", out / "compare.md"]
    csv_table(comparison).to_csv(written[0], index=False)
    written[1].write_text(markdown(display_table(comparison)))
    for m in comparison.metrics:
        written.append(plot_file(out, m))
        save_plot(comparison, m, x, written[-1], per_run)
    return written


def print_table(comparison: Comparison, root: Path) -> None:
    """The aggregated table in the terminal; the best group of the first metric in bold."""
    from rich.console import Console
    from rich.table import Table

    shown = display_table(comparison)
    first = stat_column(comparison.metrics[0], "best")
    best_values = comparison.table[first]
    best = None
    if best_values.notna().any():
        max_first = comparison.modes[comparison.metrics[0]] == "max"
        best = best_values.idxmax() if max_first else best_values.idxmin()
    table = Table(
        title=f"{len(comparison.runs)} run(s) in {root}",
        caption="mean ± std over runs that differ only in seed; best = min/max over logged values",
    )
    for c in shown.columns:
        justify = "left" if c in comparison.keys or c == "runs" else "right"
        table.add_column(c, justify=justify, overflow="fold")  # wrap, never cut with "…"
    for i, row in shown.iterrows():
        table.add_row(*row.tolist(), style="bold" if i == best else None)
    console = Console()
    if not console.is_terminal:  # a file or a batch log: no width to fit, print it whole
        console = Console(width=max(console.width, table_width(shown)))
    console.print(table)


def table_width(shown: pd.DataFrame) -> int:
    """Characters a rich table of ``shown`` needs on one line per row: cells, padding, borders."""
    widths = [max([len(str(c)), *(len(str(v)) for v in shown[c])]) + 3 for c in shown.columns]
    return sum(widths) + 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``genlab-compare``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Compare the runs of a sweep (or any directory of genlab-train runs): "
        "one row per setting, runs that differ only in seed averaged (mean ± std).",
    )
    p.add_argument("path", type=Path, help="a run directory, or a directory holding runs")
    p.add_argument(
        "--metric",
        action="append",
        help="metric key, repeatable (default: each run's optimized_metric, else val/fid or "
        "val/swd for a GAN, val/elbo for a VAE)",
    )
    p.add_argument(
        "--mode",
        choices=["min", "max"],
        help="best = min or max (default: max for val/elbo, val/is; min otherwise)",
    )
    p.add_argument("--out", type=Path, help="where compare.csv/.md/_METRIC.png go (default: PATH)")
    p.add_argument(
        "--format",
        choices=["table", "md", "csv"],
        default="table",
        help="what to print on stdout (default: a rich table)",
    )
    p.add_argument(
        "--x",
        choices=list(X_AXES),
        default="step",
        help="x axis of the curve plots: images_seen (real images shown to the model), "
        "g_steps (generator steps; VAE: optimizer steps), step (logged batches), epoch, time "
        "(seconds of training)",
    )
    p.add_argument("--per-run", action="store_true", help="also draw each run's own curve, thin")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``genlab-compare``."""
    args = parse_args(argv)
    try:
        comparison = compare(args.path, args.metric, args.mode)
        check_x(comparison.runs, args.x)
    except GenlabError as e:
        fail(PROG, e)
    written = write_outputs(comparison, args.out or args.path, args.x, args.per_run)
    if args.format == "md":
        sys.stdout.write(markdown(display_table(comparison)))
    elif args.format == "csv":
        csv_table(comparison).to_csv(sys.stdout, index=False)
    else:
        print_table(comparison, args.path)
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)


if __name__ == "__main__":
    main()
