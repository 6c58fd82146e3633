"""The benchmark suite (experiments/benchmarks/run.py) runs end to end in quick mode."""

import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import REPO, cli_env, on_worker_cores

BENCH = REPO / "experiments" / "benchmarks"
RUN = BENCH / "run.py"


def positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    env.pop("OMP_NUM_THREADS", None)  # the script sets threads per measurement itself
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=on_worker_cores,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    md = (tmp_path / "out" / "results.md").read_text()

    assert r["mode"] == "quick" and r["machine"]["cpu"] and r["machine"]["torch"]
    # 1. training overhead: both models, genlab and hand-written, with their ratio
    for model in ("gan", "vae"):
        row = r["training"][f"{model}_t1"]
        assert positive(row["genlab_images_per_s"]) and positive(row["hand_images_per_s"])
        assert positive(row["ratio"]) and positive(row["ratio_median_step"])
        assert all(positive(v) for v in row["attribution"]["ms_per_step"].values())
    # ... and paired in one process, with Lightning's own per-step cost beside it
    for model in ("gan", "vae"):
        row = r["paired"]["models"][model]
        assert row["pairs"] >= 2 and positive(row["step_ms"]) and positive(row["ratio"])
        assert row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]
        floor = row["lightning_floor"]  # a minimal LightningModule, the same networks
        assert floor["pairs"] >= 2 and positive(floor["step_ms"])
        assert positive(floor["hand_step_ms"]) and positive(floor["ratio"])
    assert "### Paired in one process" in md
    # 2. evaluation: genlab-eval (cold, cached), fidelity, and time vs N
    ev = r["eval"]
    for key in ("genlab_cold_images_per_s", "fidelity_images_per_s", "ratio_wall"):
        assert positive(ev[key]), key
    assert positive(ev["genlab_cached"]["job_s"]) and positive(ev["genlab_cold"]["job_s"])
    assert len(ev["sweep"]) == len(r["sizes"]["eval_sweep"])
    assert all(positive(j["job_s"]) for j in ev["sweep"])
    # genlab and torch-fidelity score the same images alike
    assert ev["genlab_cold"]["metrics"]["fid"] == pytest.approx(
        ev["fidelity"]["metrics"]["frechet_inception_distance"], rel=1e-4
    )
    # 3. data: loaders vs the model's rate
    for name in ("mnist5k", "folder", "folder_workers0"):
        row = r["data"][name]
        assert positive(row["images_per_s"]) and positive(row["model_images_per_s"])
        assert positive(row["loader_over_model"])
    # 3b. data=prepared vs data=folder, and one page-cache copy of the array under DDP
    prep = r["prepared"]
    assert set(prep["prepared"]) == {"32", "64", "128"} and set(prep["folder"]) == {"png", "jpg"}
    assert all(positive(x) for x in prep["ratio_per_worker"].values())
    ddp = prep["share"]["ddp2_workers2"]
    assert ddp["processes"] >= 4 and ddp["peak_file_pss_mb"] <= 1.1 * prep["share"]["array_mb"]
    assert "## 3b." in md
    # ... with issue 24's sources in the same table, and the workers that feed a GPU step
    assert {x["source"] for x in prep["sources"]["rows"]} == set(SOURCE_ROWS)
    assert all(positive(x["images_per_s"]) for x in prep["sources"]["rows"])
    for label in ("`data=zip`", "`data=hf`", "`data=streaming data.path=s3://...`"):
        assert label in md
    assert "workers to feed a DCGAN-64 GPU step" in md
    # 4. memory of every process
    procs = [r["eval"]["genlab_cold"], r["eval"]["fidelity"], r["data"]["process"]]
    procs += [
        x[side]["process"]
        for row in r["training"].values()
        for x in row["reps"]
        for side in ("genlab", "hand")
    ]
    assert all(positive(p["peak_rss_mb"]) and positive(p["peak_rss_tree_mb"]) for p in procs)
    # 5. scaling: one row per batch size x image size
    rows = r["scaling"]["rows"]
    assert len(rows) == len(r["sizes"]["scale_batch"]) * len(r["sizes"]["scale_size"])
    assert all(positive(x["images_per_s"]) for x in rows)
    startup = {c["command"]: c for c in r["startup"]["commands"]}
    assert {"genlab-train --help", "genlab-train --cfg job", "python -c 'import torch'"} <= set(
        startup
    )
    assert all(positive(c["wall_s"]) and positive(c["peak_rss_mb"]) for c in startup.values())
    assert positive(r["startup"]["first_step"]["first_step_s"])
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6."):
        assert heading in md


