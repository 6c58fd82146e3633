"""The study's test-split table: mean ± std over seeds of each run's newest genlab-eval numbers.

genlab-compare tabulates what training logged (val/ split); this reads what genlab-eval wrote
for the official test split: RUN/eval/*/metrics.json next to RUN/.hydra/overrides.yaml.

    python experiments/fashion_mnist_likelihoods/table.py multirun/fashion_likelihoods
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

METRICS = ("val/nll", "val/elbo")
SETTING = ("model", "model.prior")  # what a row is; runs differ otherwise only in seed


def setting(run: Path) -> tuple[str, ...]:
    """The row a run belongs to, from the overrides it was launched with."""
    overrides = dict(o.split("=", 1) for o in OmegaConf.load(run / ".hydra/overrides.yaml"))
    return tuple(overrides.get(key, "standard" if key == "model.prior" else "?") for key in SETTING)


def rows(sweep: Path) -> list[str]:
    """Markdown lines: one row per setting with mean ± std of each metric on the test split."""
    found: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for run in sorted(p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")):
        evals = sorted(run.glob("eval/*/metrics.json"))
        if evals:  # the newest evaluation of this run
            found[setting(run)].append(json.loads(evals[-1].read_text()))
    head = ["model", "prior", "n", *(f"test {m}" for m in METRICS), "split size", "nll_k"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, records in found.items():
        cells = [*key, str(len(records))]
        for metric in METRICS:
            values = [r["metrics"][metric] for r in records]
            std = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.2f} ± {std:.2f}")
        protocol = {(r["protocol"]["eval_split_size"], r["protocol"]["vae_nll_k"]) for r in records}
        cells += [" / ".join(str(p[0]) for p in protocol), " / ".join(str(p[1]) for p in protocol)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: table.py SWEEP_DIR (the multirun directory of the study)")
    print("\n".join(rows(Path(sys.argv[1]))))
