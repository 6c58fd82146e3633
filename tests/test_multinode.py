"""Multi-node DDP on one machine: two genlab-train processes as two "nodes", launched the way a
cluster without SLURM does it (Lightning's MASTER_ADDR / MASTER_PORT / NODE_RANK / WORLD_SIZE),
gloo on CPU. The README's "Multi-node without SLURM" recipe runs these commands."""

import json
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import BIN, REPO, cli_env, ok

METRICS = ["metrics=default", "metrics.inception_sha256=null", "metrics.num_samples=8",
           "metrics.num_real=8", "metrics.kid_subset_size=4", "metrics.batch_size=4",
           "metrics.is_splits=2"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(args: list[str], tmp_path: Path, timeout: float = 300) -> dict[int, str]:
    """``genlab-train ARGS`` as two "nodes" on 127.0.0.1, launched the way a cluster without
    SLURM does it (MASTER_ADDR / MASTER_PORT / NODE_RANK / WORLD_SIZE); node 1 writes no second
    .hydra/ and logs to its own file (the README's recipe). Both must exit 0; their outputs."""
    node_args = {0: [], 1: ["hydra.output_subdir=null", "hydra.job.name=train_node1"]}
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}  # fmt: skip
    nodes = {
        rank: subprocess.Popen(
            [str(BIN / "genlab-train"), *args, *extra],
            cwd=tmp_path,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank, extra in node_args.items()
    }
    outputs = {rank: p.communicate(timeout=timeout)[0] for rank, p in nodes.items()}
    for rank, p in nodes.items():
        assert p.returncode == 0, f"node {rank}:\n{outputs[rank][-3000:]}"
    return outputs


@pytest.mark.slow
def test_two_nodes_train_one_run_with_the_single_process_fid(weights, tmp_path):
    run = tmp_path / "run"
    common = [
        "debug=tiny", "data=synthetic", "logger=[csv,wandb]", "trainer=ddp_cpu",
        "trainer.num_nodes=2", "trainer.devices=1", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", *METRICS,
        f"metrics.inception_weights={weights}", f"metrics.cache_dir={tmp_path}/cache",
        "+callbacks.save_rank_weights._target_=tests.test_reliability.SaveRankWeights",
        f"+callbacks.save_rank_weights.dirpath={tmp_path}", f"hydra.run.dir={run}",
    ]  # fmt: skip
    outputs = run_two_nodes(common, tmp_path)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]

    # every rank holds the same weights after training
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # one set of checkpoints and logs
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best-epoch000.ckpt", "last.ckpt",
    ]  # fmt: skip
    assert len(list(run.glob("wandb/offline-run-*"))) == 1
    assert (run / ".genlab" / "wandb_id").read_text().strip() in str(next(run.glob("wandb/off*")))
    assert list(run.rglob("metrics.csv")) == [run / "csv" / "metrics.csv"]
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_node1.log"]
    rows = pd.read_csv(run / "csv" / "metrics.csv")
    # 2 batches of 16 on each of 2 ranks: images seen are summed over ranks
    assert rows["trainer/images_seen"].max() == 2 * 2 * 16
    fid = rows["val/fid"].dropna().iloc[-1]

    # SampleMetrics in one process on the final model, real features computed afresh
    proc = subprocess.run(
        [str(BIN / "genlab-eval"), f"ckpt_path={run}/checkpoints/last.ckpt", *METRICS,
         f"metrics.inception_weights={weights}", f"metrics.cache_dir={tmp_path}/cache1",
         "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path}/eval"],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    ok(proc)
    single = json.loads(Path(tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert fid > 1.0  # random Inception features differ between images: not a vacuous 0
    assert single["fid"] == pytest.approx(fid, rel=1e-5)  # the CSV holds float32
