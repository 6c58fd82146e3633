"""The GPU benchmark (experiments/benchmarks/gpu.sh) runs end to end in --quick mode on the CPU."""

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, on_worker_cores

GPU_SH = REPO / "experiments" / "benchmarks" / "gpu.sh"


@pytest.mark.slow
def test_quick_gpu_benchmark_writes_every_section(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    env.pop("OMP_NUM_THREADS", None)
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(GPU_SH), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=on_worker_cores,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    # 1. every model x setting x batch size has a rate; DCGAN fp32 is paired with the hand loop
    for model in ("dcgan32", "sngan32"):
        for setting in ("fp32", "bf16-mixed", "channels_last"):
            rows = r["training"][f"{model}_{setting}"]["rows"]
            assert [x["batch_size"] for x in rows] == r["sizes"]["batch"]
            assert all(x["images_per_s"] > 0 and x["weights_finite"] for x in rows)
    assert all(x["paired"]["ratio"] > 0 for x in r["training"]["dcgan32_fp32"]["rows"])
    # 2. genlab and torch-fidelity score the same tensors alike
    m = r["metrics"]
    assert m["genlab"]["fid"] == pytest.approx(
        m["fidelity"]["frechet_inception_distance"], rel=1e-3
    )
    assert m["genlab_images_per_s"] > 0 and m["fidelity_images_per_s"] > 0
    # 3. both loaders fed the model
    assert r["feed"]["folder"]["images_per_s"] > 0 and r["feed"]["ratio"] > 0
    for heading in ("## 1.", "## 2.", "## 3."):
        assert heading in md
