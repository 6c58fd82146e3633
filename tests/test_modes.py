"""Stacked MNIST: the data source, the digit classifier, val/modes, val/mode_kl and their
calibrated versions.

Reference numbers (VEEGAN, Srivastava et al. 2017, Table 2; PacGAN, Lin et al. 2018, Table 3;
26k samples, MNIST-60k classifier): DCGAN 99 modes / KL 3.40, PacDCGAN2 1000 / 0.06.
"""

import math

import pytest
import torch

from genlab.callbacks.sample_features import data_key
from genlab.data import ImageDataModule
from genlab.data.sources import stacked_mnist
from genlab.errors import GenlabError, GenlabWarning
from genlab.metrics import ImageMetrics
from genlab.metrics.modes import (
    MIN_ACCURACY,
    ModeClassifier,
    binomial_upper,
    calibrated_counts,
    calibration_set,
    confusion,
    held_out_split,
    kl_to_uniform,
    misread_bounds,
    mode_kl,
)

PERFECT = torch.arange(10)[:, None].repeat(1, 50)  # (10, 50) held-out reads, all right
NONE_IN_50 = 1 - 0.05 ** (1 / 50)  # the one-sided 95% bound of a rate never seen in 50: 0.058


def uniform_bounds(rate: float) -> torch.Tensor:
    """Misread bounds of ``rate`` between every two digits."""
    return torch.full((10, 10), rate, dtype=torch.float64).fill_diagonal_(1.0)


def one_misread_per_class() -> torch.Tensor:
    """Reads of a 98% classifier: one held-out digit of each class c reads as c + 1."""
    reads = PERFECT.clone()
    reads[:, 0] = (torch.arange(10) + 1) % 10
    return reads


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> ModeClassifier:
    """The shipped classifier: about 50 s on one core."""
    return ModeClassifier(str(tmp_path_factory.mktemp("modes")))


def test_stacked_mnist_is_deterministic_rgb_with_three_digit_labels():
    dm = ImageDataModule("stacked_mnist", channels=3, stacked_size=600, val_fraction=0.1)
    dm.setup()
    x, y = dm.dataset("train")[0]
    assert x.shape == (3, 28, 28) and dm.num_classes == 1000
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 600
    key = data_key(dm)  # the reference cache tells sizes (and seeds) apart
    assert key["size"] == 600 and key["split_seed"] == 0 and "root" not in key
    digits = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 28, 28)
    images, modes = stacked_mnist(digits, torch.arange(10), 50, seed=3)
    again, _ = stacked_mnist(digits, torch.arange(10), 50, seed=3)
    other, _ = stacked_mnist(digits, torch.arange(10), 50, seed=4)
    assert torch.equal(images, again) and not torch.equal(images, other)
    # each channel's constant value is its digit: the label spells the three channels
    spelled = images[:, :, 0, 0].long() @ torch.tensor([100, 10, 1])
    assert torch.equal(spelled, modes)
    with pytest.raises(GenlabError, match="data.channels=3"):
        ImageDataModule("stacked_mnist", channels=1)


def test_mode_kl_by_hand():
    assert mode_kl(torch.arange(1000)) == pytest.approx(0.0, abs=1e-12)
    # half the samples on mode 0, half on mode 1: KL = log(1000 / 2)
    assert mode_kl(torch.tensor([0, 1] * 5)) == pytest.approx(math.log(500))
    counts = torch.zeros(1000)
    counts[:100] = 3  # 100 equal modes: KL = log(1000 / 100)
    assert kl_to_uniform(counts) == pytest.approx(math.log(10))


def test_misread_bounds_are_upper_bounds_of_the_held_out_confusion():
    # no misread in 50: the one-sided 95% bound solves (1 - p)^50 = 0.05
    assert binomial_upper(0, 50) == pytest.approx(NONE_IN_50)
    assert torch.allclose(misread_bounds(PERFECT), uniform_bounds(NONE_IN_50))
    p = binomial_upper(2, 50)  # P(X <= 2 | 50, p) = 0.05 at the bound
    cdf = sum(math.comb(50, k) * p**k * (1 - p) ** (50 - k) for k in range(3))
    assert cdf == pytest.approx(0.05) and binomial_upper(50, 50) == 1.0
    reads = PERFECT.clone()
    reads[7, :2] = 1  # two 7s read as 1
    table = confusion(reads)
    assert table[7, 1] == 2 and table[7, 7] == 48 and table.sum() == 500
    bounds = misread_bounds(reads)
    assert bounds[7, 1] == pytest.approx(p) and bounds[1, 7] == pytest.approx(NONE_IN_50)
    assert bounds[7, 7] == 1


