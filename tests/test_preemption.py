"""Preemption on a real SLURM cluster (experiments/slurm/local_cluster.sh): every signal path a
cluster uses writes the mid-epoch last.ckpt, the job is requeued once, and the requeued job
ends with the weights, CSV rows and W&B run of an uninterrupted one."""

import csv
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from genlab.loggers import ID_FILE
from tests.conftest import BIN, REPO, TINY, cli_env, load_ckpt, ok
from tests.test_reliability import _same_training_state
from tests.test_wandb_resume import axis, fragments, run_id

# 2 epochs of 20 batches; SLURM is asked for the signal after batch 5 of the first epoch
RUN = [
    *TINY, "logger=[csv,wandb]", "data=synthetic", "data.limit=null", "seed=7",
    "trainer.deterministic=true", "trainer.limit_train_batches=20", "trainer.max_epochs=2",
    "callbacks.progress_bar=null",
]  # fmt: skip
STEPS_PER_EPOCH = 2 * 20  # a GAN batch is a D and a G step
SAVED = re.compile(r"stopped by a signal: saved (\S+) at step (\d+)")


class AskSlurm(pl.Callback):
    """After batch ``batch`` of the first epoch, ask SLURM for ``action`` on this job, and wait
    for it to arrive. The requeued run resumes after that batch, so it asks once."""

    def __init__(self, action: str, batch: int = 5) -> None:
        self.action, self.batch = action, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) != (0, self.batch) or not trainer.is_global_zero:
            return
        job = os.environ["SLURM_JOB_ID"]  # the raw id names an array task too
        command = {
            "requeue": ["scontrol", "requeue", job],
            "USR1": ["scancel", "--signal=USR1", job],
            "USR2": ["scancel", "--signal=USR2", job],
            "TERM": ["scancel", "--signal=TERM", job],
        }[self.action]
        subprocess.run(command, check=True, timeout=60)
        time.sleep(3)  # SLURM delivers it to every task of the job meanwhile


def ask(action: str) -> list[str]:
    target = "tests.test_preemption.AskSlurm"
    return [f"+callbacks.ask.{k}={v}" for k, v in {"_target_": target, "action": action}.items()]


