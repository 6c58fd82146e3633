"""Sample metrics in training and genlab-eval: protocol record, DDP, cache, missing weights."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from genlab.callbacks import sample_metrics as cb
from genlab.metrics import ImageMetrics
from genlab.train import build
from tests.conftest import TINY, fit_built, ok

# few images: InceptionV3 runs at a handful of images per second on this CPU
METRICS = [
    "metrics.num_samples=24",
    "metrics.num_real=20",
    "metrics.batch_size=8",
    "metrics.kid_subset_size=8",
    "metrics.is_splits=2",
]
PROTOCOL = {
    "torch", "torchmetrics", "torch_fidelity", "n_real", "n_fake", "split", "resize",
    "feature_layer", "weights_sha256", "seed", "sample_seed", "kid_subset_size", "reference_data",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A GAN trained for 2 tiny epochs without sample metrics."""
    from tests.conftest import BIN, cli_env

    run = tmp_path_factory.mktemp("run")
    proc = subprocess.run(
        [str(BIN / "genlab-train"), *TINY, "data.limit=64", f"hydra.run.dir={run}"],
        cwd=run, env=cli_env(run), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    ok(proc)
    return run / "checkpoints" / "last.ckpt"


def _eval(run_cli, ckpt: Path, weights: Path, cache: Path, *extra: str):
    return run_cli(
        "genlab-eval", f"ckpt_path={ckpt}", f"metrics.inception_weights={weights}",
        f"metrics.cache_dir={cache}", *METRICS, *extra,
    )  # fmt: skip


def _metrics_json(proc, ckpt: Path) -> dict:
    files = sorted(
        (ckpt.parent.parent / "eval").glob("*/metrics.json"), key=lambda p: p.stat().st_mtime
    )
    assert files, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(files[-1].read_text())


@pytest.mark.slow
def test_eval_writes_metrics_and_protocol_and_samples(run_cli, tiny_ckpt, weights, tmp_path):
    proc = _eval(run_cli, tiny_ckpt, weights, tmp_path / "cache", "save_samples=true")
    ok(proc)
    out = _metrics_json(proc, tiny_ckpt)
    assert set(out["protocol"]) >= PROTOCOL, PROTOCOL - set(out["protocol"])
    assert out["protocol"]["n_fake"] == 24 and out["protocol"]["n_real"] == 20
    assert (
        out["protocol"]["weights_sha256"]
        == ImageMetrics(inception_weights=str(weights)).weights_sha256
    )
    m = out["metrics"]
    assert m["fid"] > 0 and m["is_mean"] >= 1 and "kid_mean" in m and "val/swd" in m
    pngs = sorted((Path(out["checkpoint"]).parent.parent / "eval").glob("*/samples/*.png"))
    assert len(pngs) == 24 and pngs[0].name == "000000.png"


@pytest.mark.slow
def test_eval_under_ddp_equals_one_process(run_cli, tiny_ckpt, weights, tmp_path):
    """Samples split over 2 gloo ranks and gathered give the single-process numbers."""
    cache = tmp_path / "cache"
    one = _eval(run_cli, tiny_ckpt, weights, cache)
    ok(one)
    single = _metrics_json(one, tiny_ckpt)["metrics"]
    two = _eval(run_cli, tiny_ckpt, weights, cache, "trainer=ddp_cpu")
    ok(two)
    ddp = _metrics_json(two, tiny_ckpt)["metrics"]
    for key in ("fid", "kid_mean", "is_mean"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-6), key


def test_eval_without_weights_fails_in_one_line(run_cli, tmp_path):
    fake = tmp_path / "x.ckpt"
    proc = run_cli(
        "genlab-eval", f"ckpt_path={fake}", f"metrics.inception_weights={tmp_path}/no.pth"
    )
    assert proc.returncode == 2
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("genlab-eval: error:") and str(fake) in last


@pytest.mark.slow
def test_eval_without_weights_names_the_key(run_cli, tiny_ckpt, tmp_path):
    proc = run_cli(
        "genlab-eval", f"ckpt_path={tiny_ckpt}", f"metrics.inception_weights={tmp_path}/no.pth"
    )
    assert proc.returncode == 2
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("genlab-eval: error:") and "metrics.inception_weights" in last


@pytest.mark.slow
def test_training_with_metrics_logs_them_and_reuses_the_cache(
    cfg_tiny, weights, tmp_path, monkeypatch
):
    """FID/IS/KID logged each epoch; real features computed once; Inception not in checkpoints."""
    counts = {"real_images": 0, "stored": 0}
    real_features = cb.SampleMetrics.reference_features

    def counting_gather(self, trainer, n, chunk_fn):
        if chunk_fn.__name__ == "real_chunk":
            counts["real_images"] += n
        return gather(self, trainer, n, chunk_fn)

    def counting_store(*args, **kwargs):
        counts["stored"] += 1
        return store(*args, **kwargs)

    gather, store = cb.SampleMetrics._gather, cb.store_reference
    monkeypatch.setattr(cb.SampleMetrics, "_gather", counting_gather)
    monkeypatch.setattr(cb, "store_reference", counting_store)
    assert real_features is cb.SampleMetrics.reference_features
    cfg = cfg_tiny(
        "metrics=default", f"metrics.inception_weights={weights}",
        f"metrics.cache_dir={tmp_path}/c",
        *METRICS, "data.limit=64", "data=synthetic",
    )  # fmt: skip
    objs = build(cfg)
    assert objs["monitor"] == "val/fid"
    fit_built(objs)
    logged = objs["trainer"].callback_metrics
    assert {"val/fid", "val/is", "val/kid", "val/n_real", "val/n_fake"} <= set(logged)
    # 2 epochs evaluated, one computation and one write of the 20 real images' features
    assert counts == {"real_images": 20, "stored": 1}
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any("inception" in k.lower() for k in ckpt["state_dict"])
    # weights plus Adam's two moments, and no ~95 MB of Inception weights
    param_bytes = sum(p.numel() * 4 for p in objs["model"].parameters())
    assert (tmp_path / "checkpoints" / "last.ckpt").stat().st_size < 3 * param_bytes + 2e6
    # a changed key (image size) misses the cache
    cfg2 = cfg_tiny(
        "metrics=default", f"metrics.inception_weights={weights}",
        f"metrics.cache_dir={tmp_path}/c",
        *METRICS, "data.limit=64", "data=synthetic", "data.image_size=28", "trainer.max_epochs=1",
    )  # fmt: skip
    objs = build(cfg2)
    fit_built(objs)
    assert counts == {"real_images": 40, "stored": 2}
    assert len(list((tmp_path / "c").glob("ref-*.pt"))) == 2


def test_training_without_weights_warns_and_goes_on(cfg_tiny, tmp_path, caplog):
    cfg = cfg_tiny("metrics=default", f"metrics.inception_weights={tmp_path}/missing.pth")
    objs = build(cfg)
    assert objs["monitor"] == "val/swd"
    assert not any(isinstance(c, cb.SampleMetrics) for c in objs["trainer"].callbacks)
    text = caplog.text
    assert "FID/IS/KID are off" in text and "metrics.inception_weights" in text


@pytest.mark.slow
def test_eval_can_log_to_wandb_as_an_eval_job(run_cli, tiny_ckpt, weights, tmp_path):
    from tests.test_sweeps import wandb_records

    proc = _eval(run_cli, tiny_ckpt, weights, tmp_path / "cache", "logger=wandb")
    ok(proc)
    out_dir = sorted((tiny_ckpt.parent.parent / "eval").glob("*/wandb"))[-1].parent
    records = wandb_records(out_dir)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["job_type"] == "eval"
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    assert summary["eval/fid"] > 0 and summary["eval/n_fake"] == 24
