"""SLURM without a cluster: the submitit job genlab-train composes for 2 nodes x 4 GPUs, and
DDP under a simulated SLURM allocation (ranks from SLURM_*, no relaunch, no ddp_spawn)."""

import os
import sys
from types import SimpleNamespace

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy

from genlab import training
from tests.conftest import TINY, compose_train

# what the README's SLURM recipe passes for a 2-node x 4-GPU job
TWO_BY_FOUR = [
    "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
    "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4",
    "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4",
]  # fmt: skip


def test_submitit_job_for_two_nodes_of_four_gpus(tmp_path, monkeypatch):
    """genlab-train -m as a user types it; the submission is captured instead of sbatch'ed."""
    import submitit

    submitted = {}

    def map_array(executor, fn, *args):
        submitted.update(executor=executor, fn=fn, args=args)
        done = JobReturn(overrides=[], status=JobStatus.COMPLETED, _return_value=0.0)
        return [SimpleNamespace(results=lambda: [done]) for _ in args[0]]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    # submitit looks for srun before it builds a SLURM executor: a stand-in that is never run
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    argv = ["genlab-train", "-m", *TWO_BY_FOUR, "seed=1", f"hydra.sweep.dir={sweep}"]
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    from genlab.cli.train import _main

    _main()
    GlobalHydra.instance().clear()
    slurm = submitted["executor"]._executor  # submitit's SlurmExecutor
    assert type(slurm).__name__ == "SlurmExecutor"
    params = slurm.parameters
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 4
    assert params["gpus_per_node"] == 4 and params["partition"] == "gpu"
    assert params["signal_delay_s"] == 120  # SIGTERM before the time limit: last.ckpt, requeue
    script = slurm._make_submission_file_text(" ".join(slurm._submitit_command_str.split()), "u")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu"):  # fmt: skip
        assert line in script.splitlines(), script
    # each of the 8 tasks runs submitit's runner, which calls the launcher with this job's
    # overrides: every task is one rank of the same genlab-train job
    srun = next(ln for ln in script.splitlines() if ln.startswith("srun"))
    assert "-m submitit.core._submit" in srun
    (overrides,) = submitted["args"][0]
    assert {"trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4", "seed=1"} <= set(overrides)
    assert type(submitted["fn"]).__name__ == "SlurmLauncher"


# Two tasks of one SLURM job step on this machine, as srun would set them (rank 1 shown).
SLURM_ENV = {
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "genlab", "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost",
    "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0",
}  # fmt: skip


@pytest.fixture
def keep_rank_zero(monkeypatch):
    """Lightning sets the process-wide rank of rank_zero_only from the strategy: undo it after."""
    import lightning_fabric.utilities.rank_zero as fabric
    import lightning_utilities.core.rank_zero as utilities
    import pytorch_lightning.utilities.rank_zero as pl_rank_zero

    for module in (fabric, utilities, pl_rank_zero):
        monkeypatch.setattr(module.rank_zero_only, "rank", module.rank_zero_only.rank)


@pytest.mark.parametrize("multirun", [False, True])
def test_simulated_slurm_allocation_gives_the_ranks(
    monkeypatch, tmp_path, multirun, keep_rank_zero
):
    for k, v in SLURM_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(training, "in_multirun", lambda: multirun)  # a submitit task is -m
    cfg = compose_train([*TINY, "trainer=ddp_cpu", "trainer.devices=2"], tmp_path)
    trainer = training.build(cfg)["trainer"]
    strategy = trainer.strategy
    assert type(strategy) is DDPStrategy and "spawn" not in cfg.trainer.strategy
    assert isinstance(strategy.cluster_environment, SLURMEnvironment)
    # Lightning starts no processes of its own: each SLURM task is one rank already
    assert strategy.cluster_environment.creates_processes_externally
    assert (trainer.global_rank, trainer.local_rank, trainer.world_size) == (1, 1, 2)
    assert strategy.cluster_environment.main_address == "localhost"


def test_without_slurm_a_sweep_spawns(monkeypatch, tmp_path):
    """The same build outside SLURM under -m switches to ddp_spawn: the check above can fail."""
    for k in SLURM_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(training, "in_multirun", lambda: True)
    cfg = compose_train([*TINY, "trainer=ddp_cpu"], tmp_path)
    training.build(cfg)
    assert cfg.trainer.strategy.startswith("ddp_spawn")