def env(tmp_path: Path) -> dict[str, str]:
    """The user's environment (no W&B credentials: offline) with AskSlurm importable."""
    return {**cli_env(tmp_path), "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The same run, never stopped, outside SLURM: its run directory."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run = tmp / "run"
    proc = subprocess.run(
        [str(BIN / "genlab-train"), *RUN, f"hydra.run.dir={run}"],
        cwd=tmp, env=env(tmp), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    ok(proc)
    return run


def sbatch(tmp_path: Path, partition: str, run: Path, *args: str, tasks: int = 1) -> str:
    """Submit ``srun genlab-train`` as a plain batch script (no submitit); returns the job id."""
    script = tmp_path / "job.sh"
    command = " ".join([str(BIN / "genlab-train"), *RUN, f"hydra.run.dir={run}", *args])
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --job-name=genlab --partition={partition} --ntasks-per-node={tasks}\n"
        "#SBATCH --cpus-per-task=1 --mem=2G\n"
        f"#SBATCH --requeue --open-mode=append --output={tmp_path}/job.out\n"
        f"srun {command}\n"
    )
    out = subprocess.run(
        ["sbatch", "--parsable", str(script)],
        cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def wait_for(job: str, timeout: float = 420) -> None:
    """Until SLURM no longer lists ``job`` (finished; a requeue lists it again as pending)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(1)
    subprocess.run(["scancel", job], timeout=30)
    raise AssertionError(f"job {job} still in the queue after {timeout} s")


def restarts(job: str) -> int:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    found = re.search(r"Restarts=(\d+)", out.stdout)
    assert found, out.stdout + out.stderr
    return int(found.group(1))


def rows(run: Path) -> list[tuple[str, str]]:
    """(step, epoch) of every CSV row, in file order."""
    with open(run / "csv" / "metrics.csv") as f:
        return [(r["step"], r["epoch"]) for r in csv.DictReader(f)]


def same_as_uninterrupted(run: Path, full: Path, log: str, sigterm: bool = False) -> None:
    """Stopped once mid-epoch 0, resumed from there, and ended as the uninterrupted run did.

    ``sigterm``: SLURM's SIGTERM reached W&B's service process too, which ended without
    writing its buffer: the first W&B fragment is empty (W&B's behaviour, said in README).
    """
    saved = SAVED.findall(log)
    assert len(saved) == 1, log[-4000:]  # stopped once
    path, step = saved[0]
    assert Path(path) == run / "checkpoints" / "last.ckpt"
    assert 10 < int(step) < STEPS_PER_EPOCH, log[-4000:]  # inside the first epoch
    assert f"auto_resume: continuing from {path}" in log
    _same_training_state(load_ckpt(full / "checkpoints" / "last.ckpt"), load_ckpt(Path(path)))
    assert rows(run) == rows(full)  # CSV: no row repeated or missing
    # W&B: one run, in two fragments (one per start); the second goes on where the first ended
    first, second = fragments(run)
    (whole,) = fragments(full)
    key = "trainer/global_step"  # Lightning's logging step, as the CSV's
    if sigterm:
        assert not first and run_id(second) == (run / ID_FILE).read_text().strip()
        # the rows genlab could not send at the stop come first in the resumed fragment
        assert axis(second, key) == [s for s in axis(whole, key) if s >= min(axis(second, key))]
        return
    assert run_id(first) == run_id(second)
    assert max(axis(first, key)) < min(axis(second, key))
    assert axis(first, key) + axis(second, key) == axis(whole, key)


@pytest.mark.slow
@pytest.mark.parametrize("action", ["USR1", "TERM", "requeue"])
def test_sbatch_job_preempted_resumes_to_the_same_weights(
    action, slurm_partition, uninterrupted, tmp_path
):
    """A plain ``sbatch`` script: Lightning's SIGUSR1 convention, a bare SIGTERM, and
    ``scontrol requeue`` (SLURM's SIGTERM, then its own requeue)."""
    run = tmp_path / "run"
    job = sbatch(tmp_path, slurm_partition, run, *ask(action))
    wait_for(job)
    log = (tmp_path / "job.out").read_text()
    assert restarts(job) == 1, log[-4000:]  # requeued once, by genlab or by SLURM
    # genlab requeues at USR1 and at a bare SIGTERM; SLURM itself at its own requeue
    assert log.count("requeued SLURM job") == (action != "requeue"), log[-4000:]
    same_as_uninterrupted(run, uninterrupted, log, sigterm=action != "USR1")


@pytest.mark.slow
def test_sweep_job_preempted_by_usr2_resumes_to_the_same_weights(
    slurm_partition, uninterrupted, tmp_path
):
    """The SLURM launcher (submitit) and its USR2: one requeue, the sweep gets the value."""
    sweep = tmp_path / "sweep"
    launcher = [
        "hydra/launcher=slurm", f"hydra.launcher.partition={slurm_partition}",
        "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30",
    ]  # fmt: skip
    proc = subprocess.run(
        [str(BIN / "genlab-train"), "-m", *launcher, *RUN, *ask("USR2"),
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    ok(proc)
    (log_file,) = sweep.glob(".submitit/*/*_0_log.out")
    log = log_file.read_text() + next(log_file.parent.glob("*_0_log.err")).read_text()
    job = log_file.parent.name
    assert restarts(job) == 1, log[-4000:]
    assert log.count("requeued SLURM job") == 1, log[-4000:]
    same_as_uninterrupted(sweep / "0", uninterrupted, log)


def test_the_signals_genlab_takes(monkeypatch):
    """SIGTERM always; USR1 and USR2 only inside a SLURM job; all given back afterwards."""
    from genlab.callbacks.preemption import Preemption, slurm_job_id

    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    owner = Preemption()
    assert owner.signals() == (signal.SIGTERM,)
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert owner.signals() == (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert slurm_job_id() == "10_2"  # what scontrol names an array task
    owner.install()
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM does not undo the requeue signal
    assert owner.signum == signal.SIGUSR2 and owner.exit_code() == 140
    owner.restore()
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.slow
def test_ddp_under_srun_is_preempted_and_resumes_to_the_same_weights(slurm_partition, tmp_path):
    """One job of 2 tasks: the ranks come from SLURM, one set of checkpoints and logs."""
    ddp = ["trainer=ddp_cpu", "trainer.devices=2", "logger=csv"]
    full = tmp_path / "full"
    proc = subprocess.run(
        [str(BIN / "genlab-train"), *RUN, *ddp, f"hydra.run.dir={full}"],
        cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    ok(proc)  # the same run outside SLURM: Lightning starts the second process
    run = tmp_path / "run"
    job = sbatch(tmp_path, slurm_partition, run, *ddp, *ask("USR1"), tasks=2)
    wait_for(job)
    log = (tmp_path / "job.out").read_text()
    assert restarts(job) == 1, log[-4000:]
    assert log.count("requeued SLURM job") == 1, log[-4000:]  # by rank 0 only
    assert log.count("distributed_backend=gloo") == 2, log[-4000:]  # one DDP start per run
    saved = SAVED.findall(log)
    assert len(saved) == 1 and 10 < int(saved[0][1]) < STEPS_PER_EPOCH, log[-4000:]
    _same_training_state(load_ckpt(full / "checkpoints" / "last.ckpt"),
                         load_ckpt(run / "checkpoints" / "last.ckpt"))  # fmt: skip
    assert rows(run) == rows(full)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        p.name for p in (full / "checkpoints").iterdir()
    )
