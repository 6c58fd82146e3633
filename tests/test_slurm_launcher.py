"""genlab's SLURM launcher on a real cluster (``slurm_partition``; skipped where none answers):
a GPU request on a CPU partition and an sbatch refusal stopped in one line, failed jobs as
genlab's job errors while the others finish, submitit's warnings once, Optuna's values back;
and, without a cluster, how sinfo's GRES are read."""

import io
import logging
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from submitit.core.utils import FailedJobError, UncompletedJobError

from genlab import console, launchers
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
    (line,) = proc.stderr.splitlines()  # no traceback, nothing else
    assert line.startswith(
        f"genlab-train: error: hydra.launcher.gpus_per_node=1 but partition {slurm_partition} "
        "has no GPUs (sinfo: GRES "  # (null) here; a CPU node may list other GRES
    )
    assert line.endswith("); set hydra.launcher.gpus_per_node=0")
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
    # without accounting (this cluster) submitit warned at every poll, on three streams, and
    # sacct said why each time
    assert (proc.stdout + proc.stderr).count(SACCT_WARNING) <= 1
    assert "accounting storage is disabled" not in proc.stderr


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
def test_a_job_that_ends_without_a_result_is_a_job_error(sweep):
    # the batch script exits before srun starts the job, as a job killed early would end; without
    # accounting submitit waited for its result forever
    proc = sweep("hydra.launcher.gpus_per_node=0", "seed=1", "hydra.launcher.setup=[exit 3]")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    m = JOB_ERROR.match(line)
    assert m and m[1] == "0" and m[3].startswith("the job ended without a result (SLURM state ")


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


class FakeJob:
    """A submitit job whose ``results()`` returns or raises ``outcome``."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.paths = SimpleNamespace(stderr=Path("sweep/.submitit/7_0/7_0_0_log.err"))

    def results(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return [self.outcome]


@pytest.mark.parametrize(
    "outcome, cause",
    [(JobReturn(status=JobStatus.FAILED, _return_value=GenlabError("seed='a' must be an integer")),
      "seed='a' must be an integer"),
     (JobReturn(status=JobStatus.FAILED, _return_value=ValueError("bad\nmore")), "ValueError: bad"),
     (FailedJobError("Job (task=0) failed during processing with trace:\n" + "-" * 22
                     + "\nTraceback ...\nOSError: disk\n" + "-" * 22 + "\nYou can check"),
      "OSError: disk"),
     (UncompletedJobError("Job 7_0 (task: 0) with path x\nhas not produced any output "
                          "(state: OUT_OF_MEMORY)"),
      "the job ended without a result (SLURM state OUT_OF_MEMORY)")],
)  # fmt: skip
def test_a_failed_job_is_one_line_and_nan(monkeypatch, capsys, outcome, cause):
    monkeypatch.setattr(launchers, "FAILED_JOBS", {})
    monkeypatch.setattr(console, "FAILED_JOBS", launchers.FAILED_JOBS)
    monkeypatch.setattr(sys, "argv", ["genlab-train", "-m"])
    ret = launchers.collect(FakeJob(outcome), 3, ["seed=a", "hydra.launcher.mem_gb=1", "a=1"])
    assert ret.status == JobStatus.COMPLETED and math.isnan(ret.return_value)
    log = Path("sweep/.submitit/7_0/7_0_0_log.err")
    assert capsys.readouterr().err == (
        f"genlab-train: error: job 3 (a=1,seed=a): {cause} (log: {log})\n"
    )
    assert list(console.FAILED_JOBS.items()) == [(3, f"{cause} (log: {log})")]


def test_a_completed_job_is_its_value():
    done = JobReturn(status=JobStatus.COMPLETED, _return_value=0.5)
    assert launchers.collect(FakeJob(done), 0, ["seed=1"]) is done


@pytest.fixture
def submitit_streams():
    """submitit's logger with its own handlers writing to StringIOs (name: stream), and its
    filters, propagation and streams restored after."""
    import submitit  # noqa: F401  (its import configures its logger: stdout and stderr handlers)

    logger = logging.getLogger(console.SUBMITIT_LOGGER)
    streams = {h.name: io.StringIO() for h in logger.handlers}
    old = {h: h.setStream(streams[h.name]) for h in logger.handlers}
    propagate = logger.propagate
    yield streams
    for handler, stream in old.items():
        handler.setStream(stream)
        handler.removeFilter(console.BELOW_WARNING)
    logger.removeFilter(console.SUBMITIT_ONCE)
    logger.propagate = propagate


def test_each_submitit_warning_shows_once_on_stderr(submitit_streams):
    root, reached_root = logging.getLogger(), []
    keep = logging.Handler()
    keep.emit = reached_root.append  # what Hydra's root handler would print a second time
    root.addHandler(keep)
    try:
        console.quiet_submitit()
        logger = logging.getLogger(console.SUBMITIT_LOGGER)
        for call in (1, 2, 3):  # as submitit words its poll without accounting
            logger.warning(f"Call #{call} - Bypassing sacct error '-j', '{40 + call}', unit test")
        logger.warning("another warning, unit test")
        logger.info("an info line, unit test")
    finally:
        root.removeHandler(keep)
    err, out = (
        submitit_streams["submitit_err"].getvalue(),
        submitit_streams["submitit_out"].getvalue(),
    )
    assert err.count("Bypassing sacct error") == 1 and "another warning" in err
    assert "warning" not in out and "an info line" in out  # warnings on stderr only
    assert reached_root == []  # not again through Hydra's root handler
