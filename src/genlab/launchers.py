"""genlab's SLURM launcher: hydra-submitit-launcher's, with its failures in genlab's words.

A GPU request on a partition without GPUs is refused before anything is submitted, an sbatch
refusal is one line naming the ``hydra.launcher`` key at fault, and a job that fails (bad input
refused inside it, or a crash) is one line in the submitting process and NaN to the sweeper,
while the other jobs go on; ``report_errors`` exits 2 at the end. Hydra imports this at the
start of ``genlab-train -m``: nothing heavy at module level (submitit is imported when used).
"""

import contextlib
import getpass
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from genlab.console import FAILED_JOBS, job_error, quiet_submitit
from genlab.errors import GenlabError, first_line

# sbatch's refusals and the hydra.launcher keys each can be about
SBATCH_KEYS = {
    "Invalid generic resource (gres) specification": ("gpus_per_node", "gpus_per_task", "gres"),
    "Invalid partition name specified": ("partition",),
    "invalid partition specified": ("partition",),
    "Invalid account": ("account",),
    "Invalid qos specification": ("qos",),
    "Requested time limit is invalid": ("timeout_min",),
    "Node count specification invalid": ("nodes",),
    "Memory specification can not be satisfied": ("mem_gb",),
    "More processors requested than permitted": ("cpus_per_task", "tasks_per_node"),
    "Requested node configuration is not available": (
        "nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "gpus_per_node"
    ),
}  # fmt: skip


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """One SLURM job per run of a sweep (``hydra/launcher=slurm``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """In the job: run it; a job error's one line travels back as a failed result."""
        job_num = args[2] if len(args) > 2 else kwargs["job_num"]
        ret = super().__call__(*args, **kwargs)
        if job_num in FAILED_JOBS:  # run_task said it in the job's log, and returned NaN
            ret.status, ret.return_value = JobStatus.FAILED, GenlabError(FAILED_JOBS[job_num])
        return ret

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Check the request, submit one job array, and collect each job's result."""
        assert self.config is not None
        runs = list(enumerate(map(list, job_overrides), start=initial_job_idx))
        try:
            check_gpus(self.params)
            jobs = self.submit(runs)
        except GenlabError:  # nothing was submitted: leave no sweep directory behind
            discard_unsubmitted(Path(str(self.config.hydra.sweep.dir)))
            raise
        return [
            collect(job, num, overrides) for job, (num, overrides) in zip(jobs, runs, strict=True)
        ]

    def submit(self, runs: list[tuple[int, list[str]]]) -> list[Any]:
        """Submit ``(job number, overrides)`` runs as one job array; sbatch's refusal in a line."""
        import submitit

        quiet_submitit()
        executor = self.executor()
        for num, overrides in runs:
            submitit_launcher.log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        try:  # submitit prints sbatch's refusal before raising it: said once, below
            with contextlib.redirect_stderr(io.StringIO()):
                jobs = executor.map_array(  # one list per argument of __call__
                    self,
                    [overrides for _, overrides in runs],
                    ["hydra.sweep.dir"] * len(runs),
                    [num for num, _ in runs],
                    [f"job_id_for_{num}" for num, _ in runs],
                    [Singleton.get_state()] * len(runs),
                )
        except submitit.core.utils.FailedJobError as e:
            raise GenlabError(sbatch_refusal(str(e), self.params)) from None
        if not accounting():
            watch_with_squeue(jobs)
        return jobs

    def executor(self) -> Any:
        """submitit's executor with this launcher's parameters, and the sweep directory made."""
        import submitit

        assert self.config is not None
        init = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params.get("max_num_timeout", 0),
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())  # keys without a slurm_ prefix
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in self.params.items() if k not in init}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        submitit_launcher.log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        return executor


def accounting() -> bool:
    """True where sacct answers (a cluster that keeps accounting: submitit asks sacct)."""
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def watch_with_squeue(jobs: list[Any]) -> None:
    """Have submitit read these jobs' states from squeue: without accounting, sacct failed at
    every poll (its complaint printed each time) and a job killed before it wrote its result
    (no memory, a node lost, scancel) was waited for forever."""
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    class QueueWatcher(SlurmInfoWatcher):
        def _make_command(self) -> list[str] | None:
            if super()._make_command() is None:
                return None
            return ["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%N"]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            text = string.decode() if isinstance(string, bytes) else string
            info = super().read_info("JobID|State|NodeList\n" + text)
            # squeue forgets a job MinJobAge after it ends: one it no longer lists has ended
            gone = self._registered - self._finished - set(info)
            return info | {job_id: {"JobID": job_id, "State": "ENDED"} for job_id in gone}

    watcher = QueueWatcher(delay_s=SlurmJob.watcher._delay_s)
    for job in jobs:
        if isinstance(job, SlurmJob):  # test doubles are not
            job.watcher = watcher
            watcher.register_job(job.job_id)


