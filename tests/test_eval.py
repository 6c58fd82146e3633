"""Sample metrics in training and genlab-eval: protocol record, DDP, cache, missing weights."""

import json
import math
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from genlab.callbacks import sample_features as features
from genlab.callbacks import sample_metrics as cb
from genlab.config import CONFIG_DIR
from genlab.errors import GenlabError
from genlab.evaluation import evaluate, fid_reference_split
from genlab.metrics import ImageMetrics
from genlab.training import build
from tests.conftest import TINY, fit_built, ok, train_checkpoint
from tests.test_data import write_idx

# few images: InceptionV3 runs at a handful of images per second on this CPU
METRICS = [
    "metrics.num_samples=24",
    "metrics.num_real=20",
    "metrics.batch_size=8",
    "metrics.kid_subset_size=8",
    "metrics.is_splits=2",
    "metrics.inception_sha256=null",  # random weights (tests/inception.py)
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


@pytest.mark.slow
def test_eval_seeds_scores_independent_sample_sets(run_cli, tiny_ckpt, weights, tmp_path):
    """EDM2's protocol: seeds=3 scores 3 sample sets; each, and min / mean / std over them."""
    proc = _eval(run_cli, tiny_ckpt, weights, tmp_path / "cache", "seeds=3", "metrics.seed=5")
    ok(proc)
    out = _metrics_json(proc, tiny_ckpt)
    per_seed, over = out["per_seed"], out["over_seeds"]
    assert [s["seed"] for s in per_seed] == [5, 6, 7] and out["protocol"]["seeds"] == 3
    fids = [s["fid"] for s in per_seed]
    assert len(set(fids)) == 3  # independent sets, not the same one thrice
    assert out["metrics"]["fid"] == fids[0]  # the first set's numbers, as with seeds=1
    assert over["fid"]["min"] == min(fids)
    assert over["fid"]["mean"] == pytest.approx(sum(fids) / 3)
    assert over["fid"]["std"] == pytest.approx(statistics.stdev(fids))
    assert "n_fake" not in over


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["metrics.jackknife=5"], "metrics.jackknife=5"),
        (["metrics.backbone=nosuch"], "metrics.backbone='nosuch'"),
        (["metrics.metrics=[fid,nosuch]"], "metrics.metrics"),
        (["metrics=fid", "metrics.backbone=clip"], "metrics.clip_weights"),
        (["metrics=fid", "metrics.backbone=dinov2"], "metrics.dinov2_weights"),
        (["metrics.metrics=[ppl]"], "metrics.ppl.lpips_weights"),
    ],
    ids=["jackknife", "backbone", "metric", "clip", "dinov2", "lpips"],
)
def test_metric_settings_fail_in_one_line_naming_the_key(args, named, run_cli, tiny_ckpt, tmp_path):
    proc = run_cli("genlab-eval", f"ckpt_path={tiny_ckpt}", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("genlab-eval: error:") and named in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr


def test_eval_seeds_must_be_a_positive_count(run_cli, tmp_path):
    for bad in ("0", "abc"):
        proc = run_cli("genlab-eval", f"ckpt_path={tmp_path}/x.ckpt", f"seeds={bad}")
        assert proc.returncode == 2
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
        assert last.startswith("genlab-eval: error:") and "seeds=" in last, last


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

    def counting_gather(trainer, image_metrics, n, chunk_fn, *args):
        if chunk_fn.__name__ == "real_chunk":
            counts["real_images"] += n
        return gather(trainer, image_metrics, n, chunk_fn, *args)

    def counting_store(*args, **kwargs):
        counts["stored"] += 1
        return store(*args, **kwargs)

    gather, store = features.gather, features.store_reference
    monkeypatch.setattr(features, "gather", counting_gather)
    monkeypatch.setattr(features, "store_reference", counting_store)
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


# a fake MNIST on disk: 80 training images (72 train + 8 val) and an official test split of 12
N_TRAIN, N_VAL, N_TEST = 72, 8, 12


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """MNIST IDX files: noisy training digits, a test split of flat grey images."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (N_TRAIN + N_VAL, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(N_TRAIN + N_VAL) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", np.full((N_TEST, 28, 28), 128))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(N_TEST) % 10)
    return root


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory, mnist_root) -> Path:
    """A VAE with a discretized Gaussian likelihood, trained for 2 batches on the fake MNIST."""
    return train_checkpoint(
        tmp_path_factory.mktemp("vae"), "vae", "model=vae", "data=mnist", "metrics=none",
        f"data.root={mnist_root}", "data.num_workers=0", "model.likelihood=discretized_gaussian",
    )  # fmt: skip


def _eval_cfg(out: Path, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="eval", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def _vae_eval(ckpt: Path, out: Path, *overrides: str) -> dict:
    cfg = _eval_cfg(
        out, f"ckpt_path={ckpt}", "metrics=none", "nll_k=4", "trainer.accelerator=cpu", *overrides
    )
    result = evaluate(cfg)
    assert json.loads((out / "metrics.json").read_text()) == result
    return result


def test_vae_eval_without_sample_metrics_scores_the_official_test_split(vae_ckpt, tmp_path):
    out = _vae_eval(vae_ckpt, tmp_path)
    m, protocol = out["metrics"], out["protocol"]
    assert {"val/nll", "val/nll_bpd", "val/elbo", "val/recon", "val/kl", "val/mse"} <= set(m)
    assert (protocol["eval_split"], protocol["eval_split_size"]) == ("test", N_TEST)
    assert protocol["vae_nll_k"] == 4 and "n_fake" not in protocol
    assert 0 < m["val/nll_bpd"] == pytest.approx(m["val/nll"] / (784 * math.log(2)), rel=1e-5)


@pytest.mark.parametrize(("split", "size"), [("train", N_TRAIN), ("val", N_VAL)])
def test_vae_eval_scores_the_split_asked_for(vae_ckpt, tmp_path, split, size):
    test = _vae_eval(vae_ckpt, tmp_path / "test")
    other = _vae_eval(vae_ckpt, tmp_path / split, f"split={split}")
    assert (other["protocol"]["eval_split"], other["protocol"]["eval_split_size"]) == (split, size)
    # flat grey test digits against noise: a different split gives a different likelihood
    assert abs(other["metrics"]["val/nll"] - test["metrics"]["val/nll"]) > 100


def test_eval_split_defaults_to_val_without_an_official_test_split(tmp_path):
    ckpt = train_checkpoint(tmp_path, "vae5k", "model=vae", "data=synthetic", "metrics=none")
    out = _vae_eval(ckpt, tmp_path / "eval")
    val = round(0.1 * 256)  # debug=tiny: data.limit=256, val_fraction 0.1
    assert (out["protocol"]["eval_split"], out["protocol"]["eval_split_size"]) == ("val", val)
    asked = _vae_eval(ckpt, tmp_path / "eval_test", "split=test")  # no test split: val, recorded
    assert asked["protocol"]["eval_split"] == "val"


def test_gan_eval_without_sample_metrics_says_there_is_nothing_to_evaluate(tmp_path):
    ckpt = train_checkpoint(tmp_path, "gan", "model=gan_mlp", "data=synthetic", "metrics=none")
    cfg = _eval_cfg(tmp_path / "eval", f"ckpt_path={ckpt}", "metrics=none")
    with pytest.raises(GenlabError, match="metrics=none") as err:
        evaluate(cfg)
    assert "nothing to evaluate" in str(err.value) and "\n" not in str(err.value)


def test_eval_rejects_an_unknown_split_in_one_line(run_cli, tmp_path):
    proc = run_cli("genlab-eval", f"ckpt_path={tmp_path}/x.ckpt", "split=testing")
    assert proc.returncode == 2
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("genlab-eval: error: split='testing'") and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("asked", "eval_default", "recipe", "expected"),
    [
        (None, None, "test", "test"),  # the run's recipe (dcgan_cifar10: FID on the test split)
        (None, None, None, "train"),  # a run trained without sample metrics
        (None, "val", "test", "val"),  # metrics.reference_split on the eval command line
        ("val", "train", "test", "val"),  # split= overrides both
    ],
)
def test_fid_reference_split_follows_split_then_eval_then_recipe(
    asked, eval_default, recipe, expected
):
    cfg = OmegaConf.create({"split": asked, "metrics": {"reference_split": eval_default}})
    run_cfg = OmegaConf.create({"metrics": {"reference_split": recipe} if recipe else {}})
    assert fid_reference_split(cfg, run_cfg) == expected


def test_metrics_json_records_how_many_images_a_limited_val_loop_scored(
    run_cli, mnist_root, tmp_path
):
    """trainer.limit_val_batches cuts the split: metrics.json says what was scored, not the size."""
    ckpt = train_checkpoint(
        tmp_path, "vae5", "model=vae", "data=mnist", "metrics=none", f"data.root={mnist_root}",
        "data.num_workers=0", "data.batch_size=5",
    )  # fmt: skip
    ok(run_cli("genlab-eval", f"ckpt_path={ckpt}", "metrics=none", "nll_k=2",
               "trainer.accelerator=cpu", "trainer.limit_val_batches=2",
               f"hydra.run.dir={tmp_path / 'eval'}"))  # fmt: skip
    protocol = json.loads((tmp_path / "eval" / "metrics.json").read_text())["protocol"]
    assert (protocol["eval_split"], protocol["eval_split_size"]) == ("test", N_TEST)
    assert protocol["eval_split_scored"] == 2 * 5  # two batches of 5 of the 12 test images
    whole = _vae_eval(ckpt, tmp_path / "whole", "nll_k=2")["protocol"]  # 5 + 5 + 2
    assert whole["eval_split_size"] == whole["eval_split_scored"] == N_TEST