def test_calibrated_counts_merge_what_misreads_explain_by_hand():
    counts = torch.zeros(1000)
    counts[[123, 124, 125, 224, 999]] = torch.tensor([100.0, 5, 20, 2, 2])
    # every misread rate at most 0.25: from 123, misreads carry up to 25 samples to 124 and 125
    # (one digit away), 6.25 to 224 (two), 1.56 to 999 (three); all but 999 go to 123
    merged = calibrated_counts(counts, uniform_bounds(0.25))
    assert merged[123] == 127 and merged[999] == 2 and int((merged > 0).sum()) == 2
    # at most 0.1: 125 (20 > 10) and 224 (2 > 1) hold more than misreads explain
    merged = calibrated_counts(counts, uniform_bounds(0.1))
    assert merged[[123, 125, 224, 999]].tolist() == [105, 20, 2, 2] and merged.sum() == 129
    # the bounds are directed: 2 read as 1 often (0.5), 1 as 2 rarely (0.01)
    bounds = uniform_bounds(0.01)
    bounds[2, 1] = 0.5
    counts = torch.zeros(1000)
    counts[[1, 2]] = torch.tensor([4.0, 10])  # 0.5 * 10 of mode 2 reach mode 1
    assert calibrated_counts(counts, bounds)[[1, 2]].tolist() == [0, 14]
    counts[[1, 2]] = torch.tensor([10.0, 4])  # 0.01 * 10 of mode 1 reach mode 2
    assert calibrated_counts(counts, bounds)[[1, 2]].tolist() == [10, 4]
    with pytest.raises(ValueError, match="bounds"):
        calibrated_counts(counts, uniform_bounds(1.0))


def test_calibration_sets_have_exactly_the_true_modes():
    truth, read = calibration_set(PERFECT, 100, 26000, seed=1)
    assert torch.unique(truth).numel() == 100 and torch.equal(truth, read)
    again, _ = calibration_set(PERFECT, 100, 26000, seed=1)
    assert torch.equal(truth, again)
    _, read = calibration_set(one_misread_per_class(), 10, 2000, seed=1)
    assert not torch.equal(truth[:2000], read)


@pytest.mark.parametrize("true_modes", [10, 100, 1000])
def test_calibrated_count_lands_on_the_truth_where_the_raw_count_overcounts(true_modes):
    reads = one_misread_per_class()
    truth, read = calibration_set(reads, true_modes, 26000, seed=true_modes)
    counts = torch.bincount(read, minlength=1000)
    merged = calibrated_counts(counts, misread_bounds(reads))
    calibrated, raw = int((merged > 0).sum()), int((counts > 0).sum())
    assert abs(calibrated - true_modes) <= 0.1 * true_modes
    assert kl_to_uniform(merged) == pytest.approx(mode_kl(truth), abs=0.01)
    if true_modes < 1000:
        # each true mode's 3 single-digit misreads (26000 / true_modes * 2% samples each, 52 or
        # more) land on modes no sample truly has: the papers' count reads about 4x the truth
        assert raw >= 3.5 * true_modes and kl_to_uniform(counts) < mode_kl(truth) - 0.05
    else:
        assert raw == 1000  # nothing left to invent


@pytest.mark.parametrize("true_modes", [100, 600, 1000])
def test_on_skewed_histograms_the_truth_lies_between_the_two_counts(true_modes):
    """A GAN's modes are not equally full: a sparse true mode beside a full one is what misreads
    could have made, so the calibrated count is a lower bound there and the raw count an upper
    one (with this classifier at 26k samples, Dirichlet(1) weights over 1000 modes: true 960,
    raw 972, calibrated 784)."""
    reads = one_misread_per_class()
    gen = torch.Generator().manual_seed(true_modes)
    chosen = torch.randperm(1000, generator=gen)[:true_modes]
    weights = torch.rand(true_modes, generator=gen) ** 4  # a few full modes, many sparse
    truth = chosen[torch.multinomial(weights, 26000, replacement=True, generator=gen)]
    digit = truth[:, None] // torch.tensor([100, 10, 1]) % 10
    read = reads[digit, torch.randint(50, (26000, 3), generator=gen)] @ torch.tensor([100, 10, 1])
    counts = torch.bincount(read, minlength=1000)
    calibrated = int((calibrated_counts(counts, misread_bounds(reads)) > 0).sum())
    true, raw = torch.unique(truth).numel(), int((counts > 0).sum())
    assert calibrated < 0.9 * true and true <= raw


