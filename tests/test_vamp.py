"""model.prior=vamp: the VampPrior (Tomczak & Welling 2018) for model=vae and model=iwae.

Reference: jmtomczak/vae_vampprior, models/Model.py add_pseudoinputs (bias-free linear map of
the one-hot "idle input", hardtanh(0, 1), N(mean, std) init) and models/VAE.py log_p_z
(logsumexp over the K components of log q(z | u_k), minus log K).
"""

import math
from functools import partial

import pytest
import torch
from torch import nn

from genlab.errors import GenlabError
from genlab.models.vae import VAE
from genlab.nets.priors import VampPrior, log_normal_mixture
from genlab.training import build
from tests.conftest import fit_built
from tests.test_hvae import learning_gain


def mixture_by_hand(
    z: list[float], means: list[list[float]], variances: list[list[float]]
) -> float:
    """log of (1/K) sum_k prod_d N(z_d; mean_kd, var_kd), in plain floats."""
    total = 0.0
    for mean, var in zip(means, variances, strict=True):
        total += math.prod(
            math.exp(-((zd - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v)
            for zd, m, v in zip(z, mean, var, strict=True)
        )
    return math.log(total / len(means))


def test_mixture_log_density_by_hand():
    z = torch.tensor([[0.3, -1.0], [2.0, 0.5]])  # (B=2, Z=2)
    mu = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 1.0]])  # (K=3, Z)
    logvar = torch.tensor([[0.0, 0.0], [math.log(0.25), 0.0], [math.log(4.0), math.log(0.5)]])
    got = log_normal_mixture(z, mu, logvar)
    for b in range(2):
        expected = mixture_by_hand(z[b].tolist(), mu.tolist(), logvar.exp().tolist())
        assert got[b].item() == pytest.approx(expected, rel=1e-6)
    # one component is the plain Gaussian
    one = log_normal_mixture(z, mu[:1], logvar[:1])
    assert torch.allclose(one, torch.distributions.Normal(0, 1).log_prob(z).sum(1))


class LinearPosterior(nn.Module):
    """q(z | x) = N(W x, diag(exp(c))) on flattened 2x2 images, Z = 2."""

    latent_dim, num_classes = 2, 0

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -0.5, 0.2, 0.0], [0.3, 0.3, -1.0, 0.5]]))
        self.c = nn.Parameter(torch.tensor([-0.5, 0.4]))

    def forward(self, x, labels=None):
        mu = x.flatten(1) @ self.w.T
        return mu, self.c.expand_as(mu)


class PixelDecoder(nn.Module):
    num_classes = 0

    def forward(self, z, labels=None):
        return z.repeat(1, 2).view(-1, 1, 2, 2)


def vamp_vae(**kw) -> VAE:
    return VAE(LinearPosterior(), PixelDecoder(), partial(torch.optim.Adam), prior="vamp",
               prior_components=3, image_shape=(1, 2, 2), **kw)  # fmt: skip


def test_vamp_log_prior_is_the_mixture_of_posteriors_at_the_pseudo_inputs():
    model = vamp_vae()
    with torch.no_grad():
        weight = torch.tensor([[0.2, 1.5, -0.3]] * 4) + torch.arange(4)[:, None] * 0.1  # (D, K)
        model.vamp.means.weight.copy_(weight)
        z = torch.tensor([[0.5, -0.2], [-1.0, 1.0]])
        got = model.log_prior([z], model.vamp_components())
    u = model.vamp.means.weight.detach().t().clamp(0, 1) * 2 - 1  # (K, 4) pixels in [-1, 1]
    assert u[1].eq(1).all() and u[2].eq(-1).all()  # hardtanh(0, 1) clips, then [0, 1] -> [-1, 1]
    means = (u @ model.encoder.w.detach().T).tolist()  # q(z | u_k)'s means, by hand: (K, Z)
    variances = [model.encoder.c.detach().exp().tolist()] * 3
    for b in range(2):
        assert got[b].item() == pytest.approx(
            mixture_by_hand(z[b].tolist(), means, variances), rel=1e-5
        )


