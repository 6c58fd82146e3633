"""VAE likelihood estimates: importance-weighted NLL by hand and in closed form, bits per dim."""

import logging
import math
from functools import partial

import pytest
import torch
from torch import nn

from genlab.errors import GenlabError
from genlab.models.vae import VAE
from genlab.nets import ConvDecoder, ConvEncoder
from tests.conftest import compose_train


class FixedPosterior(nn.Module):
    """q(z | x) = N(0.5, 0.5^2) in one dimension, whatever x is."""

    latent_dim = 1

    def forward(self, x, labels=None):
        b = x.shape[0]
        return torch.full((b, 1), 0.5), torch.full((b, 1), math.log(0.25))


class LinearPixel(nn.Module):
    """One-pixel Bernoulli decoder: logit = 2 z - 1."""

    num_classes = 0

    def forward(self, z, labels=None):
        return (2 * z - 1).view(-1, 1, 1, 1)


def _vae(encoder, decoder, **kw) -> VAE:
    return VAE(encoder, decoder, partial(torch.optim.Adam, lr=1e-3), **kw)


def test_iw_nll_matches_hand_computation():
    model = _vae(FixedPosterior(), LinearPixel())
    x = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)  # pixel on, pixel off
    torch.manual_seed(0)
    got = model.iw_nll(x, k=3)
    torch.manual_seed(0)
    eps = [torch.randn(2, 1) for _ in range(3)]  # the draws log_weights makes, in order
    expected = []
    for b, target in enumerate([1.0, 0.0]):
        log_w = []
        for e in eps:
            z = 0.5 + 0.5 * e[b, 0].item()
            p = 1 / (1 + math.exp(-(2 * z - 1)))
            log_px = math.log(p) if target else math.log(1 - p)
            log_pz = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
            log_qz = -0.5 * ((z - 0.5) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
            log_w.append(log_px + log_pz - log_qz)
        m = max(log_w)
        expected.append(math.log(3) - (m + math.log(sum(math.exp(w - m) for w in log_w))))
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)


class LinearGaussian(nn.Module):
    """Decoder of x | z ~ N(W z + b, s^2 I), images (B, 1, 2, 2): p(x) = N(b, W W^T + s^2 I)."""

    num_classes = 0

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, z, labels=None):
        return (z @ self.w.T + self.b).view(-1, 1, 2, 2)


class WidePosterior(nn.Module):
    """The exact posterior's mean with a diagonal variance wider than the posterior's."""

    def __init__(self, w, b, s):
        super().__init__()
        cov = torch.linalg.inv(torch.eye(w.shape[1]) + w.T @ w / s**2)  # (Z, Z)
        self.gain, self.b = cov @ w.T / s**2, b  # posterior mean = gain (x - b)
        # a wider q keeps the importance weights bounded (finite variance)
        self.logvar = torch.log(2 * torch.linalg.eigvalsh(cov).max()).expand(w.shape[1])
        self.latent_dim = w.shape[1]

    def forward(self, x, labels=None):
        mu = (x.flatten(1) - self.b) @ self.gain.T
        return mu, self.logvar.expand_as(mu)


def test_iw_nll_converges_to_the_closed_form_log_likelihood():
    torch.manual_seed(1)
    w, b, s = torch.randn(4, 2), torch.randn(4) * 0.3, 0.3
    model = _vae(
        WidePosterior(w, b, s), LinearGaussian(w, b), likelihood="gaussian", gaussian_std=s
    )
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + s**2 * torch.eye(4))
    x = marginal.sample((16,))  # (16, 4)
    exact = -marginal.log_prob(x)  # (16,)
    with torch.no_grad():
        runs = torch.stack([model.iw_nll(x.view(16, 1, 2, 2), 2000) for _ in range(8)])  # (8, 16)
        elbo = torch.stack([model.iw_nll(x.view(16, 1, 2, 2), 1) for _ in range(2000)]).mean(0)
    err = runs.std(0) / math.sqrt(len(runs))  # Monte-Carlo std error per image
    assert ((runs.mean(0) - exact).abs() < 4 * err + 1e-3).all(), (runs.mean(0) - exact, err)
    # and the test can tell: the ELBO (k = 1) is clearly above -log p(x)
    assert ((elbo - exact) > 20 * err + 0.05).all(), elbo - exact


class PriorPosterior(nn.Module):
    """q(z | x) = p(z) = N(0, I): the importance weights are exactly p(x | z)."""

    latent_dim = 3

    def forward(self, x, labels=None):
        zeros = torch.zeros(x.shape[0], self.latent_dim)
        return zeros, zeros


class UniformLevels(nn.Module):
    """Categorical decoder that puts 1/256 on every 8-bit level of every subpixel."""

    num_classes = 0

    def forward(self, z, labels=None):
        return torch.zeros(z.shape[0], 3 * 256, 4, 4)


def _logged(model: VAE, x: torch.Tensor) -> dict[str, float]:
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    with torch.no_grad():
        model.validation_step((x, torch.zeros(len(x), dtype=torch.long)), 0)
    return logged


def test_a_uniform_decoder_scores_exactly_8_bits_per_dim():
    model = _vae(PriorPosterior(), UniformLevels(), likelihood="categorical", nll_k=16)
    x = torch.randint(0, 256, (5, 3, 4, 4)) * 2 / 255 - 1  # (5, 3, 4, 4) 8-bit images
    logged = _logged(model, x)
    assert logged["val/nll_bpd"] == pytest.approx(8.0, abs=1e-6)
    assert logged["val/nll"] == pytest.approx(48 * math.log(256), rel=1e-6)


