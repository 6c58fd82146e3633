"""genlab-compare: one table and curve plots for a sweep, or any directory of runs, offline.

The reading and tabulating live in ``genlab.comparison``; nothing here needs torch, and
matplotlib loads only when the plots are drawn.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from genlab.cli.report import fail
from genlab.comparison.plots import output_files, write_outputs
from genlab.comparison.tables import (
    Comparison,
    check_x,
    compare,
    csv_table,
    display_table,
    markdown,
    stat_column,
)
from genlab.errors import GenlabError
from genlab.keys import X_AXES

PROG = "genlab-compare"


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


def check_out(files: Sequence[Path], out: Path) -> None:
    """Refuse, before anything is written, to replace the files of an earlier comparison."""
    there = [p.name for p in files if p.exists()]
    if there:
        raise GenlabError(
            f"--out {out} already holds {', '.join(there)} from an earlier comparison: "
            "add --overwrite to replace them, or choose another --out"
        )


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
    p.add_argument(
        "--out",
        type=Path,
        help="the directory the files of --format go to (default: PATH); files of an earlier "
        "comparison there are kept unless --overwrite",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace files an earlier comparison left in --out"
    )
    p.add_argument(
        "--format",
        choices=["table", "md", "csv"],
        default="table",
        help="table (default): a rich table on stdout, and compare.csv, compare.md and "
        "compare_METRIC.png in --out; md: Markdown on stdout and compare.md only; csv: CSV on "
        "stdout and compare.csv only",
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
        out = args.out or args.path
        if not args.overwrite:
            check_out(output_files(comparison, out, args.format), out)
    except GenlabError as e:
        fail(PROG, e)
    written = write_outputs(comparison, out, args.x, args.per_run, args.format)
    if args.format == "md":
        sys.stdout.write(markdown(display_table(comparison)))
    elif args.format == "csv":
        csv_table(comparison).to_csv(sys.stdout, index=False)
    else:
        print_table(comparison, args.path)
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)


if __name__ == "__main__":
    main()
