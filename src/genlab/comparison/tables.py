"""From runs to tables: the keys that tell runs apart, final and best values, seeds folded into
mean ± std, and the table as text (terminal, Markdown, CSV)."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from genlab.comparison.runs import Run, flatten, load_runs
from genlab.errors import GenlabError
from genlab.keys import MAXIMISED, X_AXES

SEED = "seed"
# What each module's best checkpoint follows (GAN/VAE .default_monitor, then .fallback_monitor).
MODEL_METRICS = {"GAN": ("val/fid", "val/swd"), "VAE": ("val/elbo",)}
ANY_MODEL_METRICS = ("val/fid", "val/swd", "val/elbo")
# Shown beside the monitored metric for every run that logged them (each VAE's diagnostics)
DIAGNOSTICS = ("val/active_units",)

Mode = Literal["min", "max"]


@dataclass
class Comparison:
    """Everything ``genlab-compare`` shows: runs, per-run table and seed-aggregated table."""

    runs: list[Run]
    metrics: list[str]
    modes: dict[str, Mode]
    keys: list[str]
    per_run: pd.DataFrame
    table: pd.DataFrame


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
    """Each run's monitored metric (``optimized_metric``, else val/fid, val/swd (GAN), val/elbo),
    then the diagnostics any run logged (a VAE's val/active_units)."""
    chosen: list[str] = []
    for run in runs:
        own = run.config.get("optimized_metric")
        candidates = [own] if own else MODEL_METRICS.get(model_kind(run), ANY_MODEL_METRICS)
        present = [m for m in candidates if m in logged(run)]
        if present and present[0] not in chosen:
            chosen.append(present[0])
    chosen += [m for m in DIAGNOSTICS if any(m in logged(r) for r in runs) and m not in chosen]
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
    """Half the width of the last 95% interval (``metric_ci_low/high``) a run logged."""
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
        if stat == "best" and ci in table:  # metrics.jackknife: the final value's 95% interval
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


def check_x(runs: Sequence[Run], x: str) -> None:
    """Raise a one-line error when no run logged the ``--x`` axis."""
    column = X_AXES[x]
    if not any(column in r.metrics and r.metrics[column].notna().any() for r in runs):
        raise GenlabError(
            f"--x {x}: no run logged {column} (runs trained before genlab logged it; "
            "use --x step or --x epoch)"
        )
