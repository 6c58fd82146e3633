"""Samplers fitted after training: EM against scikit-learn, the two-stage VAE, save and reuse,
genlab-sample and genlab-eval with sampler=gmm|two_stage, and their bad input."""

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from genlab.config import sampler_settings
from genlab.errors import GenlabError
from genlab.metrics.fid import fid_from_stats
from genlab.models import samplers as smp
from genlab.models.mixture import Mixture, fit_mixture, kmeans_labels, m_step
from genlab.models.samplers import (
    GMMSampler,
    SecondStage,
    fit_second_stage,
    load_or_fit,
    sample_through,
)
from tests.conftest import ok, train_checkpoint

GMM = {"name": "gmm", "components": 3, "max_iter": 2000, "tol": 1e-3, "reg_covar": 1e-6, "seed": 0}
TWO_STAGE = {"name": "two_stage", "width": 32, "depth": 2, "epochs": 3, "batch_size": 64,
             "lr": 1e-3, "seed": 0}  # fmt: skip


def clusters(n: int, k: int, d: int, spread: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` points (n, d) of ``k`` Gaussian clusters with random full covariances; labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * spread
    shapes = torch.randn(k, d, d, generator=g) * 0.5
    labels = torch.randint(k, (n,), generator=g)
    x = centres[labels] + (shapes[labels] @ torch.randn(n, d, 1, generator=g)).squeeze(-1)
    return x.double(), labels


def frechet(a: Tensor, b: Tensor) -> float:
    """Frechet distance between two point sets (N, D), as FID between feature sets."""
    stats = [(x.double().mean(0), torch.cov(x.double().T)) for x in (a, b)]
    return float(fid_from_stats(*stats[0], *stats[1]))


# ---------------------------------------------------------------- EM against scikit-learn


def test_em_follows_sklearn_step_for_step_from_the_same_start():
    """From the same k-means start, sklearn.mixture.GaussianMixture (pythae's fitter, with its
    settings: full covariances, tol 1e-3, reg_covar 1e-6) reaches the same parameters in as many
    iterations: the E and M steps are the same computation."""
    from sklearn.mixture import GaussianMixture

    x, _ = clusters(3000, 5, 4, spread=3.0)
    labels = kmeans_labels(x, 5, torch.Generator().manual_seed(0))
    start = m_step(x, torch.nn.functional.one_hot(labels, 5).double(), 1e-6)
    ours = fit_mixture(x, 5, init=start)
    theirs = GaussianMixture(
        5, covariance_type="full", max_iter=2000, tol=1e-3, reg_covar=1e-6,
        weights_init=start.weights.numpy(), means_init=start.means.numpy(),
        precisions_init=np.linalg.inv(start.covariances.numpy()),
    ).fit(x.numpy())  # fmt: skip
    assert ours.converged and theirs.converged_ and ours.iterations == theirs.n_iter_
    assert ours.lower_bound == pytest.approx(theirs.lower_bound_, abs=1e-9)
    np.testing.assert_allclose(ours.mixture.weights.numpy(), theirs.weights_, atol=1e-9)
    np.testing.assert_allclose(ours.mixture.means.numpy(), theirs.means_, atol=1e-9)
    np.testing.assert_allclose(ours.mixture.covariances.numpy(), theirs.covariances_, atol=1e-9)
    # and the density: sklearn's score is the mean log-likelihood per point
    assert ours.mixture.log_prob(x).mean().item() == pytest.approx(
        theirs.score(x.numpy()), abs=1e-9
    )


def test_em_with_its_own_start_reaches_sklearn_likelihood():
    """k-means++ and Lloyd's steps of our own, sklearn's its own: the same optimum on data with
    well separated clusters (mean log-likelihood per point within 1e-6)."""
    from sklearn.mixture import GaussianMixture

    x, _ = clusters(2000, 4, 3, spread=6.0, seed=1)
    ours = fit_mixture(x, 4, seed=0).mixture.log_prob(x).mean().item()
    theirs = GaussianMixture(4, covariance_type="full", tol=1e-3, random_state=0).fit(x.numpy())
    assert ours == pytest.approx(theirs.score(x.numpy()), abs=1e-6)


def test_em_recovers_two_separated_clusters_by_hand():
    """A hand case: 300 points at (-5, 0) and 100 at (5, 0), unit variance: weights 3/4 and 1/4,
    the two centres, identity covariances."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 2, generator=g) + torch.tensor([-5.0, 0.0]),
                   torch.randn(100, 2, generator=g) + torch.tensor([5.0, 0.0])])  # fmt: skip
    m = fit_mixture(x, 2, seed=3).mixture
    order = m.means[:, 0].argsort()
    assert m.weights[order].tolist() == pytest.approx([0.75, 0.25], abs=1e-6)
    assert m.means[order].flatten().tolist() == pytest.approx([-5, 0, 5, 0], abs=0.25)
    for c in m.covariances[order]:
        assert c.numpy() == pytest.approx(np.eye(2), abs=0.3)


def test_mixture_moments_and_draws():
    """mean = sum w_k mu_k and cov = sum w_k (S_k + mu_k mu_k^T) - mean mean^T, by hand for a
    two-component mixture in 1-D; the draws of a fitted 3-D mixture have its mean and cov."""
    hand = Mixture(torch.tensor([0.25, 0.75]), torch.tensor([[-2.0], [2.0]]),
                   torch.tensor([[[1.0]], [[4.0]]]))  # fmt: skip
    # mean -0.5 + 1.5 = 1; E[z^2] = 0.25 * (1 + 4) + 0.75 * (4 + 4) = 7.25; var = 6.25
    assert hand.mean().item() == pytest.approx(1.0)
    assert hand.covariance().item() == pytest.approx(6.25)
    x, _ = clusters(1000, 3, 3, spread=2.0, seed=2)
    mixture = fit_mixture(x, 3).mixture
    torch.manual_seed(0)
    draws = GMMSampler(mixture).latents(200_000, torch.device("cpu")).double()  # (N, 3)
    assert draws.shape == (200_000, 3)
    assert torch.allclose(draws.mean(0), mixture.mean(), atol=0.03)
    assert torch.allclose(torch.cov(draws.T), mixture.covariance(), atol=0.06)


# ---------------------------------------------------------------- two-stage VAE


def test_second_stage_loss_is_the_papers_gaussian_terms():
    """loss_terms = -log N(z | dec(u), gamma^2 I) and KL(N(mu_u, sd_u^2) || N(0, I)), summed over
    dimensions (Dai & Wipf 2019, eq. of the second stage; the authors' gen_loss2 and kl_loss2),
    checked against torch.distributions for the same draw of u."""
    torch.manual_seed(0)
    net = SecondStage(latent_dim=3, width=8, depth=2)
    with torch.no_grad():
        net.log_gamma.fill_(-0.7)
    z = torch.randn(5, 3)
    torch.manual_seed(1)
    terms = net.loss_terms(z)
    torch.manual_seed(1)
    mu, log_sd = net.encode(z)
    u = mu + torch.randn_like(mu) * log_sd.exp()
    recon = -Normal(net.decode(u), math.exp(-0.7)).log_prob(z).sum(1)
    kl = kl_divergence(Normal(mu, log_sd.exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(terms["recon"], recon, atol=1e-5)
    assert torch.allclose(terms["kl"], kl, atol=1e-5)


def test_two_stage_learns_the_latents_and_maps_them_to_a_standard_normal():
    """On latents far from N(0, I) (two clusters, one flat dimension), the second stage's loss
    falls, gamma shrinks (the paper: gamma_z -> 0 as it fits), its samples move much closer to
    the latents than N(0, I) is, and its encoder's aggregate q(u) moves toward N(0, I)."""
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 4
    side = torch.randint(2, (n,), generator=g).double() * 4 - 2
    mu = (side[:, None] + 0.3 * torch.randn(n, d, generator=g).double()).float()
    mu[:, 1] *= 0.2
    logvar = torch.full((n, d), 2 * math.log(0.05))

    def aggregate_u(net: SecondStage) -> Tensor:
        with torch.no_grad():
            m, log_sd = net.encode(smp.gaussian_draw(mu, logvar))
            return m + log_sd.exp() * torch.randn_like(m)

    torch.manual_seed(0)
    before = frechet(aggregate_u(SecondStage(d, 64, 2)), torch.randn(n, d))
    net, losses = fit_second_stage(mu, logvar, width=64, depth=2, epochs=20, lr=1e-3, seed=0)
    assert losses[-1] < losses[0] - 4  # 9.1 -> 3.5 nats here
    assert net.log_gamma.exp().item() < 0.7
    torch.manual_seed(1)
    z = smp.TwoStageSampler(net).latents(n, torch.device("cpu"))
    prior = frechet(torch.randn(n, d), mu)
    assert frechet(z, mu) < prior / 5  # 0.6 against 8.1 here
    after = frechet(aggregate_u(net), torch.randn(n, d))
    assert after < before and after < 0.1


# ---------------------------------------------------------------- save and reuse


class TinyVAE(torch.nn.Module):
    """The parts of a VAE a sampler reads: an encoder of (mu, logvar), decode_mean, prior."""

    num_classes, latent_dim = 0, 2

    def __init__(self) -> None:
        super().__init__()
        self.encoder_net = torch.nn.Linear(4, 4)

    def encoder(self, x, y=None):
        return self.encoder_net(x.flatten(1)).chunk(2, dim=1)

    def decode_mean(self, z, labels=None):
        return torch.tanh(z).view(-1, 1, 1, 2)

    @property
    def device(self):
        return torch.device("cpu")


@pytest.fixture
def vae_like(monkeypatch):
    monkeypatch.setattr(smp, "check_model", lambda model, name: None)  # TinyVAE is no VAE class
    torch.manual_seed(0)
    return TinyVAE()


def counted_batches(calls: list[int]):
    def batches():
        calls.append(1)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(200, 1, 2, 2, generator=g)
        return [(x[i : i + 50], torch.zeros(50, dtype=torch.long)) for i in range(0, 200, 50)]

    return batches


@pytest.mark.parametrize("spec", [GMM, TWO_STAGE], ids=["gmm", "two_stage"])
def test_a_fitted_sampler_is_saved_beside_the_checkpoint_and_reused(
    spec, vae_like, tmp_path, caplog
):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights v1")
    calls: list[int] = []
    cpu = torch.device("cpu")
    first = load_or_fit(vae_like, spec, ckpt, counted_batches(calls), cpu)
    path = tmp_path / "checkpoints" / f"last.sampler-{spec['name']}.safetensors"
    assert path.is_file() and calls == [1]
    assert first.record == {**spec, "file": str(path)}
    # safetensors: tensors and a JSON header, no pickle
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["genlab_sampler"])
    assert meta["settings"] == spec and len(meta["checkpoint_sha256"]) == 64
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))  # a rewrite would show as a new mtime
    stamp = path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="genlab"):
        second = load_or_fit(vae_like, spec, ckpt, counted_batches(calls), cpu)
    assert calls == [1] and path.stat().st_mtime_ns == stamp
    assert f"sampler={spec['name']}: reusing {path}" in caplog.text
    torch.manual_seed(5)
    a = first.latents(64, cpu)
    torch.manual_seed(5)
    assert torch.equal(a, second.latents(64, cpu))  # the same sampler, read back
    # a changed checkpoint, then changed settings: fitted again
    ckpt.write_bytes(b"weights v2")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genlab"):
        load_or_fit(vae_like, spec, ckpt, counted_batches(calls), cpu)
    assert calls == [1, 1] and "the checkpoint changed" in caplog.text
    assert path.stat().st_mtime_ns != stamp
    load_or_fit(vae_like, {**spec, "seed": 1}, ckpt, counted_batches(calls), cpu)
    assert len(calls) == 3


def test_a_damaged_sampler_file_is_fitted_again(vae_like, tmp_path, caplog):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"weights")
    path = tmp_path / "last.sampler-gmm.safetensors"
    path.write_bytes(b"half a file")
    calls: list[int] = []
    with caplog.at_level(logging.WARNING, logger="genlab"):
        load_or_fit(vae_like, GMM, ckpt, counted_batches(calls), torch.device("cpu"))
    assert calls == [1] and "not a readable sampler file" in caplog.text
    assert smp.read(path) is not None  # replaced by a good one


def test_the_fit_is_deterministic_given_the_seed(vae_like, tmp_path):
    cpu = torch.device("cpu")
    runs = [load_or_fit(vae_like, TWO_STAGE, None, counted_batches([]), cpu) for _ in range(2)]
    for a, b in zip(runs[0].tensors().values(), runs[1].tensors().values(), strict=True):
        assert torch.equal(a, b)
    other = load_or_fit(vae_like, {**TWO_STAGE, "seed": 3}, None, counted_batches([]), cpu)
    assert not torch.equal(other.tensors()["mu.weight"], runs[0].tensors()["mu.weight"])


def test_model_sample_decodes_the_samplers_latents(vae_like):
    """What the sample metrics and grids call (model.sample) decodes the sampler's draws."""
    sampler = load_or_fit(vae_like, GMM, None, counted_batches([]), torch.device("cpu"))
    sample_through(vae_like, sampler)
    torch.manual_seed(3)
    images = vae_like.sample(8)
    torch.manual_seed(3)
    assert torch.equal(images, vae_like.decode_mean(sampler.latents(8, torch.device("cpu"))))
    assert "sample" not in dict(vae_like.named_children())  # not in any state_dict


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"name": "nosuch"}, "sampler='nosuch': use prior, gmm or two_stage"),
        ({**GMM, "components": 0}, "sampler.components=0 must be an integer >= 1"),
        ({**GMM, "tol": "x"}, "sampler.tol=x must be a number >= 0.0"),
        ({**TWO_STAGE, "epochs": 1.5}, "sampler.epochs=1.5 must be an integer >= 1"),
    ],
)
def test_settings_are_checked_by_key(spec, named):
    with pytest.raises(GenlabError) as e:
        sampler_settings(spec)
    assert str(e.value) == named


def test_more_components_than_training_points_names_the_key(vae_like):
    with pytest.raises(GenlabError, match=r"^sampler.components=201 is more than the 200 "):
        load_or_fit(vae_like, {**GMM, "components": 201}, None, counted_batches([]),
                    torch.device("cpu"))  # fmt: skip


# ---------------------------------------------------------------- the CLI on trained models


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory) -> Path:
    """A VAE trained for 2 tiny batches on the synthetic shapes (230 training images)."""
    return train_checkpoint(
        tmp_path_factory.mktemp("vae"), "vae", "model=vae", "data=synthetic", "metrics=none"
    )


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory) -> Path:
    return train_checkpoint(
        tmp_path_factory.mktemp("gan"), "gan", "model=gan", "data=synthetic", "metrics=none"
    )


@pytest.mark.slow
def test_genlab_sample_with_a_fitted_sampler_writes_and_then_reuses_it(run_cli, vae_ckpt, tmp_path):
    args = [f"ckpt_path={vae_ckpt}", "sampler=two_stage", "sampler.width=16", "sampler.epochs=2",
            "num_samples=16", "reconstructions=false", "device=cpu"]  # fmt: skip
    first = run_cli("genlab-sample", *args, f"hydra.run.dir={tmp_path / 'a'}")
    ok(first)
    saved = vae_ckpt.with_name("vae.sampler-two_stage.safetensors")
    assert saved.is_file() and "sampler=two_stage: wrote" in first.stdout + first.stderr
    names = {p.name for p in (tmp_path / "a").glob("*.png")}
    assert {"samples.png", "interpolation_lerp.png", "interpolation_slerp.png"} <= names
    stamp = saved.stat().st_mtime_ns
    second = run_cli("genlab-sample", *args, f"hydra.run.dir={tmp_path / 'b'}")
    ok(second)
    assert f"reusing {saved}" in second.stdout + second.stderr
    assert saved.stat().st_mtime_ns == stamp
    # the same sampler and seed: the same grid
    assert (tmp_path / "a" / "samples.png").read_bytes() == (
        tmp_path / "b" / "samples.png"
    ).read_bytes()


@pytest.mark.slow
def test_genlab_eval_scores_the_samplers_samples_and_records_it(
    run_cli, vae_ckpt, weights, tmp_path
):
    """metrics.json's protocol names the sampler; the scored samples are the GMM's: the first
    saved sample is the decoder's image of the mixture's first draw under the metrics' seed."""
    from PIL import Image

    from genlab.checkpoints import load_model
    from genlab.metrics import to_uint8
    from genlab.rng import seeded

    out = tmp_path / "eval"
    proc = run_cli(
        "genlab-eval", f"ckpt_path={vae_ckpt}", "sampler=gmm", "sampler.components=4",
        f"metrics.inception_weights={weights}", f"metrics.cache_dir={tmp_path / 'cache'}",
        "metrics.num_samples=8", "metrics.num_real=8", "metrics.batch_size=8",
        "metrics.kid_subset_size=4", "metrics.is_splits=2", "metrics.inception_sha256=null",
        "metrics.metrics=[fid]", "save_samples=true", "nll_k=2", "trainer.accelerator=cpu",
        "trainer.limit_val_batches=1", f"hydra.run.dir={out}",
    )  # fmt: skip
    ok(proc)
    result = json.loads((out / "metrics.json").read_text())
    saved = vae_ckpt.with_name("vae.sampler-gmm.safetensors")
    assert result["protocol"]["sampler"] == {**GMM, "components": 4, "file": str(saved)}
    _, model = load_model(str(vae_ckpt))
    with safe_open(str(saved), framework="pt") as f:
        sampler = GMMSampler.from_tensors({k: f.get_tensor(k) for k in f.keys()}, {})  # noqa: SIM118
    with seeded(0 * 1_000_003 + 0, torch.device("cpu")), torch.no_grad():
        first = model.decode_mean(sampler.latents(8, torch.device("cpu")))
    png = np.asarray(Image.open(out / "samples" / "000000.png"))
    assert np.array_equal(png, to_uint8(first)[0].permute(1, 2, 0).numpy())  # (H, W, 3)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["sampler=gmm"], "genlab-sample: error: sampler=gmm: GAN has no aggregate posterior"),
        (["sampler=nosuch"], "genlab-sample: error: In 'sample': Could not find 'sampler/nosuch'"),
        (["sampler=gmm", "sampler.components=0"],
         "genlab-sample: error: sampler.components=0 must be an integer >= 1"),
    ],
    ids=["gan", "unknown", "zero-components"],
)  # fmt: skip
def test_genlab_sample_bad_sampler_in_one_line(run_cli, gan_ckpt, args, named):
    proc = run_cli("genlab-sample", f"ckpt_path={gan_ckpt}", "device=cpu", *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(named), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_genlab_eval_too_many_components_in_one_line(run_cli, vae_ckpt, weights):
    proc = run_cli(
        "genlab-eval", f"ckpt_path={vae_ckpt}", "sampler=gmm", "sampler.components=100000",
        f"metrics.inception_weights={weights}", "metrics.inception_sha256=null",
        "trainer.accelerator=cpu",
    )  # fmt: skip
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith("genlab-eval: error: sampler.components=100000 is more than the 230")
    assert len(line.splitlines()) == 1


def test_genlab_eval_sampler_needs_sample_metrics(run_cli, vae_ckpt):
    proc = run_cli("genlab-eval", f"ckpt_path={vae_ckpt}", "sampler=gmm", "metrics=none")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "genlab-eval: error: sampler=gmm draws the samples the metrics score, and metrics=none "
        "scores none: drop metrics=none (or sampler=)"
    )


# ---------------------------------------------------------------- learning check


def test_on_mnist_the_fitted_samplers_are_closer_to_the_aggregate_posterior(tmp_path):
    """A VAE trained one epoch on MNIST-5k: on the 500 held-out digits, the GMM's draws are far
    closer to the posterior means than N(0, I) is (measured 0.01 against 24.5, Frechet distance
    in the 16-d latent space), and the two-stage VAE's draws closer to the posterior draws
    (0.2 against 14.0). Each is compared with what it models, on images it was not fitted on."""
    from genlab.training import build
    from tests.conftest import compose_train, fit_built

    cfg = compose_train(
        ["model=vae", "data=mnist5k", "logger=csv", "callbacks=none", "metrics=none",
         "trainer.accelerator=cpu", "trainer.max_epochs=1", "data.batch_size=64",
         "trainer.limit_val_batches=0"],
        tmp_path,
    )  # fmt: skip
    objs = fit_built(build(cfg))
    model, dm = objs["model"].eval(), objs["datamodule"]
    cpu = torch.device("cpu")

    def batches(split: str):
        return dm.loader(dm.dataset(split), shuffle=False, drop_last=False)

    gmm = smp.fit(model, {**GMM, "components": 10}, batches("train"), cpu)
    two_stage = smp.fit(model, {**TWO_STAGE, "width": 128, "epochs": 5}, batches("train"), cpu)
    mu, logvar = smp.posterior_moments(model, batches("val"), cpu)  # (500, 16)
    torch.manual_seed(0)
    n = 5000
    draws = smp.gaussian_draw(mu.repeat(10, 1), logvar.repeat(10, 1))
    with torch.no_grad():
        prior = smp.PriorSampler(model).latents(n, cpu)  # the model's own: N(0, I)
        fitted = gmm.latents(n, cpu), two_stage.latents(n, cpu)
    to_means = frechet(fitted[0], mu), frechet(prior, mu)
    to_draws = frechet(fitted[1], draws), frechet(prior, draws)
    assert to_means[0] < to_means[1] / 10, to_means
    assert to_draws[0] < to_draws[1] / 10, to_draws


# ---------------------------------------------------------------- the VAE family


def built(tmp_path: Path, *overrides: str):
    """An untrained model of ``overrides`` on 96 synthetic images, and its training batches."""
    from hydra.utils import instantiate

    from tests.conftest import compose_train

    cfg = compose_train([*overrides, "data=synthetic", "data.limit=96"], tmp_path)
    dm = instantiate(cfg.data)
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="object").eval()
    return model, dm.loader(dm.dataset("train"), shuffle=False, drop_last=False)


@pytest.mark.parametrize(
    "overrides",
    [["model=vae"], ["model=hvae2"], ["model=vae", "model.posterior=iaf"], ["model=cvae"],
     ["model=wae_mmd"], ["model=beta_tcvae"]],
    ids=["vae", "hvae2", "iaf", "cvae", "wae_mmd", "beta_tcvae"],
)  # fmt: skip
def test_both_samplers_fit_and_draw_on_every_vae_with_an_encoder_posterior(overrides, tmp_path):
    """z1 is what the samplers model (a hierarchy's layers above it are not used), so every
    model.sample decodes (n, latent_dim) sampler draws to images in [-1, 1]."""
    model, batches = built(tmp_path, *overrides)
    cpu = torch.device("cpu")
    for spec in (GMM, TWO_STAGE):
        sampler = load_or_fit(model, spec, None, lambda: batches, cpu)  # noqa: B023
        assert sampler.latents(5, cpu).shape == (5, model.latent_dim)
        sample_through(model, sampler)
        with torch.no_grad():
            images = model.sample(5)
        assert images.shape[0] == 5 and -1 <= images.min() <= images.max() <= 1


def test_the_mixture_is_fitted_on_what_the_model_decodes_as_the_posterior_mean(tmp_path):
    """With an IAF posterior the mean is the flowed mu (eps = 0): decoded, it is the model's own
    reconstruction. A deterministic WAE encoder's draws are mu itself."""
    model, batches = built(tmp_path, "model=vae", "model.posterior=iaf")
    x, labels = next(iter(batches))
    with torch.no_grad():
        mu, logvar = smp.posterior_moments(model, [(x, labels)], torch.device("cpu"))
        means = smp.posterior_mean(model, mu, logvar)
        assert not torch.allclose(means, mu)  # the flow moves it
        assert torch.allclose(model.decode_mean(means), model.reconstruct(x), atol=1e-6)
    wae, _ = built(tmp_path / "wae", "model=wae_mmd")
    assert torch.equal(smp.posterior_draw(wae)(mu, logvar), mu)


def test_a_ladder_vae_is_refused_naming_the_key(tmp_path):
    model, _ = built(tmp_path, "model=ladder_vae")
    with pytest.raises(GenlabError, match=r"^sampler=gmm: the Ladder VAE's q\(z1 \| x\) is no "):
        smp.check_model(model, "gmm")
    smp.check_model(model, "prior")  # its own prior is fine