# sources.py's rows: each source and the DataLoader worker counts it is read with
SOURCE_ROWS = {
    "folder": {0},
    "zip": {0, 2},
    "hf": {0, 2},
    "streaming": {0, 2},
    "streaming_s3": {0, 2},
}


@pytest.mark.slow  # ~23 s on 2 idle cores: 9 loader rows, 4 datasets, an S3 server, a step
def test_sources_benchmark_reads_every_source_whole(tmp_path: Path) -> None:
    """sources.py (section 3b's zip, hf, streaming and loopback-S3 rows) on 80 images."""
    out = tmp_path / "sources.json"
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = str(BENCH)
    # 80 PNGs, 2 epochs (one timed), 1 model step
    args = [str(tmp_path / "work"), "80", str(out), "2", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "sources.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = json.loads(out.read_text())
    got: dict[str, set[int]] = {}
    for x in r["rows"]:
        got.setdefault(x["source"], set()).add(x["num_workers"])
        assert x["image_size"] == 64 and positive(x["images_per_s"])
        # every full batch of the training split each epoch, whatever the workers' sharding
        assert x["batches_per_epoch"] == x["train_images"] // 64, x
    assert got == SOURCE_ROWS
    # each loopback-S3 epoch downloaded the chunks anew: the cache was emptied before each
    for x in r["rows"]:
        if x["source"].startswith("streaming_s3"):
            assert len(x["chunks_evicted"]) == 2 and x["chunks_evicted"][1] >= 1, x
    # the loopback S3 server the script started on 127.0.0.1 is gone
    endpoint = urlparse(r["s3_endpoint"])
    assert endpoint.hostname == "127.0.0.1"
    with pytest.raises(OSError):
        socket.create_connection((endpoint.hostname, endpoint.port), timeout=2).close()
    feed = r["feed"]
    assert positive(feed["flops_per_image"]) and positive(feed["cpu_images_per_s"])
    gpu = feed["gpu_tflops"] * 1e12 / feed["flops_per_image"]
    assert feed["gpu_images_per_s"] == pytest.approx(gpu)
    # the table's last column: the fewest workers whose images/s reach the GPU's
    sys.path.insert(0, str(BENCH))
    try:
        from report_data import source_rows
    finally:
        sys.path.remove(str(BENCH))
    for row, x in zip(source_rows(r), r["rows"], strict=True):
        per_worker = x["images_per_s"] / max(1, x["num_workers"])
        workers = int(row[-1].strip("*"))
        assert workers * per_worker >= feed["gpu_images_per_s"] > (workers - 1) * per_worker
        assert math.isclose(float(row[6].replace(",", "")), per_worker, abs_tol=0.5)


ZOO = REPO / "experiments" / "benchmarks" / "zoo.py"


@pytest.mark.slow
def test_zoo_benchmark_times_a_step_of_each_model(tmp_path: Path) -> None:
    models = ["gan", "sngan", "vae"]
    done = subprocess.run(
        [sys.executable, str(ZOO), "--quick", "--out", str(tmp_path), "--models", *models],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = json.loads((tmp_path / "zoo.json").read_text())
    assert list(r["models"]) == models
    for row in r["models"].values():
        assert positive(row["images_per_s"]) and positive(row["trainable_params"])
        assert row["timed_batches"] % row["n_critic"] == 0  # whole D/G cycles
    assert r["models"]["sngan"]["n_critic"] == 5
    assert "| sngan | GAN |" in (tmp_path / "zoo.md").read_text()
