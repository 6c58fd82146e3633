"""Stacked MNIST: the data source, the digit classifier, val/modes and val/mode_kl.

Reference numbers (VEEGAN, Srivastava et al. 2017, Table 2; PacGAN, Lin et al. 2018, Table 3;
26k samples, MNIST-60k classifier): DCGAN 99 modes / KL 3.40, PacDCGAN2 1000 / 0.06.
"""

import math

import pytest
import torch

from genlab.callbacks.sample_metrics import data_key
from genlab.data import ImageDataModule
from genlab.data.sources import stacked_mnist
from genlab.errors import GenlabError
from genlab.metrics import ImageMetrics
from genlab.metrics.modes import ModeClassifier, mode_kl


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> ModeClassifier:
    return ModeClassifier(cache_dir=str(tmp_path_factory.mktemp("modes")))


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


def test_classifier_is_accurate_and_cached(classifier, tmp_path_factory):
    assert classifier.accuracy >= 0.95
    again = ModeClassifier(cache_dir=str(classifier.path.parent))  # loads, does not retrain
    assert again.accuracy == classifier.accuracy and again.path == classifier.path
    # other settings are another cache entry; one epoch falls short of the asserted accuracy
    with pytest.raises(GenlabError, match="held-out accuracy 0.9[0-4]"):
        ModeClassifier(cache_dir=str(classifier.path.parent), epochs=1)
    assert len(list(classifier.path.parent.iterdir())) == 1


def test_real_stacked_mnist_covers_all_modes_and_one_mode_scores_log_1000(classifier):
    images, labels = stacked_mnist(*_mnist(), 6000, seed=0)
    x = images.float() / 127.5 - 1
    modes = torch.cat([classifier.modes(chunk) for chunk in x.split(2000)])
    assert (modes == labels).double().mean() > 0.9  # three digits right at ~97.5% each
    score = classifier.score(modes)
    # 6000 uniform draws of 1000 modes miss ~2.5 modes; KL ~ 999 / (2 * 6000) = 0.08
    assert score["modes"] >= 990 and score["mode_kl"] < 0.2
    one = x[:1].repeat(500, 1, 1, 1)  # a generator that always returns one image
    collapsed = classifier.score(classifier.modes(one))
    assert collapsed["modes"] == 1 and collapsed["mode_kl"] == pytest.approx(math.log(1000))


def test_mode_kl_by_hand():
    assert mode_kl(torch.arange(1000)) == pytest.approx(0.0, abs=1e-12)
    # half the samples on mode 0, half on mode 1: KL = log(1000 / 2)
    assert mode_kl(torch.tensor([0, 1] * 5)) == pytest.approx(math.log(500))


def test_modes_need_no_backbone_and_rgb(classifier):
    metric = ImageMetrics(["modes"], modes_classifier={"cache_dir": str(classifier.path.parent)})
    assert metric.backbone is None and not metric.needs_real
    x = torch.zeros(4, 3, 28, 28) - 1
    out = metric.compute(None, None, fake_modes=metric.features(x)["mode"])
    assert out["modes"] == 1 and out["n_fake"] == 4
    with pytest.raises(GenlabError, match="data=stacked_mnist"):
        metric.features(torch.zeros(2, 1, 28, 28))


def _mnist():
    from genlab.data.sources import mnist5k_raw

    return mnist5k_raw()
