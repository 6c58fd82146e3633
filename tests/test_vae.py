"""VAE likelihood estimates: importance-weighted NLL by hand, and its relation to the ELBO."""

import math
from functools import partial

import pytest
import torch
from torch import nn

from genlab.nets import ConvDecoder, ConvEncoder
from genlab.vae import VAE


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


def test_iw_nll_with_more_samples_is_below_the_elbo_bound():
    torch.manual_seed(1)
    enc, dec = (
        ConvEncoder(28, 1, latent_dim=4, base_channels=8),
        ConvDecoder(4, 28, 1, base_channels=8),
    )
    model = _vae(enc, dec).eval()
    x = torch.rand(8, 1, 28, 28).round() * 2 - 1  # (8, 1, 28, 28) binary
    with torch.no_grad():
        neg_elbo = torch.stack([sum(model.elbo_terms(x).values()) for _ in range(200)]).mean(
            0
        )  # (8,) -ELBO, analytic KL
        iw_1 = torch.stack([model.iw_nll(x, 1) for _ in range(200)]).mean(0)
        iw_64 = torch.stack([model.iw_nll(x, 64) for _ in range(10)]).mean(0)
    # k = 1 estimates the same bound (sampled rather than analytic KL)
    assert torch.allclose(iw_1, neg_elbo, rtol=0.02)
    # the IWAE bound is tighter: lower on every image, by more than the Monte-Carlo noise
    # (the std error of the 200-draw -ELBO means is 0.05-0.11 nats here)
    assert (iw_64 < neg_elbo).all() and (neg_elbo - iw_64).mean() > 0.2, (iw_64, neg_elbo)


def test_validation_logs_nll_in_nats_and_bits_per_dim():
    torch.manual_seed(2)
    model = _vae(ConvEncoder(28, 1, 4, base_channels=8), ConvDecoder(4, 28, 1, base_channels=8))
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        model.validation_step((x, torch.zeros(4, dtype=torch.long)), 0)
    assert logged["val/nll_bpd"] == pytest.approx(logged["val/nll"] / (784 * math.log(2)))
    assert {"val/elbo", "val/recon", "val/kl", "val/mse"} <= set(logged)
