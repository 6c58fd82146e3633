"""genlab's SLURM launcher on a real cluster (``slurm_partition``; skipped where none answers):
a GPU request on a CPU partition and an sbatch refusal stopped in one line, failed jobs as
genlab's job errors while the others finish, submitit's warnings once, Optuna's values back;
and, without a cluster, how sinfo's GRES are read."""

import math
import pickle
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from genlab import launchers
from genlab.errors import GenlabError
from tests.conftest import TINY

# one CPU and 1 GB a job: the cluster is shared with other tests
SMALL = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
JOB_ERROR = re.compile(r"^genlab-train: error: job (\d+) \((.*)\): (.*) \(log: (\S+)\)$")
SACCT_WARNING = "Bypassing sacct error"


@pytest.fixture
def sweep(run_cli, tmp_path, slurm_partition):
    """Run ``genlab-train -m`` on the cluster's partition with a sweep dir under tmp_path."""

    def run(*overrides: str) -> subprocess.CompletedProcess:
        return run_cli(
            "genlab-train", "-m", *SMALL, *TINY, f"hydra.launcher.partition={slurm_partition}",
            f"hydra.launcher.name=genlab-test-{tmp_path.name}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides, timeout=180,
        )  # fmt: skip

    return run


def queued(tmp_path: Path) -> str:
    """squeue's lines for this test's jobs (named after tmp_path)."""
    name = f"genlab-test-{tmp_path.name}"
    return subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True).stdout


def test_gpus_on_a_cpu_partition_are_refused_before_submission(sweep, tmp_path, slurm_partition):
    if launchers.has_gpus(launchers.sinfo("-p", slurm_partition, "-o", "%G") or []):
        pytest.skip(f"partition {slurm_partition} has GPUs")
    proc = sweep("seed=1,2")  # gpus_per_node as conf/hydra/launcher/slurm.yaml has it: 1
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"genlab-train: error: hydra.launcher.gpus_per_node=1 but partition {slurm_partition} "
        "has no GPUs (sinfo: GRES (null)); set hydra.launcher.gpus_per_node=0"
    ]
    assert not (tmp_path / "sweep").exists() and queued(tmp_path) == ""


def test_an_sbatch_refusal_is_one_line_naming_the_key(sweep, tmp_path):
    proc = sweep("hydra.launcher.gpus_per_node=0", "hydra.launcher.partition=no_such_partition")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("genlab-train: error: sbatch refused the jobs: ")
    assert "hydra.launcher.partition=no_such_partition" in line
    assert not (tmp_path / "sweep").exists() and queued(tmp_path) == ""


