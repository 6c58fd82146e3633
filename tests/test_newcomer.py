"""What a newcomer types and gets wrong fails at the door: one line, exit 2, nothing written.

Checks that need only the composed config run before the first side effect: no run directory,
no W&B run, no model table. Each case here used to start the run and fail in it.
"""

import os
import re
import subprocess

import pytest

from tests.conftest import BIN, cli_env, ok

# each bad setting, and what its one line must name
AT_THE_DOOR = [
    (["++trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches=2"),
    (["++trainer.gradient_clip_val=1.0"], "model.grad_clip"),
    (["model=vqgan", "++trainer.gradient_clip_val=1.0"], "VQGAN"),
    (["model.pack=3", "data.batch_size=16"], "model.pack=3 does not divide data.batch_size=16"),
]


@pytest.mark.parametrize(("overrides", "named"), AT_THE_DOOR, ids=lambda x: str(x))
def test_a_setting_the_model_cannot_take_fails_before_the_run_starts(
    run_cli, tmp_path, overrides, named
):
    run = tmp_path / "run"
    # the default logger too: a W&B run would be created before a late failure
    proc = run_cli("genlab-train", "debug=tiny", "metrics=none", *overrides,
                   f"hydra.run.dir={run}")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("genlab-train: error:") and named in line, line
    assert proc.stdout.strip() == ""  # no model table, no W&B hint
    assert not run.exists()


def test_a_vae_accumulates_gradients_as_the_readme_shows(run_cli, tmp_path):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    ok(run_cli("genlab-train", "debug=tiny", "logger=csv", "metrics=none", "model=vae",
               "++trainer.accumulate_grad_batches=2", run))  # fmt: skip
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("tool", ["genlab-eval", "genlab-sample", "genlab-export"])
@pytest.mark.parametrize("given", [[], ["ckpt_path=null"]], ids=["unset", "null"])
def test_a_missing_ckpt_path_is_named_as_required(run_cli, tmp_path, tool, given):
    proc = run_cli(tool, *given)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line == f"{tool}: error: ckpt_path is required: add ckpt_path=... to the command"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("tool", ["genlab-train", "genlab-eval", "genlab-sample"])
def test_a_directory_as_ckpt_path_lists_its_checkpoints(run_cli, tmp_path, tool):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.ckpt", "best-epoch004.ckpt"):
        (run / "checkpoints" / name).touch()
    proc = run_cli(tool, "ckpt_path=run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "ckpt_path=run: a directory" in line, line
    assert line.endswith(
        "the checkpoints in it: run/checkpoints/best-epoch004.ckpt, run/checkpoints/last.ckpt"
    ), line


def test_save_samples_without_sample_metrics_is_refused(run_cli, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.touch()  # refused before the file is read
    proc = run_cli("genlab-eval", f"ckpt_path={ckpt}", "metrics=none", "save_samples=true")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "save_samples=true" in line and "metrics=none" in line, line
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    ("tool", "override", "hint"),
    [
        ("genlab-train", "model.optimiser_g.lr=1e-4", "(did you mean model.optimizer_g or "),
        ("genlab-train", "data.batchsize=32", "(did you mean data.batch_size?)"),
        ("genlab-train", "model.likelihood=bernoulli", "model.likelihood is a key of model=hvae2, "
         "model=ladder_vae, model=vae, model=vqvae; this run has model=gan)"),
        ("genlab-eval", "nll=3", "(did you mean nll_k?)"),
    ],
)  # fmt: skip
def test_an_unknown_key_suggests_the_one_meant(run_cli, tmp_path, tool, override, hint):
    proc = (
        run_cli(tool, "ckpt_path=x.ckpt", override)
        if tool == "genlab-eval"
        else run_cli(tool, override)
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "is not in struct" in line and line.endswith(hint) or hint in line, line


# FID due at no epoch end of these short runs: it runs in the validation after fit
FID = ["metrics=fid", "metrics.num_samples=16", "metrics.num_real=16", "metrics.batch_size=16",
       "metrics.every_n_epochs=5", "metrics.inception_sha256=null"]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (["metrics=none", "trainer.max_epochs=1"], "best-epoch000.ckpt"),  # val/swd, at epoch end
        ([*FID, "trainer.max_epochs=1"], "best-epoch000.ckpt"),  # by the validation after fit
        ([*FID, "trainer.max_epochs=-1", "trainer.max_steps=14"], "best-epoch001.ckpt"),  # 1.5
    ],
    ids=["no-sample-metrics", "sample-metrics", "max-steps"],
)
def test_the_best_checkpoint_is_named_after_the_epoch_it_holds(
    run_cli, tmp_path, weights, overrides, name
):
    """0-based, as Lightning counts: best-epoch000.ckpt is the first epoch's ("epoch 1/1")."""
    run = tmp_path / "run"
    if "metrics=fid" in overrides:
        overrides = [*overrides, f"metrics.inception_weights={weights}",
                     f"metrics.cache_dir={tmp_path}/cache"]  # fmt: skip
    ok(run_cli("genlab-train", "debug=tiny", "logger=csv", "data=synthetic", *overrides,
               f"hydra.run.dir={run}"))  # fmt: skip
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [name, "last.ckpt"]


# where a data source is missing, and what its one line must name
MISSING_DATA = [
    (["data=folder", "data.root=/nonexistent/images"], "data.root=/nonexistent/images"),
    (["data=fashion_mnist", "data.root=/nonexistent/fmnist"], "data.root=/nonexistent/fmnist"),
]


@pytest.mark.parametrize(("overrides", "named"), MISSING_DATA, ids=lambda x: str(x))
def test_a_missing_dataset_is_said_first_and_alone(run_cli, tmp_path, overrides, named):
    """Default metrics and logger: no FID-off warning or W&B line comes before the error."""
    run = tmp_path / "run"
    proc = run_cli("genlab-train", "trainer.max_epochs=1", *overrides, f"hydra.run.dir={run}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("genlab-train: error:") and named in line, line
    assert "WARNING" not in proc.stdout and "W&B" not in proc.stdout, proc.stdout
    assert not run.exists()


def said_twice(out: str) -> list[str]:
    """Warning lines (genlab's, Python's) that appear more than once, timestamps dropped."""
    said = [
        re.sub(r"^\[[^]]*\]", "", line)
        for line in out.splitlines()
        if "[WARNING]" in line or re.search(r"\.py:\d+: ", line)
    ]
    return sorted({line for line in said if said.count(line) > 1})


def test_a_default_run_says_each_thing_once(tmp_path):
    """The default logger (W&B offline) with srun on PATH, no Inception weights: Lightning's srun
    hint once, and FID/IS/KID off with the monitor that replaces val/fid in one warning."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    env = cli_env(tmp_path)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        [str(BIN / "genlab-train"), "data=synthetic", "trainer.max_epochs=1",
         "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert said_twice(out) == [], out
    assert out.count("The `srun` command is available") == 1, out
    (off,) = [line for line in out.splitlines() if "[genlab][WARNING]" in line]
    assert "FID/IS/KID are off" in off and off.endswith("; val/fid is not computed; monitoring "
                                                        "val/swd"), off  # fmt: skip
