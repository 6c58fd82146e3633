"""The VAE samplers study's tables: mean ± std over seeds of the newest genlab-eval numbers.

Part 1 (STUDY/samplers): classifier-FD (``fd_classifier``) of each run for each sampler, one
row per model, prior and sampler. Part 2 (STUDY/likelihoods): the test NLL and ELBO per model and
posterior. Reads RUN/eval/*/metrics.json beside RUN/.hydra/overrides.yaml.

    python experiments/vae_samplers/table.py multirun/vae_samplers
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

DEFAULTS = {"model.prior": "standard", "model.posterior": "gaussian"}


def overrides(run: Path) -> dict[str, str]:
    """The overrides a run was launched with."""
    return dict(o.split("=", 1) for o in OmegaConf.load(run / ".hydra/overrides.yaml"))


def evaluations(sweep: Path) -> list[tuple[dict[str, str], dict]]:
    """(overrides, metrics.json) of every genlab-eval of every run under ``sweep``."""
    found = []
    for run in sorted(p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")):
        for path in sorted(run.glob("eval/*/metrics.json")):
            found.append((overrides(run), json.loads(path.read_text())))
    return found


def cell(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def table(head: list[str], groups: dict[tuple, list[list[float]]]) -> list[str]:
    """Markdown lines: the key's cells, n, then mean ± std of each column of values."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, columns in groups.items():
        lines.append("| " + " | ".join([*key, str(len(columns[0])), *map(cell, columns)]) + " |")
    return lines


def sampler_rows(sweep: Path) -> list[str]:
    """classifier-FD per model, prior and sampler (the newest evaluation of each pair)."""
    newest: dict[tuple, dict[str, float]] = {}  # (model, prior, sampler, seed) -> value
    for o, record in evaluations(sweep):
        sampler = record["protocol"]["sampler"]["name"]
        key = (o["model"], o.get("model.prior", DEFAULTS["model.prior"]), sampler, o["seed"])
        newest[key] = record["metrics"]["fd_classifier"]
    groups: dict[tuple, list[list[float]]] = defaultdict(lambda: [[]])
    for (model, prior, sampler, _), value in sorted(newest.items()):
        groups[(model, prior, sampler)][0].append(value)
    return table(["model", "prior", "sampler", "n", "classifier-FD (test)"], groups)


def likelihood_rows(sweep: Path) -> list[str]:
    """Test NLL and ELBO per model and posterior (the newest evaluation of each run)."""
    newest: dict[tuple, dict] = {}
    for o, record in evaluations(sweep):
        posterior = o.get("model.posterior", DEFAULTS["model.posterior"])
        if o["model"] == "ladder_vae":
            posterior = "top-down"  # precision-weighted with the generative path, no key
        newest[(o["model"], posterior, o["seed"])] = record
    groups: dict[tuple, list[list[float]]] = defaultdict(lambda: [[], []])
    for (model, posterior, _), record in sorted(newest.items()):
        groups[(model, posterior)][0].append(record["metrics"]["val/nll"])
        groups[(model, posterior)][1].append(record["metrics"]["val/elbo"])
    return table(["model", "posterior", "n", "test val/nll", "test val/elbo"], groups)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: table.py STUDY_DIR (the directory run.sh wrote)")
    study = Path(sys.argv[1])
    print("\n".join(sampler_rows(study / "samplers")))
    print()
    print("\n".join(likelihood_rows(study / "likelihoods")))