def test_a_classifier_below_the_floor_is_a_one_line_error(tmp_path):
    with pytest.raises(GenlabError, match=r"^metrics.modes_classifier: held-out accuracy") as e:
        ModeClassifier(str(tmp_path), width=4, epochs=1, members=1, batch_size=512, augment=False)
    assert "\n" not in str(e.value) and f"< {MIN_ACCURACY}" in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing cached


@pytest.mark.slow
def test_classifier_is_accurate_cached_and_calibrated(classifier):
    assert classifier.accuracy >= MIN_ACCURACY
    again = ModeClassifier(str(classifier.path.parent))  # loads, does not retrain
    assert again.accuracy == classifier.accuracy and torch.equal(again.reads, classifier.reads)
    assert len(list(classifier.path.parent.iterdir())) == 1
    for n in (26000, 10000):  # metrics=modes and the metrics default
        table = classifier.calibration(n)["true_modes_drawn_from"]
        for k in ("10", "100", "1000"):
            row = table[k]
            assert abs(row["modes_calibrated"] - row["true_modes"]) <= 0.1 * row["true_modes"]
            assert row["mode_kl_calibrated"] == pytest.approx(row["true_mode_kl"], abs=0.02)
        assert table["100"]["modes"] > 1.5 * table["100"]["true_modes"]  # the papers' count
        assert table["10"]["modes"] > 1.5 * table["10"]["true_modes"]
    # 1000 samples are 10 per mode of 100: single misreads pass for modes, and it says so
    with pytest.warns(GenlabWarning, match=r"metrics.num_samples=1000: val/modes_calibrated"):
        classifier.calibration(1000)


@pytest.mark.slow
def test_calibration_reads_are_what_the_classifier_reads_on_images(classifier):
    from genlab.data.sources import mnist5k_raw

    images, labels = mnist5k_raw()
    _, held = held_out_split(labels, 50, 0)
    digits = (images[held].float() / 127.5 - 1).reshape(10, 50, 28, 28)
    gen = torch.Generator().manual_seed(0)
    digit, pick = torch.randint(10, (300, 3), generator=gen), torch.randint(50, (300, 3))
    stacked = digits[digit, pick]  # (300, 3, 28, 28) held-out digits
    read = classifier.reads[digit, pick] @ torch.tensor([100, 10, 1])
    assert torch.equal(classifier.modes(stacked), read)


@pytest.mark.slow
def test_real_stacked_mnist_covers_all_modes_and_one_mode_scores_log_1000(classifier):
    images, labels = stacked_mnist(*_mnist(), 6000, seed=0)
    x = images.float() / 127.5 - 1
    modes = torch.cat([classifier.modes(chunk) for chunk in x.split(2000)])
    assert (modes == labels).double().mean() > 0.93  # three digits right at ~98% each
    score = classifier.score(modes)
    # 6000 uniform draws of 1000 modes miss ~2.5 modes; KL ~ 999 / (2 * 6000) = 0.08
    assert score["modes"] >= 990 and score["mode_kl"] < 0.2
    assert score["modes_calibrated"] >= 900
    one = x[:1].repeat(500, 1, 1, 1)  # a generator that always returns one image
    with pytest.warns(GenlabWarning, match="num_samples=500"):  # 5 samples per mode of 100
        collapsed = classifier.score(classifier.modes(one))
    assert collapsed["modes"] == 1 and collapsed["mode_kl"] == pytest.approx(math.log(1000))
    assert collapsed["modes_calibrated"] == 1


@pytest.mark.slow
def test_modes_need_no_backbone_and_rgb_and_record_the_calibration(classifier):
    metric = ImageMetrics(["modes"], modes_classifier={"cache_dir": str(classifier.path.parent)})
    assert metric.backbone is None and not metric.needs_real
    x = torch.zeros(4, 3, 28, 28) - 1
    out = metric.compute(None, None, fake_modes=metric.features(x)["mode"])
    assert out["modes"] == 1 and out["modes_calibrated"] == 1 and out["n_fake"] == 4
    protocol = metric.protocol()["modes_classifier"]
    assert protocol["calibration"]["n"] == 4 and protocol["misread_bounds"][2][1] < 0.2
    assert set(protocol["calibration"]["true_modes_drawn_from"]) == {"10", "100", "1000"}
    with pytest.raises(GenlabError, match="data=stacked_mnist"):
        metric.features(torch.zeros(2, 1, 28, 28))


def _mnist():
    from genlab.data.sources import mnist5k_raw

    return mnist5k_raw()
