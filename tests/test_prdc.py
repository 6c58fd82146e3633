"""k-NN metrics, memorisation and iFID as pure functions of features (intervals: test_intervals).

Agreement: precision/recall equal torch-fidelity 0.4's ``prc`` (its ``prc_neighborhood`` = k,
``calculate_precision_recall_part`` and ``_full``), density/coverage the reference ``prdc``
package's ``compute_prdc`` (clovaai), on the same features, to 1e-6.
"""

from types import SimpleNamespace

import pytest
import torch
from prdc import compute_prdc
from torch_fidelity.metric_prc import (
    calculate_precision_recall_full,
    calculate_precision_recall_part,
)

from genlab.errors import GenlabError
from genlab.metrics import (
    copies_fraction,
    fid_from_features,
    ifid_from_features,
    prdc_from_features,
)
from genlab.metrics.knn import knn_radii, nearest, sq_dists
from genlab.metrics.memorisation import copies_from_distances

pytestmark = pytest.mark.filterwarnings("ignore:FID from .* singular", "ignore:KID subset")


def gaussians(n: int, m: int, d: int, shift: float = 0.0, scale: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, d, generator=g, dtype=torch.float64)
    fake = scale * torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    return real, fake


@pytest.mark.parametrize(("n", "m", "d", "shift", "scale"), [
    (300, 250, 16, 0.0, 1.0), (200, 320, 32, 0.5, 0.8), (257, 129, 8, 0.0, 1.5),
])  # fmt: skip
@pytest.mark.parametrize("block", [7, 64, 4096])
def test_prdc_agrees_with_torch_fidelity_and_prdc(n, m, d, shift, scale, block):
    real, fake = gaussians(n, m, d, shift, scale, seed=n)
    ours = prdc_from_features(real, fake, k_pr=3, k_dc=5, block=block)
    # torch-fidelity: features_1 is generated, features_2 real; its batch_size blocks too
    for fn in (calculate_precision_recall_full, calculate_precision_recall_part):
        precision, recall = fn(fake, real, neighborhood=3, batch_size=50)
        assert ours.precision == pytest.approx(precision, abs=1e-6)
        assert ours.recall == pytest.approx(recall, abs=1e-6)
    theirs = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    assert ours.density == pytest.approx(theirs["density"], abs=1e-6)
    assert ours.coverage == pytest.approx(theirs["coverage"], abs=1e-6)
    # k = 5 precision/recall through prdc too (it uses < where torch-fidelity uses <=)
    other_k = prdc_from_features(real, fake, k_pr=5, k_dc=5, block=block)
    assert other_k.precision == pytest.approx(theirs["precision"], abs=1e-6)
    assert other_k.recall == pytest.approx(theirs["recall"], abs=1e-6)
    assert 0 < ours.precision < 1 or shift == 0


def test_blocks_never_exceed_the_block_size(monkeypatch):
    real, fake = gaussians(100, 90, 4)
    shapes = []
    original = sq_dists

    def spy(x, y):
        shapes.append(x.shape[0] * y.shape[0])
        return original(x, y)

    monkeypatch.setattr("genlab.metrics.knn.sq_dists", spy)
    monkeypatch.setattr("genlab.metrics.prdc.sq_dists", spy)
    prdc_from_features(real, fake, block=10)
    assert max(shapes) <= 10 * 100 and len(shapes) == 10 + 9 + 10


def test_identical_sets_score_one():
    real, _ = gaussians(200, 1, 16)
    out = prdc_from_features(real, real.clone())
    assert out.precision == out.recall == out.coverage == 1.0
    assert out.density == pytest.approx(1.0, abs=0.2)


def test_collapsed_set_has_high_precision_and_near_zero_recall():
    """Every fake is one real point plus small noise: faithful, but no diversity.

    Recall (real images inside the fake manifold) is what drops, not precision: the mixup
    reported against one implementation's tracker, pinned here.
    """
    real, _ = gaussians(400, 1, 16)
    g = torch.Generator().manual_seed(1)
    collapsed = real[7] + 0.01 * torch.randn(400, 16, generator=g, dtype=torch.float64)
    out = prdc_from_features(real, collapsed)
    assert out.precision == 1.0
    assert out.recall < 0.02 and out.coverage < 0.1  # real balls around real[7] cover it
    healthy = prdc_from_features(real, gaussians(400, 400, 16, seed=2)[1])
    assert healthy.recall > 0.5 and healthy.coverage > 0.5


def test_shifted_set_lowers_precision():
    real, same = gaussians(400, 400, 16, seed=3)
    _, shifted = gaussians(400, 400, 16, shift=1.0, seed=4)
    base, moved = prdc_from_features(real, same), prdc_from_features(real, shifted)
    assert moved.precision < base.precision - 0.3
    assert moved.density < base.density / 2


def test_too_few_images_for_k_names_the_keys():
    real, fake = gaussians(3, 10, 4)
    with pytest.raises(GenlabError, match="metrics.num_real"):
        prdc_from_features(real, fake)


def test_knn_helpers_against_a_full_matrix():
    x, y = gaussians(50, 40, 5)
    full = torch.cdist(x, x)
    radii = knn_radii(x, {1, 3}, block=7)
    for k in (1, 3):
        torch.testing.assert_close(radii[k].sqrt(), full.sort(1).values[:, k])
    dist, index = nearest(y, x, block=9)
    torch.testing.assert_close(dist, torch.cdist(y, x).min(1).values)
    assert torch.equal(index, torch.cdist(y, x).argmin(1))


