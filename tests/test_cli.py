"""genlab-train as a user runs it: console script in a subprocess, files left behind, errors."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, TINY, load_ckpt, ok


def test_help_lists_groups_and_options(run_cli):
    proc = run_cli("genlab-train", "--help")
    ok(proc)
    groups = dict(
        line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line and "," in line
    )
    assert {"gan", "vae"} <= set(groups["model"].split(", "))
    assert groups["trainer"].split(", ") == ["cpu", "ddp", "ddp_cpu", "default", "gpu"]
    assert {"mnist5k", "cifar10", "folder", "synthetic"} <= set(groups["data"].split(", "))
    assert {"default", "fid", "none"} <= set(groups["metrics"].split(", "))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gan", "vae"])
def test_train_end_to_end_leaves_run_files(model, run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "genlab-train", f"model={model}", "debug=tiny", "logger=default", f"hydra.run.dir={run}"
    )
    ok(proc)
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    grids = {p.name for p in (run / "samples").glob("*.png")}
    assert {"samples_epoch000.png", "samples_epoch001.png"} <= grids
    if model == "vae":
        assert "reconstructions_epoch001.png" in grids
    with open(run / "csv" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert ("train/d_loss" if model == "gan" else "val/elbo") in header
    # W&B went offline by itself (no credentials in this environment) and said how to sync
    assert "wandb sync" in proc.stdout + proc.stderr
    assert list((run / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_resume_continues_step_count_and_optimizer_state(run_cli, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    ok(run_cli("genlab-train", *TINY, "trainer.max_epochs=2", f"hydra.run.dir={full}"))
    ok(run_cli("genlab-train", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={part}"))
    first = load_ckpt(part / "checkpoints" / "last.ckpt")
    ok(
        run_cli(
            "genlab-train",
            *TINY,
            "trainer.max_epochs=2",
            f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}",
            f"hydra.run.dir={part}",
        )
    )
    resumed, uninterrupted = (
        load_ckpt(part / "checkpoints" / "last.ckpt"),
        load_ckpt(full / "checkpoints" / "last.ckpt"),
    )
    assert first["global_step"] == uninterrupted["global_step"] // 2 > 0
    assert resumed["global_step"] == uninterrupted["global_step"]
    assert resumed["epoch"] == uninterrupted["epoch"]
    # Adam's per-parameter step counter continued from the checkpoint instead of restarting
    adam_steps = lambda c: float(next(iter(c["optimizer_states"][0]["state"].values()))["step"])  # noqa: E731
    assert adam_steps(resumed) == adam_steps(uninterrupted) == 2 * adam_steps(first)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gan", "vae"])
def test_ddp_cpu_two_processes_one_set_of_checkpoints(model, run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "genlab-train", f"model={model}", *TINY, "trainer=ddp_cpu", f"hydra.run.dir={run}"
    )
    ok(proc)
    out = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in out  # really two processes
    # rank 0 alone warns (the GAN: val/fid's replacement; the VAE: its unnormalised likelihood),
    # and Lightning's sync_dist advice about the run's axes is not given
    assert out.count("[genlab][WARNING]") == 1, out
    assert "sync_dist=True" not in out, out
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names.count("last.ckpt") == 1 and len(names) == 2, names
    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    # debug=tiny: 4 batches per epoch per process, 2 epochs; the GAN makes 2 optimizer steps a batch
    assert ckpt["global_step"] == (16 if model == "gan" else 8)


BAD_INPUTS = [
    (["model=nosuch"], "model"),
    (["model.nosuch=1"], "model.nosuch"),
    (["data=folder", "data.root=/nonexistent/images"], "/nonexistent/images"),
    (["data.image_size=48"], "data.image_size"),
    (["ckpt_path=/nonexistent/last.ckpt"], "/nonexistent/last.ckpt"),
]


@pytest.mark.parametrize(("args", "named"), BAD_INPUTS, ids=[a[-1] for a, _ in BAD_INPUTS])
def test_bad_input_one_line_error_no_checkpoint(args, named, run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("genlab-train", *TINY, *args, f"hydra.run.dir={run}")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("genlab-train: error:"), proc.stderr[-2000:]
    assert named in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (run / "checkpoints").exists()


def _write_images(root: Path, n: int) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (28, 28), i * 10).save(root / f"{i}.png")


@pytest.mark.parametrize("case", ["empty", "corrupt"])
def test_bad_folder_names_the_file(case, run_cli, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    if case == "corrupt":
        _write_images(root, 8)
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    run = tmp_path / "run"
    proc = run_cli(
        "genlab-train",
        *TINY,
        "data=folder",
        f"data.root={root}",
        "data.image_size=28",
        "data.channels=1",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode != 0
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("genlab-train: error:")
    assert ("broken.png" if case == "corrupt" else str(root)) in last
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_outside_checkout(tmp_path):
    """`pip install .` puts conf/ inside the package: genlab-train works away from the repo."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
    )
    wheel = next(wheels.glob("genlab-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    assert (target / "genlab" / "conf" / "train.yaml").is_file()
    proc = subprocess.run(
        [sys.executable, "-c", "import genlab.config as c; print(c.CONFIG_DIR)"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": str(BIN)},
        capture_output=True,
        text=True,
    )
    ok(proc)
    assert proc.stdout.strip() == str(target / "genlab" / "conf")
    # hydra/launcher=slurm names genlab's launcher where Hydra takes plugins from
    launcher = "hydra_plugins.genlab_launcher"
    proc = subprocess.run(
        [sys.executable, "-c", f"import {launcher} as m; print(m.__file__)"],
        cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True,
    )  # fmt: skip
    ok(proc)
    assert proc.stdout.strip() == str(target / "hydra_plugins" / "genlab_launcher.py")


def test_user_configs_through_hydra_searchpath(run_cli, tmp_path):
    """The README's way to add an experiment without forking genlab."""
    mine = tmp_path / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: vae\nseed: 123\n"
    )
    proc = run_cli(
        "genlab-train", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "experiment=mine",
        "debug=fdr", "logger=csv", "metrics=none", "--cfg", "job",
    )  # fmt: skip
    ok(proc)
    assert "_target_: genlab.models.vae.VAE" in proc.stdout and "seed: 123" in proc.stdout
