"""Curves of runs grouped by setting: the seed mean and a ±std band against any logged axis.

matplotlib is imported only when a plot is drawn.
"""

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genlab.comparison.tables import SEED, Comparison, csv_table, display_table, markdown
from genlab.keys import X_AXES


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


def output_files(comparison: Comparison, out: Path, form: str = "table") -> list[Path]:
    """The files a comparison in ``form`` writes: ``md`` and ``csv`` only their own table,
    ``table`` (the terminal's) compare.csv, compare.md and one compare_<metric>.png per metric."""
    tables = {"csv": [out / "compare.csv"], "md": [out / "compare.md"]}
    if form in tables:
        return tables[form]
    return [*tables["csv"], *tables["md"], *(plot_file(out, m) for m in comparison.metrics)]


def write_outputs(
    comparison: Comparison, out: Path, x: str = "step", per_run: bool = False, form: str = "table"
) -> list[Path]:
    """Write the files of ``output_files`` into ``out``; returns them."""
    out.mkdir(parents=True, exist_ok=True)
    written = output_files(comparison, out, form)
    for path in written:
        if path.name == "compare.csv":
            csv_table(comparison).to_csv(path, index=False)
        elif path.name == "compare.md":
            path.write_text(markdown(display_table(comparison)))
    for m in comparison.metrics:
        if plot_file(out, m) in written:
            save_plot(comparison, m, x, plot_file(out, m), per_run)
    return written
