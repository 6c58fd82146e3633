"""metrics.backbone=classifier: the Frechet distance in a Fashion-MNIST classifier's features
(genlab.metrics.classifier). The classifier here trains on 2,000 images for one epoch (~10 s,
test accuracy about 0.74); experiments/vae_samplers/classifier.py trains the real one."""

import csv
from pathlib import Path

import pytest
import torch

from genlab.data.sources import mnist5k_raw
from genlab.errors import GenlabError
from genlab.metrics import ImageMetrics
from genlab.metrics.classifier import FashionClassifier, fashion_split
from genlab.metrics.fid import fid_from_features
from tests.conftest import ok

FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
needs_fashion = pytest.mark.skipif(
    not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist"
)
QUICK = {"train_limit": 2000, "epochs": 1, "width": 8, "batch_size": 32, "min_accuracy": 0.6}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classifier")


@pytest.fixture(scope="module")
def quick(cache) -> FashionClassifier:
    return FashionClassifier(cache_dir=str(cache), data_root=str(FASHION), **QUICK)


@needs_fashion
def test_fd_same_set_zero_train_test_small_other_sets_large(quick):
    assert quick.test_accuracy > 0.6  # measured on the official 10,000 test images
    train, _ = fashion_split(str(FASHION), "train", 3000)
    test, _ = fashion_split(str(FASHION), "test", 1000)
    digits = mnist5k_raw()[0][:1000].float() / 127.5 - 1
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sets = {"train": train[2000:], "test": test, "digits": digits, "noise": noise}
    f = {name: quick.features(x).double() for name, x in sets.items()}
    assert f["test"].shape == (1000, 128)
    # training images the classifier never saw (2000..2999) against the test split: same
    # distribution, so only the finite-sample bias of 1000 + 1000 points remains
    same = fid_from_features(f["train"], f["test"])
    assert same > 0
    assert abs(fid_from_features(f["test"], f["test"])) < 1e-4 * same  # sqrtm's round-off
    for other in ("digits", "noise"):  # the metric can fail: other sets score far higher
        assert fid_from_features(f["test"], f[other]) > 10 * same


@needs_fashion
def test_cache_weights_file_and_refusals(quick, cache, tmp_path):
    again = FashionClassifier(cache_dir=str(cache), data_root=str(FASHION), **QUICK)
    assert again.path == quick.path and again.test_accuracy == quick.test_accuracy  # loaded
    # metrics.classifier_weights: its settings come from the file; min_accuracy still applies
    named = FashionClassifier(weights=str(quick.path), min_accuracy=0.6)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    assert torch.equal(named.features(x), quick.features(x))
    with pytest.raises(GenlabError, match="metrics.classifier: test accuracy"):
        FashionClassifier(cache_dir=str(cache), data_root=str(FASHION),
                          **{**QUICK, "min_accuracy": 0.999})  # fmt: skip
    with pytest.raises(GenlabError, match="metrics.classifier_weights=.*no such file"):
        FashionClassifier(weights=str(tmp_path / "missing.pt"))


def test_missing_fashion_files_name_the_key(tmp_path):
    with pytest.raises(GenlabError, match="metrics.classifier.data_root"):
        FashionClassifier(cache_dir=str(tmp_path), data_root=str(tmp_path), **QUICK)


@needs_fashion
def test_image_metrics_logs_fd_classifier(quick, cache):
    settings = {"cache_dir": str(cache), "data_root": str(FASHION), **QUICK}
    m = ImageMetrics(["fid", "kid"], backbone="classifier", classifier=settings,
                     kid_subset_size=50)  # fmt: skip
    real, _ = fashion_split(str(FASHION), "test", 200)
    fake = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pool = {k: m.features(x)["pool"] for k, x in (("real", real), ("fake", fake))}
    out = m.compute(pool["real"], pool["fake"])
    assert out["fd_classifier"] > 0 and "fid" not in out
    protocol = m.protocol()
    assert protocol["classifier_test_accuracy"] == quick.test_accuracy
    assert protocol["backbone"] == "classifier"
    with pytest.raises(GenlabError, match="is needs Inception's logits"):
        ImageMetrics(["fid", "is"], backbone="classifier", classifier=settings)


@needs_fashion
def test_train_logs_fd_classifier_from_the_cli(quick, run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "genlab-train", "model=vae", "data=fashion_mnist", f"data.root={FASHION}",
        "data.num_workers=0", "debug=tiny", "logger=csv", "metrics.backbone=classifier",
        "metrics.metrics=[fid]", f"metrics.classifier_weights={quick.path}",
        "+metrics.classifier.min_accuracy=0.6", "metrics.num_real=300", "metrics.num_samples=200",
        f"hydra.run.dir={run}",
    )  # fmt: skip
    ok(proc)
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    fds = [float(r["val/fd_classifier"]) for r in rows if r.get("val/fd_classifier")]
    assert len(fds) == 2 and all(fd > 0 for fd in fds)
