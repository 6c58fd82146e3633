"""Start-up: help, config printing and config errors answer before torch or Lightning load."""

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, cli_env

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "torchmetrics", "wandb", "matplotlib")
# Runs an entry point's main() in this interpreter, then records which heavy modules it loaded.
PROBE = """
import importlib, json, sys
module, out, *args = sys.argv[1:]
sys.argv = [module, *args]
try:
    importlib.import_module(module).main()
    status = 0
except SystemExit as e:
    status = e.code
heavy = [m for m in json.loads(out.split("|", 1)[0]) if m in sys.modules]
open(out.split("|", 1)[1], "w").write(json.dumps({"status": status, "heavy": heavy}))
"""


def probe(tmp_path: Path, module: str, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``module.main()`` with ``args`` in a fresh interpreter; its exit status and imports."""
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, module, f"{json.dumps(HEAVY)}|{out}", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.is_file(), proc.stderr[-3000:]
    return json.loads(out.read_text()), proc


LIGHT = [
    ("genlab.cli.train", ["--help"], 0),
    ("genlab.cli.train", ["--cfg", "job"], 0),
    ("genlab.cli.train", ["--cfg", "hydra"], 0),
    ("genlab.cli.train", ["--info"], 0),
    ("genlab.cli.train", ["nosuch=1"], 2),
    ("genlab.cli.train", ["model=nosuch"], 2),
    ("genlab.cli.train", ["seed=abc"], 2),
    ("genlab.cli.train", ["ckpt_path=/nonexistent/last.ckpt", *TINY], 2),
    ("genlab.cli.eval", ["--help"], 0),
    ("genlab.cli.eval", ["--cfg", "job", "ckpt_path=/x/checkpoints/last.ckpt"], 0),
    ("genlab.cli.eval", ["ckpt_path=nonexistent/checkpoints/last.ckpt"], 2),
    ("genlab.cli.eval", ["ckpt_path=nonexistent/checkpoints/last.ckpt", "split=testing"], 2),
    ("genlab.cli.sample", ["--help"], 0),
    ("genlab.cli.sample", ["ckpt_path=/nonexistent/last.ckpt"], 2),
    ("genlab.cli.sample", ["ckpt_path=/nonexistent/last.ckpt", "nrow=0"], 2),
    ("genlab.cli.compare", ["--help"], 0),
    ("genlab.cli.prepare", ["--help"], 0),
    ("genlab.cli.prepare", [], 2),
    ("genlab.cli.prepare", ["data=prepared"], 2),
]
CLI = REPO / "src" / "genlab" / "cli"
SCRIPTS = {
    ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.dist.name == "genlab"
}


@pytest.mark.parametrize(
    ("module", "args", "status"), LIGHT, ids=[f"{m} {' '.join(a)}" for m, a, _ in LIGHT]
)
def test_answers_without_heavy_imports(module, args, status, tmp_path):
    """An import slipped back into the top of an entry point (or config.py) fails here."""
    result, proc = probe(tmp_path, module, *args)
    assert result["status"] == status, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert result["heavy"] == [], f"{module} {args} imported {result['heavy']}"
    if status == 2:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and ": error: " in lines[0], proc.stderr[-2000:]
        # a run directory Hydra made for a job that failed on its input is gone again
        assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.json"]


@pytest.mark.parametrize("module", sorted(f"genlab.cli.{p.stem}" for p in CLI.glob("[!_]*.py")))
def test_no_module_of_the_cli_folder_imports_anything_heavy(module, tmp_path):
    """One folder, one rule: importing any module under cli/ loads none of HEAVY."""
    check = (
        f"import json, sys, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [], f"{module} imported {proc.stdout.strip()}"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_door_answers_help_with_its_own_help(script, tmp_path):
    """Each console script lives in cli/ and its --help names it, before any config is needed."""
    module, _, function = SCRIPTS[script].partition(":")
    assert module.startswith("genlab.cli.") and function == "main", SCRIPTS[script]
    result, proc = probe(tmp_path, module, "--help")
    assert result["status"] == 0 and result["heavy"] == [], proc.stderr[-2000:]
    assert proc.stdout.lstrip().startswith((f"{script}:", f"usage: {script}")), proc.stdout[:500]


def test_python_dash_m_help_lists_groups(tmp_path):
    """The thin entry point still reaches Hydra's help (the groups come from conf/)."""
    result, proc = probe(tmp_path, "genlab.cli.train", "--help")
    assert result["status"] == 0
    assert "model: " in proc.stdout and "gan" in proc.stdout


@pytest.mark.parametrize(
    ("script", "args", "leftover"),
    [
        ("genlab-eval", ["ckpt_path=run/checkpoints/missing.ckpt"], "run"),
        ("genlab-sample", ["ckpt_path=missing.ckpt"], "outputs"),
        ("genlab-sample", ["ckpt_path=missing.ckpt", "num_samples=0"], "outputs"),
    ],
)
def test_failed_eval_or_sample_leaves_no_run_dir(script, args, leftover, run_cli, tmp_path):
    proc = run_cli(script, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"{script}: error: ")
    assert not (tmp_path / leftover).exists(), sorted(map(str, (tmp_path / leftover).rglob("*")))


def test_unreadable_checkpoint_leaves_no_eval_dir(run_cli, tmp_path):
    """Found after torch loads (the file exists): the empty eval directory still goes."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    proc = run_cli("genlab-eval", f"ckpt_path={ckpt}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not a readable checkpoint" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


def test_run_dir_with_results_is_kept(tmp_path):
    """Only Hydra's own files make a run directory disposable."""
    from genlab.cli.report import discard_empty_run_dir

    run = tmp_path / "a" / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").write_text("")
    (run / "csv").mkdir()
    assert not discard_empty_run_dir(run, stop=tmp_path)
    (run / "csv").rmdir()
    assert discard_empty_run_dir(run, stop=tmp_path)
    assert not (tmp_path / "a").exists() and tmp_path.is_dir()


@pytest.mark.parametrize(
    "args",
    [["data=folder", "data.root=/nonexistent/images"], ["data.image_size=48"]],
    ids=["data.root", "data.image_size"],
)
def test_input_errors_come_before_lightning_lines(args, run_cli, tmp_path):
    """Bad data found while building: the error line, no "Seed set" or GPU/TPU lines first."""
    run = tmp_path / "run"
    proc = run_cli("genlab-train", *TINY, *args, f"hydra.run.dir={run}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    for noise in ("Seed set", "GPU available", "TPU available", "Tip:"):
        assert noise not in out, out[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("genlab-train: error:")
    assert not run.exists()
