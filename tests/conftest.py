"""Shared fixtures: composed configs with tmp outputs, and the CLI as a user runs it."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from genlab.config import CONFIG_DIR
from genlab.metrics import WEIGHTS_FILE
from tests.inception import random_inception_weights

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Tiny convolutions on this 2-core machine run many times faster on one intra-op thread.
torch.set_num_threads(1)

# Small, fast runs on CPU: every CLI and in-process training test starts from these.
TINY = ["debug=tiny", "logger=csv", "metrics=none"]


def worker_cores() -> set[int]:
    """The cores this test process has to itself: all of them alone, its share under ``pytest -n
    N`` (worker gwK the K-th slice). A subprocess with more OpenMP threads than that runs slower,
    not faster, while the other worker is busy: its threads wait for each other at every op."""
    cores = sorted(os.sched_getaffinity(0))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = len(cores) // workers
    if share < 1:
        return set(cores)
    k = int((os.environ.get("PYTEST_XDIST_WORKER") or "gw0")[2:]) % workers
    return set(cores[k * share : (k + 1) * share])


def on_worker_cores() -> None:
    """A ``preexec_fn`` for a subprocess that takes torch's default threads (the benchmarks): it
    sees the cores of ``worker_cores()`` as the machine."""
    os.sched_setaffinity(0, worker_cores())


UNGROUPED = pytest.StashKey[str]()  # why a grouped test did not stay in its group


@pytest.hookimpl(trylast=True)  # after xdist's own hook has tagged the grouped tests
def pytest_collection_modifyitems(config, items) -> None:
    """The README walk first: its blocks are one ordered group, the suite's longest unit, which
    under ``pytest -n 2`` would otherwise start late and run alone at the end.

    Under ``--dist loadgroup`` a worker tags each grouped test's node id ``...@group`` and the
    controller sends a group to one worker. With pytest 9.2 the tag no longer takes (node ids are
    structured; pytest-xdist#1386), and the walk's blocks, which build on each other's runs, were
    dealt to both workers and failed by the luck of the deal: such a test fails at once instead,
    naming the cause."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)  # stable sort
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers only
        return
    for item in items:
        group = "_".join(sorted({str(m.args[0]) for m in item.iter_markers("xdist_group")}))
        if group and not item.nodeid.endswith(f"@{group}"):
            item.stash[UNGROUPED] = (
                f"--dist loadgroup did not keep group {group!r} on one worker (pytest "
                f"{pytest.__version__} with this pytest-xdist, pytest-xdist#1386): "
                'pip install -e ".[dev]" picks a pytest that does'
            )


def pytest_runtest_setup(item) -> None:
    if (why := item.stash.get(UNGROUPED, None)) is not None:
        pytest.fail(why, pytrace=False)


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml like the CLI does, writing into ``output_dir``."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A random InceptionV3 in torch-fidelity's format (the real weights cannot be fetched)."""
    return random_inception_weights(tmp_path_factory.mktemp("inception") / WEIGHTS_FILE)


@pytest.fixture
def cfg_tiny(tmp_path: Path):
    """Factory: compose a tiny CPU config with extra overrides, outputs under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_train([*TINY, *overrides], tmp_path)

    return make


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a user with no W&B credentials, no GPU, HOME in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run a genlab console script in a subprocess from tmp_path; returns CompletedProcess."""

    def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / script), *args],
            cwd=tmp_path,
            env=cli_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def ok(proc: subprocess.CompletedProcess) -> None:
    """Assert a CLI run succeeded, showing the end of its output if not."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def fit_built(objs: dict) -> dict:
    """Fit the model of ``genlab.training.build``'s objects on their datamodule; returns them."""
    objs["trainer"].fit(objs["model"], datamodule=objs["datamodule"])
    return objs


def train_checkpoint(tmp_path: Path, name: str, *overrides: str) -> Path:
    """Train 2 tiny batches (``callbacks=none``) and save ``tmp_path/name.ckpt`` with its config."""
    from genlab.training import build

    cfg = compose_train(["debug=tiny", "logger=csv", "callbacks=none", *overrides], tmp_path / name)
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, 2
    objs = build(cfg)
    fit_built(objs)
    path = tmp_path / f"{name}.ckpt"
    objs["trainer"].save_checkpoint(path)  # carries the run config (RunConfig callback)
    return path


def load_ckpt(path: Path) -> dict:
    """A checkpoint as saved, weights only (genlab's checkpoints hold no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


LOCAL_CLUSTER = REPO / "experiments" / "slurm" / "local_cluster.sh"


def slurm_states() -> list[tuple[str, str]]:
    """(partition, node state) as sinfo lists them here; empty where sinfo is missing or fails."""
    from genlab.launchers import sinfo

    return [tuple(line.split()[:2]) for line in sinfo("-o", "%P %T") or []]


def usable_partitions(states: list[tuple[str, str]]) -> list[str]:
    """The partitions that take jobs: a node between jobs is `completing`; a trailing * on the
    state means it does not respond."""
    up = ("idle", "mixed", "allocated", "completing")
    return [p.rstrip("*") for p, s in states if s in up]


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """The partition of a SLURM cluster that answers here (``local_cluster.sh up``, which
    .ci/run starts); the test skips, saying why, where there is none."""
    if not all(shutil.which(tool) for tool in ("sinfo", "sbatch", "scontrol", "squeue")):
        pytest.skip(f"no SLURM client tools here (bash {LOCAL_CLUSTER.relative_to(REPO)} up)")
    states = slurm_states()
    usable = usable_partitions(states)
    if not usable:
        pytest.skip(
            f"no SLURM cluster answers here (sinfo: {states or 'no reply'}); "
            f"bash {LOCAL_CLUSTER.relative_to(REPO)} up (as root) starts one"
        )
    return "debug" if "debug" in usable else usable[0]