def test_pseudo_inputs_learn_from_their_init():
    torch.manual_seed(0)
    prior = VampPrior(5, (1, 2, 2), init_mean=0.05, init_std=0.01)
    u = prior.pseudo_inputs()
    assert u.shape == (5, 1, 2, 2) and ((u + 0.9).abs() < 0.08).all()  # hardtanh(0.05) * 2 - 1
    u.sum().backward()
    assert prior.means.weight.grad.abs().min() > 0
    # the authors' repo default mean -0.05 puts every pseudo-input below hardtanh's range: no grad
    stuck = VampPrior(5, (1, 2, 2), init_mean=-0.05, init_std=0.01)
    stuck.pseudo_inputs().sum().backward()
    assert not stuck.means.weight.grad.any()


def test_the_one_sample_bound_is_the_elbo_and_samples_come_from_the_mixture():
    model = vamp_vae()
    x = torch.rand(6, 1, 2, 2) * 2 - 1
    with torch.no_grad():
        torch.manual_seed(1)
        terms = model.elbo_terms(x)
        torch.manual_seed(1)
        bound = model.log_weights(x, 1)[0]
        assert torch.allclose(bound, -(terms["recon"] + terms["kl"]), atol=1e-5)
        torch.manual_seed(2)
        z = model.prior_draw(4000)
        mu, logvar = model.vamp_components()
    # the draws' mean and variance are the mixture's
    mean = mu.mean(0)
    var = (logvar.exp() + mu**2).mean(0) - mean**2
    assert torch.allclose(z.mean(0), mean, atol=0.06) and torch.allclose(z.var(0), var, rtol=0.08)


@pytest.mark.parametrize("model", ["vae", "iwae"])
def test_vamp_option_trains_with_vae_and_iwae(model, cfg_tiny):
    cfg = cfg_tiny(f"model={model}", "model.prior=vamp", "model.prior_components=7",
                   "data=mnist5k", "callbacks=none")  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches = 1, 2, 1
    objs = build(cfg)
    module = objs["model"]
    assert module.vamp.pseudo_inputs().shape == (7, 1, 28, 28)
    before = module.vamp.means.weight.detach().clone()
    fit_built(objs)
    assert not torch.equal(before, module.vamp.means.weight)  # the pseudo-inputs learn
    assert torch.isfinite(objs["trainer"].callback_metrics["val/nll"])


def test_vamp_config_errors_name_the_key(cfg_tiny):
    with pytest.raises(GenlabError, match="model.prior='mog': use standard or vamp"):
        VAE(LinearPosterior(), PixelDecoder(), partial(torch.optim.Adam), prior="mog")
    with pytest.raises(GenlabError, match="model.prior_components=0"):
        VAE(LinearPosterior(), PixelDecoder(), partial(torch.optim.Adam), prior="vamp",
            prior_components=0, image_shape=(1, 2, 2))  # fmt: skip
    with pytest.raises(GenlabError, match="model.image_shape"):
        VAE(LinearPosterior(), PixelDecoder(), partial(torch.optim.Adam), prior="vamp")
    with pytest.raises(GenlabError, match="model.prior=vamp needs an unconditional model"):
        build(cfg_tiny("model=cvae", "model.prior=vamp", "data=synthetic"))


@pytest.mark.slow
def test_short_run_on_binarised_mnist5k_improves(cfg_tiny):
    cfg = cfg_tiny("model=vae", "model.prior=vamp", "model.prior_components=50", "data=mnist5k",
                   "data.binarize=true", "callbacks=none", "data.batch_size=50")  # fmt: skip
    start, end = learning_gain(cfg, "val/elbo")
    assert end > start + 200, (start, end)  # nats per digit; -585 to -200 here