def _conv_vae(likelihood: str, **kw) -> VAE:
    channels = 256 if likelihood == "categorical" else 1
    enc, dec = ConvEncoder(28, 1, 4, base_channels=8), ConvDecoder(4, 28, channels, base_channels=8)
    return _vae(enc, dec, likelihood=likelihood, **kw)


@pytest.mark.parametrize(
    ("likelihood", "binarized", "has_bpd"),
    [
        ("discretized_gaussian", False, True),
        ("categorical", False, True),
        ("bernoulli", True, True),
        ("bernoulli", False, False),
        ("gaussian", False, False),
    ],
)
def test_bits_per_dim_only_where_nll_is_a_probability(likelihood, binarized, has_bpd):
    torch.manual_seed(2)
    model = _conv_vae(likelihood, binarized=binarized, gaussian_std=0.05)
    x = torch.randint(0, 256, (4, 1, 28, 28)) * 2 / 255 - 1
    if binarized:
        x = x.sign()
    logged = _logged(model, x)
    assert {"val/nll", "val/elbo", "val/recon", "val/kl", "val/mse"} <= set(logged)
    assert ("val/nll_bpd" in logged) == has_bpd
    if has_bpd:  # the probability of discrete data: at most 1 per pixel
        assert 0 < logged["val/nll_bpd"] == pytest.approx(logged["val/nll"] / (784 * math.log(2)))


def test_discretized_bpd_is_the_continuous_one_plus_7_bits_for_a_wide_scale():
    """p(x) * 2/255 per pixel: the density on [-1, 1] is log2(127.5) bits per dim off."""
    torch.manual_seed(3)
    x = torch.randint(1, 255, (4, 1, 28, 28)) * 2 / 255 - 1
    nets = ConvEncoder(28, 1, 4, base_channels=8), ConvDecoder(4, 28, 1, base_channels=8)
    out = {}
    for likelihood in ("discretized_gaussian", "gaussian"):
        torch.manual_seed(4)
        model = _vae(*nets, likelihood=likelihood, gaussian_std=0.5)
        torch.manual_seed(5)
        out[likelihood] = _logged(model, x)["val/nll"] / (784 * math.log(2))
    gap = out["discretized_gaussian"] - out["gaussian"]
    assert gap == pytest.approx(math.log2(127.5), abs=1e-3), out


@pytest.mark.parametrize(
    ("likelihood", "binarized", "warned"),
    [
        ("gaussian", False, "model.likelihood=gaussian"),
        ("bernoulli", False, "data.binarize"),
        ("bernoulli", True, None),
        ("discretized_gaussian", False, None),
    ],
)
def test_one_warning_when_nll_is_a_density(likelihood, binarized, warned, caplog):
    with caplog.at_level(logging.WARNING, logger="genlab"):
        _conv_vae(likelihood, binarized=binarized)
    records = [r for r in caplog.records if "val/nll" in r.getMessage()]
    if warned is None:
        assert not records
    else:
        assert len(records) == 1 and warned in records[0].getMessage()
        assert "\n" not in records[0].getMessage()


@pytest.mark.parametrize(
    ("kw", "keys"),
    [
        ({"beta": 4.0}, ["model.beta"]),
        ({"kl_warmup_steps": 100}, ["model.kl_warmup_steps"]),
        ({"beta": 0.5, "kl_warmup_steps": 10}, ["model.beta", "model.kl_warmup_steps"]),
    ],
)
def test_iwae_rejects_beta_and_kl_warmup(kw, keys):
    with pytest.raises(GenlabError) as err:
        _conv_vae("bernoulli", iwae_k=5, **kw)
    message = str(err.value)
    assert "model.iwae_k" in message and all(k in message for k in keys), message
    assert "\n" not in message
    _conv_vae("bernoulli", beta=4.0, kl_warmup_steps=100)  # fine for the ELBO


def test_model_configs_read_binarize_from_the_data_config(tmp_path):
    cfg = compose_train(["experiment=vae_binarized_mnist"], tmp_path)
    assert cfg.model.binarized is True
    for model in ("vae", "beta_vae", "cvae", "iwae"):
        assert compose_train([f"model={model}", "data=mnist"], tmp_path).model.binarized is False


def test_categorical_names_the_decoder_channels_it_needs():
    model = _conv_vae("bernoulli")
    model.hparams.likelihood = "categorical"  # a 1-channel decoder, as model=vae builds it
    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(GenlabError, match="model.decoder.channels") as err:
        model.elbo_terms(x)
    assert "256" in str(err.value)
    with pytest.raises(GenlabError, match="model.decoder.channels"):
        model.sample(2)  # what training.py's shape check runs first


def test_discretized_gaussian_vae_trains_its_scale_and_samples_in_range():
    torch.manual_seed(6)
    model = _conv_vae("discretized_gaussian")  # gaussian_std null: one learned scale
    x = torch.randint(0, 256, (4, 1, 28, 28)) * 2 / 255 - 1
    loss = sum(model.elbo_terms(x).values()).mean()
    loss.backward()
    assert model.log_std.grad is not None and torch.isfinite(model.log_std.grad)
    with torch.no_grad():
        images = model.sample(3)
    assert images.shape == (3, 1, 28, 28) and images.abs().max() <= 1
