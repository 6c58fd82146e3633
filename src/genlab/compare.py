"""genlab-compare: one table and curve plots for a sweep, or any directory of runs, offline."""

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from omegaconf import OmegaConf

from genlab.config import fail
from genlab.errors import GenlabError

PROG = "genlab-compare"
CONFIG_FILE = ".hydra/config.yaml"
OVERRIDES_FILE = ".hydra/overrides.yaml"
HYDRA_FILE = ".hydra/hydra.yaml"
METRICS_FILE = "csv/metrics.csv"
SEED = "seed"
X_AXES = ("step", "epoch")
# Equal to genlab.training.MAXIMISED (a test checks): importing it would load Lightning.
MAXIMISED = {"val/elbo", "val/is", "train/elbo", "train/iwae_bound"}
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
    metrics: pd.DataFrame  # csv/metrics.csv as Lightning's CSVLogger wrote it (sparse rows)


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


def load_yaml(path: Path) -> Any:
    """A YAML file as plain containers, interpolations left as written."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


def load_run(path: Path, root: Path) -> Run:
    """Read one run directory (``.hydra/`` and ``csv/metrics.csv``)."""
    hydra_cfg = load_yaml(path / HYDRA_FILE) or {}
    choices = hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
    name = path.relative_to(root).as_posix()
    return Run(
        name=path.name if name == "." else name,
        path=path,
        config=load_yaml(path / CONFIG_FILE) or {},
        overrides=parse_overrides(load_yaml(path / OVERRIDES_FILE) or []),
        choices={k: v for k, v in choices.items() if not k.startswith("hydra/")},
        metrics=read_metrics(path / METRICS_FILE),
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
    runs = [load_run(p, root) for p in candidates if (p / METRICS_FILE).is_file()]
    if not runs:
        raise GenlabError(
            f"{root}: none of its {len(candidates)} run(s) has {METRICS_FILE} "
            "(train with logger=csv or logger=default)"
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
    return [c for c in run.metrics.columns if c not in X_AXES and run.metrics[c].notna().any()]


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


def plot_curves(ax: Any, comparison: Comparison, metric: str, x: str = "step") -> None:
    """Draw ``metric`` against ``x`` on a matplotlib Axes: one line per run, a colour per group."""
    runs = {r.name: r for r in comparison.runs}
    colours = [f"C{i % 10}" for i in range(len(comparison.table))]
    for i, names in enumerate(comparison.table["runs"]):
        for j, name in enumerate(names):
            frame = runs[name].metrics
            if metric not in frame or x not in frame:
                continue
            points = frame[[x, metric]].dropna()
            label = group_label(comparison, i) if j == 0 else None
            ax.plot(points[x], points[metric], color=colours[i], marker=".", label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are counts
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} ({comparison.modes[metric]} is best)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def plot_file(out: Path, metric: str) -> Path:
    """Where the curves of ``metric`` go: ``compare_val_fid.png`` for ``val/fid``."""
    return out / f"compare_{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.png"


def save_plot(comparison: Comparison, metric: str, x: str, path: Path) -> None:
    """Write the curves of one metric as a PNG with the Agg backend (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    plot_curves(fig.add_subplot(), comparison, metric, x)
    fig.savefig(path, dpi=100)


def write_outputs(comparison: Comparison, out: Path, x: str = "step") -> list[Path]:
    """Write compare.csv, compare.md and one compare_<metric>.png per metric into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "compare.csv", out / "compare.md"]
    csv_table(comparison).to_csv(written[0], index=False)
    written[1].write_text(markdown(display_table(comparison)))
    for m in comparison.metrics:
        written.append(plot_file(out, m))
        save_plot(comparison, m, x, written[-1])
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
    p.add_argument("--x", choices=X_AXES, default="step", help="x axis of the curve plots")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``genlab-compare``."""
    args = parse_args(argv)
    try:
        comparison = compare(args.path, args.metric, args.mode)
    except GenlabError as e:
        fail(PROG, e)
    written = write_outputs(comparison, args.out or args.path, args.x)
    if args.format == "md":
        sys.stdout.write(markdown(display_table(comparison)))
    elif args.format == "csv":
        csv_table(comparison).to_csv(sys.stdout, index=False)
    else:
        print_table(comparison, args.path)
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)


if __name__ == "__main__":
    main()
