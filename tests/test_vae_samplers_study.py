"""experiments/vae_samplers/table.py: the study's tables from genlab-eval's metrics.json files."""

import importlib.util
import json

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location(
    "vae_samplers_table", REPO / "experiments/vae_samplers/table.py"
)
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)


def run(root, name, overrides, evals):
    """A run directory with its overrides and one metrics.json per (timestamp, record)."""
    (root / name / ".hydra").mkdir(parents=True)
    (root / name / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    for stamp, record in evals:
        (root / name / "eval" / stamp).mkdir(parents=True)
        (root / name / "eval" / stamp / "metrics.json").write_text(json.dumps(record))


def scored(sampler, fd):
    return {"metrics": {"fd_classifier": fd}, "protocol": {"sampler": {"name": sampler}}}


def test_sampler_rows_take_each_runs_newest_score_per_sampler(tmp_path):
    for seed, (prior, gmm) in enumerate([(30.0, 10.0), (34.0, 14.0)], start=1):
        run(tmp_path, f"vae_{seed}", ["model=vae", f"seed={seed}"], [
            ("2026-01-01_00-00-00", scored("prior", 99.0)),  # superseded by the later one
            ("2026-01-02_00-00-00", scored("prior", prior)),
            ("2026-01-02_00-00-01", scored("gmm", gmm)),
        ])  # fmt: skip
    run(tmp_path, "vamp_1", ["model=vae", "model.prior=vamp", "seed=1"],
        [("2026-01-02_00-00-00", scored("prior", 20.0))])  # fmt: skip
    lines = table.sampler_rows(tmp_path)
    assert lines[2:] == [
        "| vae | standard | gmm | 2 | 12.00 ± 2.83 |",
        "| vae | standard | prior | 2 | 32.00 ± 2.83 |",
        "| vae | vamp | prior | 1 | 20.00 ± nan |",
    ]


def test_likelihood_rows_group_by_model_and_posterior(tmp_path):
    for seed, nll in enumerate([250.0, 252.0], start=1):
        record = {"metrics": {"val/nll": nll, "val/elbo": -nll - 4}, "protocol": {}}
        run(tmp_path, f"iaf_{seed}", ["model=vae", "model.posterior=iaf", f"seed={seed}"],
            [("2026-01-02_00-00-00", record)])  # fmt: skip
    record = {"metrics": {"val/nll": 260.0, "val/elbo": -265.0}, "protocol": {}}
    run(tmp_path, "ladder_1", ["model=ladder_vae", "seed=1"], [("2026-01-02_00-00-00", record)])
    lines = table.likelihood_rows(tmp_path)
    assert lines[2:] == [
        "| ladder_vae | top-down | 1 | 260.00 ± nan | -265.00 ± nan |",
        "| vae | iaf | 2 | 251.00 ± 1.41 | -255.00 ± 1.41 |",
    ]