def test_copies_of_training_images_near_one_fresh_samples_near_zero():
    train, fresh = gaussians(500, 300, 16, seed=5)
    g = torch.Generator().manual_seed(6)
    copied = train[torch.randperm(500, generator=g)[:300]]
    assert copies_fraction(train, copied, block=64) == 1.0
    assert copies_fraction(train, fresh, block=64) < 0.05
    near = copied + 1e-3 * torch.randn(300, 16, generator=g, dtype=torch.float64)
    assert copies_fraction(train, near) > 0.95
    # the same number from the k-NN pass of precision/recall
    for samples in (copied, fresh, near):
        out = prdc_from_features(train, samples)
        assert copies_from_distances(out.fake_to_real, out.real_to_real) == copies_fraction(
            train, samples
        )


def test_ifid_separates_shuffled_labels_where_fid_cannot():
    """A conditional 'model' whose samples ignore their labels: same FID, far worse iFID."""
    g = torch.Generator().manual_seed(7)
    centres = 3 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(800) % 4
    real = centres[labels] + torch.randn(800, 8, generator=g, dtype=torch.float64)
    fake = centres[labels] + torch.randn(800, 8, generator=g, dtype=torch.float64)
    shuffled = labels[torch.randperm(800, generator=g)]  # labels no longer match the images
    good = ifid_from_features(real, labels, fake, labels)
    bad = ifid_from_features(real, labels, fake, shuffled)
    assert fid_from_features(real, fake) < 0.5 and good < 0.5
    assert bad > 20 * good and bad > 10


def test_computes_knows_which_keys_the_configured_metrics_log():
    from genlab.callbacks.sample_metrics import SampleMetrics

    callback = SampleMetrics.__new__(SampleMetrics)  # no backbone needed to answer
    callback.metrics = ("modes",)
    callback.image_metrics = SimpleNamespace(jackknife=0, backbone=None)
    assert callback.computes("val/modes") and callback.computes("val/mode_kl")
    assert not callback.computes("val/fid") and not callback.computes("val/nosuch")
    callback.metrics = ("fid", "prdc")
    callback.image_metrics = SimpleNamespace(
        jackknife=10, backbone=SimpleNamespace(name="inception")
    )
    assert callback.computes("val/fid_ci_high") and callback.computes("val/fid_jackknife")
    assert callback.computes("val/recall") and not callback.computes("val/recall_ci_low")
    assert not callback.computes("val/kid_ci_low") and not callback.computes("val/is")
    callback.image_metrics.backbone.name = "dinov2"  # a Frechet distance is fid on Inception only
    assert callback.computes("val/fd_dinov2_ci_low") and not callback.computes("val/fid")


def test_knn_benchmark_runs_and_writes_its_results(tmp_path, monkeypatch, capsys):
    import json
    import runpy

    from tests.conftest import REPO

    script = REPO / "experiments" / "benchmarks" / "knn_metrics.py"
    argv = [str(script), "--n", "100", "--dim", "16", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(script), run_name="__main__")  # in-process: no second torch import
    result = json.loads((tmp_path / "knn_metrics.json").read_text())
    assert result["n_real"] == 100 and set(result["values"]) >= {"precision", "fid", "kid"}
    assert "one k-NN pass" in (tmp_path / "knn_metrics.md").read_text()


def test_ifid_labels_follow_the_reference_counts_per_class():
    from genlab.callbacks.sample_metrics import ifid_labels

    real = torch.tensor([2] * 7 + [0] * 5 + [1] * 3)
    assert ifid_labels(real, None).tolist() == [0] * 5 + [1] * 3 + [2] * 7  # StudioGAN's counts
    assert torch.bincount(ifid_labels(real, 4)).tolist() == [4, 4, 4]  # metrics.ifid_per_class


def test_ifid_on_identical_distributions_sits_on_the_finite_sample_floor_at_studiogans_counts():
    """Real and fake from the same class-conditional Gaussians: iFID is then all finite-sample
    bias. With StudioGAN's counts (fakes per class = the reference's) its mean equals the floor,
    the mean FID of two independent samples of those sizes; with genlab's former split
    (num_samples / num_classes fakes per class) it sits far above."""
    from genlab.callbacks.sample_metrics import ifid_labels

    g = torch.Generator().manual_seed(0)
    d, counts = 8, [300, 80, 150]
    centres = 3 * torch.randn(len(counts), d, generator=g, dtype=torch.float64)

    def draw(labels):
        return centres[labels] + torch.randn(len(labels), d, generator=g, dtype=torch.float64)

    real_labels = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    studio, former, floor = [], [], []
    for _ in range(40):
        real = draw(real_labels)
        fake_labels = ifid_labels(real_labels, None)
        studio.append(ifid_from_features(real, real_labels, draw(fake_labels), fake_labels))
        few = torch.arange(30) % 3  # 10 per class, as 30 samples cycled over the classes
        former.append(ifid_from_features(real, real_labels, draw(few), few))
        floor.append(
            sum(fid_from_features(draw(real_labels[real_labels == c]),
                                  draw(real_labels[real_labels == c]), warn=False)
                for c in range(3)) / 3
        )  # fmt: skip
    studio, former, floor = (torch.tensor(v, dtype=torch.float64) for v in (studio, former, floor))
    se = ((studio.var() + floor.var()) / 40).sqrt()
    assert abs(studio.mean() - floor.mean()) < 3 * se, (studio.mean(), floor.mean())
    assert former.mean() > 3 * floor.mean()