def discard_unsubmitted(sweep_dir: Path) -> None:
    """Remove a sweep directory that holds only what comes before submission: Hydra's
    multirun.yaml and submitit's pickled calls (no job's folder)."""
    submitit_dir = sweep_dir / ".submitit"
    if not sweep_dir.is_dir() or any(p.is_dir() for p in submitit_dir.glob("*")):
        return
    if {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml", ".submitit"}:
        shutil.rmtree(submitit_dir, ignore_errors=True)
        (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
        # and the parents left empty (multirun/DATE), up to the working directory
        here, cwd = sweep_dir.resolve(), Path.cwd().resolve()
        while cwd in here.parents and not any(here.iterdir()):
            here.rmdir()
            here = here.parent


def collect(job: Any, num: int, overrides: Sequence[str]) -> JobReturn:
    """A job's result; a failed job says why in one line and gives NaN, the sweep goes on."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        ret = job.results()[0]
    except FailedJobError as e:  # it raised outside the task (Hydra's run_job)
        ret, cause = JobReturn(overrides=list(overrides)), last_line(str(e))
    except UncompletedJobError as e:  # killed: no result at all
        state = re.search(r"state: ([A-Z_]+)", str(e))
        ret = JobReturn(overrides=list(overrides))
        cause = f"the job ended without a result (SLURM state {state[1] if state else 'unknown'})"
    else:
        if ret.status != JobStatus.FAILED:
            return ret
        error = ret._return_value
        cause = str(error) if isinstance(error, GenlabError) else crash_line(error)
    prog = Path(sys.argv[0]).name  # as argparse names a program
    dirname = ",".join(sorted(filter_overrides(overrides)))
    job_error(prog, num, dirname, f"{cause} (log: {job.paths.stderr})")
    ret.status, ret.return_value = JobStatus.COMPLETED, float("nan")
    return ret


def crash_line(error: BaseException) -> str:
    """An exception genlab did not word, as ``Type: first line``."""
    return f"{type(error).__name__}: {first_line(error)}"


TRACE_RULE = "-" * 22  # what submitit puts above and below the job's traceback


def last_line(error: str) -> str:
    """The exception line (``Type: message``) of the job's traceback that submitit quotes."""
    parts = error.split(TRACE_RULE)
    lines = [ln.strip() for ln in parts[1].splitlines() if ln.strip()] if len(parts) > 2 else []
    return (lines or error.strip().splitlines() or ["no trace"])[-1][:300]


def sbatch_refusal(error: str, params: dict[str, Any]) -> str:
    """sbatch's refusal as one line, with the ``hydra.launcher`` keys it can be about."""
    text = (error.replace("sbatch: error: ", "").strip().splitlines() or ["no reason"])[0]
    keys = next((k for message, k in SBATCH_KEYS.items() if message in error), ())
    where = ", ".join(f"hydra.launcher.{k}={params.get(k)}" for k in keys)
    return f"sbatch refused the jobs: {text}" + (f" (check {where})" if where else "")


def check_gpus(params: dict[str, Any]) -> None:
    """Refuse a GPU request on a partition whose nodes have no GPU GRES.

    Where sinfo cannot say (missing, failing, a partition it does not know), sbatch has the word.
    """
    request = gpu_request(params)
    if request is None:
        return
    partition = params.get("partition") or default_partition()
    if partition is None:
        return
    gres = sinfo("-p", partition, "-o", "%G")
    if not gres or has_gpus(gres):
        return
    key, value = request
    fix = "null" if key == "gres" else "0"
    raise GenlabError(
        f"hydra.launcher.{key}={value} but partition {partition} has no GPUs "
        f"(sinfo: GRES {', '.join(dict.fromkeys(gres))}); set hydra.launcher.{key}={fix}"
    )


def gpu_request(params: dict[str, Any]) -> tuple[str, Any] | None:
    """The first ``hydra.launcher`` key that asks for GPUs, with its value; None if none does."""
    for key in ("gpus_per_node", "gpus_per_task"):
        if params.get(key) not in (None, 0, "0"):
            return key, params[key]
    gres = params.get("gres")
    return ("gres", gres) if gres and has_gpus([gres]) else None


def has_gpus(gres: Sequence[str]) -> bool:
    """True if a GRES entry (``gpu:a100:4(S:0-1)``, ``gpu:2``; ``(null)`` has none) is a GPU."""
    items = [item.split("(")[0].split(":") for entry in gres for item in entry.split(",")]
    return any(f[0].strip() == "gpu" and f[-1].strip() not in ("0",) for f in items)


def default_partition() -> str | None:
    """The cluster's default partition (sinfo marks it ``*``); None where sinfo cannot say."""
    names = sinfo("-o", "%P") or []
    return next((n.rstrip("*") for n in names if n.endswith("*")), None)


def sinfo(*args: str) -> list[str] | None:
    """sinfo's lines for ``args`` (no header); None where it is missing or fails."""
    try:
        proc = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    return lines if proc.returncode == 0 else None