@pytest.mark.slow
def test_two_jobs_run_and_submitit_warns_once(sweep, tmp_path):
    proc = sweep("hydra.launcher.gpus_per_node=0", "seed=1,2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job in ("0", "1"):
        run_dir = tmp_path / "sweep" / job
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert (run_dir / "csv" / "metrics.csv").is_file()
    # without accounting (this cluster) submitit warned at every poll, on three streams
    assert (proc.stdout + proc.stderr).count(SACCT_WARNING) <= 1


@pytest.mark.slow
def test_failed_jobs_are_genlab_job_errors_and_the_sweep_goes_on(sweep, tmp_path):
    # job 1: bad input genlab refuses inside the job; job 2: a crash outside genlab's task
    # (Hydra cannot make its output directory, a file in the way)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "2").write_text("in the way")
    proc = sweep("hydra.launcher.gpus_per_node=0", "seed=1,abc,3")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = {int(m[1]): m for m in map(JOB_ERROR.match, proc.stderr.splitlines()) if m}
    assert sorted(errors) == [1, 2], proc.stderr
    assert "seed=abc" in errors[1][2] and errors[1][3] == "seed='abc' must be an integer"
    assert "seed=3" in errors[2][2] and errors[2][3].startswith("FileExistsError: ")
    for m in errors.values():
        assert Path(m[4]).is_file() and ".submitit" in m[4]  # the job's own log
    assert (tmp_path / "sweep" / "0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_optuna_over_slurm_gets_the_trials_values(sweep, tmp_path):
    proc = sweep(
        "hparams_search=gan_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
        "hydra.launcher.gpus_per_node=0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    # what each job returned to the sweeper, as submitit carried it back
    values = [
        pickle.loads(p.read_bytes())[1].return_value
        for p in (tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl")
    ]
    assert len(values) == 2
    assert math.isfinite(results["best_value"]) and results["best_value"] in values


# what sinfo answers on a cluster with a CPU partition (the default) and a GPU one
SINFO = {
    ("-o", "%P"): "debug*\ngpu\n",
    ("-p", "debug", "-o", "%G"): "(null)\n",
    ("-p", "gpu", "-o", "%G"): "gpu:a100:4(S:0-1)\ngpu:a100:4\n",
}


@pytest.fixture
def fake_sinfo(monkeypatch):
    """sinfo as SINFO says; returns the argument lists it was called with."""
    calls = []

    def run(command, **kwargs):
        assert command[:2] == ["sinfo", "-h"]
        calls.append(tuple(command[2:]))
        return SimpleNamespace(returncode=0, stdout=SINFO.get(tuple(command[2:]), ""))

    monkeypatch.setattr(launchers.subprocess, "run", run)
    return calls


@pytest.mark.parametrize(
    "gres, gpus",
    [("gpu:a100:4", True), ("gpu:a100:4(S:0-1)", True), ("gpu:2,shard:8", True),
     ("craynetwork:4,gpu:2", True), ("gpu", True), ("(null)", False), ("gpu:0", False),
     ("mps:100", False), ("", False)],
)  # fmt: skip
def test_gres_names_gpus(gres, gpus):
    assert launchers.has_gpus([gres]) is gpus


def test_a_gpu_partition_is_accepted(fake_sinfo):
    launchers.check_gpus({"partition": "gpu", "gpus_per_node": 4})
    launchers.check_gpus({"partition": "gpu", "gres": "gpu:a100:2"})
    assert fake_sinfo == [("-p", "gpu", "-o", "%G")] * 2


@pytest.mark.parametrize(
    "params, key",
    [({"partition": None, "gpus_per_node": 1}, "gpus_per_node=1"),
     ({"partition": "debug", "gpus_per_task": 2}, "gpus_per_task=2"),
     ({"partition": "debug", "gres": "gpu:1"}, "gres=gpu:1")],
)  # fmt: skip
def test_a_cpu_partition_refuses_gpus_naming_the_key(fake_sinfo, params, key):
    with pytest.raises(GenlabError) as refused:
        launchers.check_gpus(params)
    assert str(refused.value).startswith(f"hydra.launcher.{key} but partition debug has no GPUs")
    assert "(sinfo: GRES (null))" in str(refused.value)


def test_no_gpu_asked_asks_sinfo_nothing(fake_sinfo):
    launchers.check_gpus({"partition": "debug", "gpus_per_node": 0, "gres": None})
    assert fake_sinfo == []


@pytest.mark.parametrize("failure", [FileNotFoundError("sinfo"), "rc=1"])
def test_without_an_answer_from_sinfo_sbatch_decides(monkeypatch, failure):
    def run(command, **kwargs):
        if isinstance(failure, Exception):
            raise failure
        return SimpleNamespace(returncode=1, stdout="", stderr="slurm_load_partitions: error")

    monkeypatch.setattr(launchers.subprocess, "run", run)
    launchers.check_gpus({"partition": "debug", "gpus_per_node": 1})
    launchers.check_gpus({"partition": None, "gpus_per_node": 1})


def test_sbatch_refusal_and_remote_trace_in_one_line():
    refusal = (
        "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    )
    line = launchers.sbatch_refusal(refusal, {"nodes": 1, "cpus_per_task": 64, "mem_gb": 1})
    assert "\n" not in line and "hydra.launcher.cpus_per_task=64" in line
    trace = (
        "Job (task=0) failed during processing with trace:\n----------------------\n"
        'Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "ValueError: bad\n\n----------------------\nYou can check full logs ..."
    )
    assert launchers.last_line(trace) == "ValueError: bad"
