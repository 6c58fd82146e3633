"""Jackknife intervals (genlab.metrics.jackknife) and FID_inf, against hand computations and
against closed-form truths in the coverage simulation (experiments/intervals/coverage.py)."""

import json
import subprocess
import sys

import pytest
import torch

from genlab.errors import GenlabError
from genlab.metrics.fid import feature_stats, fid_from_features, fid_from_stats, fid_infinity
from genlab.metrics.image_metrics import ImageMetrics
from genlab.metrics.jackknife import (
    _leave_out_stats,
    assign_groups,
    fid_jackknife,
    kid_jackknife,
    summarise,
)
from genlab.metrics.kid import poly_kernel
from tests.conftest import REPO, cli_env

COVERAGE = REPO / "experiments" / "intervals" / "coverage.py"


def features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 5 + shift


def test_groups_are_a_seeded_random_split_of_near_equal_size():
    groups = assign_groups(103, 10, seed=1)
    assert sorted(torch.bincount(groups).tolist()) == [10] * 7 + [11] * 3
    assert torch.equal(groups, assign_groups(103, 10, seed=1))
    assert not torch.equal(groups, torch.arange(103) % 10)  # not by position


def test_leave_out_statistics_equal_those_of_the_rows_left():
    x = features(103, 7, 0)
    groups = assign_groups(103, 10, seed=3)
    for g, (mean, cov) in enumerate(_leave_out_stats(x, groups, 10)):
        want_mean, want_cov = feature_stats(x[groups != g])
        assert torch.allclose(mean, want_mean) and torch.allclose(cov, want_cov)


def test_summarise_by_hand():
    # K = 4 leave-outs 1, 2, 3, 6 (mean 3) of a statistic worth 2.5 on all the data:
    # estimate 4 * 2.5 - 3 * 3 = 1; se^2 = 3/4 * (4 + 1 + 0 + 9) = 10.5; t(0.975, 3) = 3.182446
    j = summarise(2.5, torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64))
    assert j.estimate == pytest.approx(1.0)
    assert j.se == pytest.approx(10.5**0.5)
    assert (j.low, j.high) == pytest.approx((1 - 3.182446 * 10.5**0.5, 1 + 3.182446 * 10.5**0.5))
    kept = summarise(2.5, torch.tensor([1.0, 2.0, 3.0, 6.0]), debias=False)
    assert kept.estimate == 2.5 and kept.se == pytest.approx(j.se)


@pytest.mark.parametrize("d", [6, 150], ids=["more-images-than-dims", "fewer-images-than-dims"])
def test_fid_jackknife_leave_outs_are_fids_of_the_rows_left(d):
    real, fake = features(120, d, 0), features(100, d, 1, shift=0.5)
    j = fid_jackknife(real, fake, 10)
    g_real, g_fake = assign_groups(120, 10, 2020), assign_groups(100, 10, 2021)
    leave = torch.tensor(  # from each leave-out's mean and covariance, two (D, D) eigensolves
        [
            fid_from_stats(*feature_stats(real[g_real != g]), *feature_stats(fake[g_fake != g]))
            for g in range(10)
        ],
        dtype=torch.float64,
    )
    assert j.value == pytest.approx(fid_from_features(real, fake, warn=False))
    want = summarise(j.value, leave)
    # rel 1e-6: with fewer images than dimensions the covariances are singular, and the (D, D)
    # eigensolves take square roots of their null space's round-off (3.5e-7 apart here)
    assert (j.estimate, j.se, j.high) == pytest.approx(
        (want.estimate, want.se, want.high), rel=1e-6
    )
    assert j.low == pytest.approx(max(want.low, 0.0), rel=1e-6, abs=1e-9)


def test_kid_jackknife_centres_on_the_all_pairs_u_statistic():
    real, fake = features(103, 7, 0), features(97, 7, 1, shift=0.3)
    n, m = len(real), len(fake)
    kxx, kyy, kxy = poly_kernel(real, real), poly_kernel(fake, fake), poly_kernel(real, fake)
    u = (kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1))
    u = float(u - 2 * kxy.mean())
    j = kid_jackknife(real, fake, 10, block=16)  # several row blocks
    assert j.value == pytest.approx(u, rel=1e-12) and j.estimate == j.value
    assert j.low < u < j.high


def test_too_few_groups_or_images_are_one_line_errors():
    with pytest.raises(GenlabError, match=r"metrics.jackknife=5: use 0 \(off\) or >= 10"):
        ImageMetrics(["fid"], jackknife=5)
    with pytest.raises(GenlabError, match="metrics.jackknife=20 groups need >= 2 images"):
        fid_jackknife(features(30, 4, 0), features(30, 4, 1), 20)


def test_fid_infinity_recovers_the_intercept_of_a_bias_that_falls_as_one_over_n():
    # Fakes N(0.1, I) in 32-d: E FID_M against fixed real statistics is the FD of the real
    # statistics to the fake population plus about tr(I) / M, which the fit extrapolates away.
    g = torch.Generator().manual_seed(0)
    real = torch.randn(20000, 32, generator=g, dtype=torch.float64)
    fake = torch.randn(8000, 32, generator=g, dtype=torch.float64) + 0.1
    fit = fid_infinity(real, fake, points=15, min_fake=1000, seed=0)
    mu, sigma = feature_stats(real)
    pop = fid_from_stats(mu, sigma, torch.full((32,), 0.1, dtype=torch.float64), torch.eye(32))
    assert fit["sizes"][0] == 1000 and fit["sizes"][-1] == 8000 and len(fit["fids"]) == 15
    assert fit["slope"] > 0 and fit["r2"] > 0.9
    assert abs(fit["value"] - pop) < 0.03 < fit["fids"][-1] - pop  # the plug-in sits above


@pytest.mark.slow
def test_intervals_cover_the_truth_in_the_coverage_simulation(tmp_path):
    """200 replications per setting: near-identical Gaussian and clearly different skewed
    features. The percentile bootstrap of the fakes that genlab had before covered the true FD in
    0 and 88 of 200, the true MMD^2 in 173 and 183 of 200 (the same grid, measured with it)."""
    done = subprocess.run(
        [sys.executable, str(COVERAGE), "--quick", "--out", str(tmp_path)],
        env=cli_env(tmp_path), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "coverage.json").read_text())
    assert [r["reps"] for r in results] == [200, 200]
    for r in results:
        assert r["fid_coverage"] >= 0.9 and r["kid_coverage"] >= 0.9, r
        # the plug-in FID misses the truth; the jackknife's centre does not
        assert r["mean_plugin_fid"] - r["true_fd"] > 5 * abs(r["mean_fid_estimate"] - r["true_fd"])
    assert "| FID 95% coverage |" in (tmp_path / "coverage.md").read_text()
