"""Sweeps from the command line: multirun, Optuna, DDP inside -m, SLURM config, W&B records."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from genlab.config import CONFIG_DIR
from genlab.training import flat_config
from tests.conftest import BIN, REPO, TINY, compose_train, ok


def _final(run: Path, key: str) -> float:
    import csv

    with open(run / "csv" / "metrics.csv") as f:
        values = [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    return values[-1]


def wandb_records(run: Path) -> list[dict]:
    """The records of a run's offline W&B file, read by W&B's own reader (`wandb leet inspect`)."""
    (wandb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    out = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_grid_sweep_gives_each_job_its_own_dir(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("genlab-train", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}")
    ok(proc)
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweep / job / "csv" / "metrics.csv").is_file()
    overrides = [
        yaml.safe_load((sweep / j / ".hydra" / "overrides.yaml").read_text()) for j in "01"
    ]
    assert "seed=1" in overrides[0] and "seed=2" in overrides[1]


@pytest.mark.slow
def test_optuna_sweep_receives_the_returned_metric(run_cli, tmp_path):
    sweep = tmp_path / "optuna"
    proc = run_cli(
        "genlab-train", "hparams_search=gan_optuna", *TINY, "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    ok(proc)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # without Inception weights the GAN optimises val/swd; train returned its final value
    finals = [_final(sweep / j, "val/swd") for j in ("0", "1")]
    assert results["best_value"] == pytest.approx(min(finals), rel=1e-6)
    assert set(results["best_params"]) == {
        "model.optimizer_g.lr", "model.optimizer_d.lr", "model.loss", "model.n_critic",
        "data.batch_size",
    }  # fmt: skip


def _exit_code(records: list[dict]) -> int:
    return next(r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit")


@pytest.mark.slow
def test_failed_job_does_not_stop_the_sweep_and_wandb_records_it(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 fails inside fit (after W&B started): an infinite penalty, a non-finite loss
    proc = run_cli(
        "genlab-train", "-m", "debug=tiny", "logger=wandb", "metrics=none",
        "model.gp_weight=inf,0", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert proc.returncode == 2
    # one line for the failed job, naming it; not repeated, no Hydra report after it
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("genlab-train: error: job 0"), errors
    assert "model.gp_weight=inf" in errors[0] and "non-finite" in errors[0]
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    failed, ok = wandb_records(sweep / "0"), wandb_records(sweep / "1")
    assert _exit_code(failed) == 1 and _exit_code(ok) == 0
    config = {}
    for r in ok:
        if r["type"] == "config":
            config.update(r["config"]["update"])
    # flattened: one key per leaf, so the W&B table filters and groups by any of them
    assert config["model.optimizer_g.lr"] == 0.0002 and config["model.gp_weight"] == 0
    history = [r["history"]["item"] for r in ok if r["type"] == "history"]
    assert any("train/d_loss" in h for h in history)
    files = [f["path"] for r in ok if r["type"] == "files" for f in r["files"]["files"]]
    assert any(p.startswith("media/images/") and p.endswith(".png") for p in files)
    run = next(r["run"] for r in ok if r["type"] == "run")
    assert run["run_group"] == "/".join(sweep.parts[-2:]) and run["job_type"] == "train"


@pytest.mark.slow
def test_multirun_with_ddp_cpu_spawns_instead_of_relaunching(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "genlab-train", "-m", *TINY, "trainer=ddp_cpu", "seed=1,2", f"hydra.sweep.dir={sweep}",
        timeout=900,
    )  # fmt: skip
    ok(proc)
    assert "ddp_spawn" in proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # really two processes
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()


def test_slurm_launcher_composes_with_its_keys(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.nodes == 1
    assert launcher.timeout_min == 1440 and launcher.max_num_timeout == 3


@pytest.mark.slow
def test_submitit_local_executor_runs_a_tiny_job(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "genlab-train", "-m", "hydra/launcher=submitit_local", *TINY, f"hydra.sweep.dir={sweep}",
        timeout=900,
    )  # fmt: skip
    ok(proc)
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()


def test_wandb_sweep_file_drives_genlab_train(tmp_path):
    sweep = yaml.safe_load((REPO / "experiments" / "wandb_sweep.yaml").read_text())
    assert (BIN / sweep["program"]).is_file()
    assert sweep["command"][:3] == ["${env}", "${program}", "${args_no_hyphens}"]
    # what the agent would pass: one key=value per parameter, then the fixed arguments
    overrides = [
        f"{k}={v['values'][0] if 'values' in v else v['min']}"
        for k, v in sweep["parameters"].items()
    ]
    cfg = compose_train([*overrides, *sweep["command"][3:]], tmp_path)
    flat = flat_config(cfg)
    for key in sweep["parameters"]:
        assert key in flat, key
    assert sweep["metric"]["name"] in {"val/swd", "val/fid"}
