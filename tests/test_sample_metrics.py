"""SampleMetrics and ImageMetrics wiring of the newer metrics: memorisation against held-out
images, Vendi, CMMD on CLIP, PPL of a mapping-network generator, and the result keys."""

import warnings
from types import SimpleNamespace

import pytest
import torch

from genlab.callbacks.sample_features import single_process
from genlab.callbacks.sample_metrics import SampleMetrics
from genlab.data import ImageDataModule
from genlab.errors import GenlabError
from genlab.metrics import ImageMetrics
from genlab.metrics import memorisation as mem
from genlab.metrics.names import NO_PR_INTERVAL, every_result_key
from genlab.metrics.vendi import vendi_from_features
from tests.test_cmmd import TINY, random_clip_state
from tests.test_ppl import tiny_generator
from tests.test_vqgan import random_lpips


def gaussians(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_memorisation_metrics_read_the_held_out_features(weights):
    metrics = ImageMetrics(["copies", "ct", "authenticity"], str(weights), knn_block=64)
    train, heldout = gaussians(300, 8, 0), gaussians(200, 8, 1)
    fresh, copied = gaussians(200, 8, 2), train[:200] + 1e-6
    for fake, copying in ((fresh, False), (copied, True)):
        out = metrics.compute(train, fake, heldout_pool=heldout)
        want = mem.calibrated_copies(train, heldout, fake, 64).values()
        assert {k: out[k] for k in want} == want
        assert out["ct"] == mem.ct_score(train, heldout, fake, block=64)
        assert out["authenticity"] == mem.authenticity(train, fake, 64)
        assert out["authenticity_heldout"] == mem.authenticity(train, heldout, 64)
        assert (out["copies_excess"] > 0.5) is copying and (out["ct"] < -5) is copying
    with pytest.raises(GenlabError, match="metrics.heldout_split"):
        metrics.compute(train, fresh)  # ct and authenticity have nothing held out to compare


def test_held_out_split_may_not_be_the_reference(weights):
    with pytest.raises(GenlabError, match="metrics.heldout_split=train is the reference split"):
        SampleMetrics(["copies"], inception_weights=str(weights), heldout_split="train")
    with pytest.raises(GenlabError, match="metrics.heldout_split='nope'"):
        SampleMetrics(["fid"], inception_weights=str(weights), heldout_split="nope")


def test_vendi_of_the_sample_features(weights):
    metrics = ImageMetrics(["vendi"], str(weights), vendi_q=2.0)
    fake = gaussians(50, 16, 0)
    assert metrics.compute(None, fake)["vendi"] == vendi_from_features(fake, 2.0)
    assert metrics.protocol()["vendi_q"] == 2.0


def test_cmmd_needs_the_clip_backbone_and_writes_fd_clip(weights, tmp_path):
    with pytest.raises(
        GenlabError, match="cmmd is an MMD of CLIP embeddings: set metrics.backbone"
    ):
        ImageMetrics(["cmmd"], str(weights))
    path = tmp_path / "clip.pth"
    torch.save(random_clip_state(TINY), path)
    metrics = ImageMetrics(["fid", "cmmd"], backbone="clip", clip_weights=str(path))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 32, 32, generator=g) * 2 - 1
    real = metrics.features(images)["pool"]
    same = metrics.compute(real, metrics.features(images.flip(0))["pool"])
    darker = metrics.compute(real, metrics.features(images * 0.3 - 0.7)["pool"])
    assert set(same) == {"fd_clip", "cmmd", "n_real", "n_fake"}  # fid means Inception only
    assert darker["cmmd"] > 5 * abs(same["cmmd"]) and darker["fd_clip"] > same["fd_clip"]


class StyleModule(torch.nn.Module):
    """What PPL reads of a GAN module: its sampling generator, on the CPU."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator
        self.sampling_generator = generator
        self.device = torch.device("cpu")
        self.num_classes = 0


@pytest.mark.slow  # LPIPS-VGG built twice, ~10 s
def test_ppl_through_sample_metrics(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lpips = random_lpips(tmp_path / "lpips.pth", net="vgg")
    ppl = {"lpips_weights": str(lpips), "num_samples": 6, "batch_size": 3}
    callback = SampleMetrics(["ppl"], num_samples=2, ppl=ppl)
    assert callback.image_metrics.backbone is None  # PPL reads no features
    trainer = single_process(None)
    value = callback.ppl.score(trainer, StyleModule(tiny_generator()), seed=0)
    assert value > 0 and value == callback.ppl.score(trainer, StyleModule(tiny_generator()), 0)
    protocol = callback.ppl.protocol()
    assert (protocol["num_samples"], protocol["epsilon"], protocol["space"]) == (6, 1e-4, "w")
    assert len(protocol["lpips_sha256"]) == 64
    dcgan = SimpleNamespace(sampling_generator=torch.nn.Linear(2, 2))
    with pytest.raises(GenlabError, match="ppl needs a generator with a mapping network"):
        callback.ppl.score(trainer, dcgan, 0)
    with pytest.raises(GenlabError, match="metrics.ppl.lpips_weights is not set"):
        SampleMetrics(["ppl"], num_samples=2)


def test_no_interval_for_precision_and_recall_says_why_once(weights):
    with pytest.warns(UserWarning, match="no interval for precision and recall") as seen:
        ImageMetrics(["fid", "prdc"], str(weights), jackknife=10)
    assert len(seen) == 1 and str(seen[0].message) == NO_PR_INTERVAL


@pytest.mark.slow  # Inception passes over 40 samples and 60 real images
def test_every_key_a_configuration_logs_is_a_known_result_key(weights, tmp_path):
    dm = ImageDataModule("synthetic", image_size=32, synthetic_size=200, synthetic_classes=2)
    callback = SampleMetrics(
        ["fid", "kid", "prdc", "copies", "ct", "authenticity", "vendi", "fid_inf"],
        num_samples=40, num_real=40, batch_size=40, inception_weights=str(weights),
        kid_subset_size=20, heldout_split="val", jackknife=10, cache_dir=str(tmp_path),
    )  # fmt: skip

    class Replay(torch.nn.Module):
        device = torch.device("cpu")
        num_classes = 0

        def sample(self, n, labels=None):
            return torch.rand(n, 3, 32, 32) * 2 - 1

    out = callback.evaluate(single_process(dm), Replay())
    assert set(out) <= set(every_result_key()) | {"n_real", "n_fake"}
    assert all(callback.computes(f"val/{k}") for k in out if k not in ("kid_mean", "kid_std"))
    assert out["fid_ci_low"] <= out["fid_jackknife"] <= out["fid_ci_high"] and "fid_inf" in out
    protocol = callback.image_metrics.protocol()
    assert protocol["fid_inf_fit"]["sizes"][-1] == 40 and "ct_method" in protocol
