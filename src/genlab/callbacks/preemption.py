"""Preemption: genlab is the one owner of the signals a cluster sends before it stops a job.

- SIGUSR2: the SLURM launcher's ``--signal=USR2@signal_delay_s`` (submitit's signal),
  ``scancel --signal=USR2``. genlab writes ``last.ckpt``, requeues the job, exits 140.
- SIGUSR1: ``#SBATCH --signal=USR1@90`` (Lightning's convention), ``scancel --signal=USR1``.
  genlab writes ``last.ckpt``, requeues the job, exits 138.
- SIGTERM: preemption, ``scontrol requeue``, ``scancel``, the time limit, or a bare
  ``scancel --signal=TERM``. genlab writes ``last.ckpt`` and exits 143; it requeues only a job
  SLURM still has running (the bare signal).

Each handler only notes the signal. At the end of the next training batch the ranks agree on
it (one all-reduce), and Lightning's own SIGTERM path stops the loop where its counters are
consistent: ``LastCheckpoint`` writes the mid-epoch ``last.ckpt`` that exact resume reads. Then
``requeue`` runs ``scontrol requeue`` once, from global rank 0. Where SLURM is already ending
the job, a SIGTERM is not requeued again: SLURM requeues a preempted job and one that
``scontrol requeue`` named itself, and a ``scancel`` or a time limit ends the job as asked (the
launcher's USR2 comes ``signal_delay_s`` before the limit for that). Lightning's SLURM
auto-requeue is off (``training.build``), and submitit's USR2 handler is displaced while genlab
trains: either would requeue a second time, and neither writes the checkpoint at the signal.
USR1 and USR2 are taken only inside a SLURM job.
"""

import logging
import os
import signal
import subprocess
import threading

import pytorch_lightning as pl

log = logging.getLogger("genlab")

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def slurm_job_id() -> str | None:
    """This SLURM job's id as ``scontrol`` names it (``ARRAY_TASK`` form in an array), or None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def slurm_job_state(job: str) -> str | None:
    """SLURM's state of ``job`` (``RUNNING``, ``COMPLETING``...), or None if squeue cannot say."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    )


class Preemption(pl.Callback):
    """Notes SIGTERM (and USR1/USR2 in a SLURM job); stops training after the batch, all ranks
    together; ``requeue`` then puts the job back in SLURM's queue once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def signals(self) -> tuple[int, ...]:
        return (signal.SIGTERM, *(REQUEUE_SIGNALS if slurm_job_id() else ()))

    def install(self) -> None:
        """Take the signals (again: Lightning registers its own handlers when fit starts)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals():
            previous = signal.signal(signum, self._note)
            self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        """Give the signals back to whoever held them before ``install``."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum: int, frame: object) -> None:
        # only note it: the save needs a consistent point, which the batch end gives
        if self.signum is None or signum in REQUEUE_SIGNALS:
            self.signum = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after fit registered Lightning's SIGTERM notifier, which would stop ranks one by one
        self.install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank the same decision, whichever got the signal first
        reduce = trainer.strategy.reduce_boolean_decision
        if reduce(self.signum is not None, all=False):
            if reduce(self.signum in REQUEUE_SIGNALS, all=False):
                self.signum = self.signum if self.signum in REQUEUE_SIGNALS else signal.SIGUSR2
            else:
                self.signum = signal.SIGTERM  # another rank's, maybe: this one follows it
            # Lightning's SIGTERM stop: it raises SIGTERMException once the batch is counted,
            # and LastCheckpoint writes last.ckpt there
            trainer._signal_connector.received_sigterm = True

    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    def requeue(self, trainer: pl.Trainer) -> None:
        """Put this SLURM job back in the queue: once, from global rank 0, unless SLURM will."""
        job = slurm_job_id()
        if job is None or not trainer.is_global_zero:
            return
        name = signal.Signals(self.signum or signal.SIGTERM).name
        if self.signum not in REQUEUE_SIGNALS:
            state = slurm_job_state(job)
            if state != "RUNNING":  # SLURM is ending it: it requeues, or the user asked
                log.info(f"{name}: SLURM job {job} is {state or 'gone'}; not requeued by genlab")
                return
        try:
            done = subprocess.run(
                ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            done = subprocess.CompletedProcess([], 1, "", str(e))
        if done.returncode == 0:
            log.info(f"{name}: requeued SLURM job {job}; it resumes from last.ckpt")
        else:
            why = ((done.stderr or done.stdout).strip().splitlines() or ["scontrol failed"])[0]
            log.warning(
                f"{name}: could not requeue SLURM job {job} ({why}); "
                "submit it again with auto_resume=true in the same run directory"
            )
