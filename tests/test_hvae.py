"""Two stochastic layers (model=hvae2): the IWAE paper's architecture, bounds and NLL.

Reference: Burda, Grosse & Salakhutdinov 2016 (IWAE), the authors' code yburda/iwae,
experiments.py with --layers 2: latent_units [100, 50], hidden_units_q [[200, 200], [100, 100]],
hidden_units_p [[100, 100], [200, 200]], tanh, sigma = exp(linear), Glorot-uniform init, the
Bernoulli decoder's output bias at the training data's log-odds (datasets.py, get_train_bias_np).
Table 1, MNIST, two stochastic layers: VAE (k=1) 85.33 nats, IWAE (k=50) 82.90 nats.
"""

import math
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

from genlab.errors import GenlabError
from genlab.models.vae import VAE, pixel_mean
from genlab.nets import HierarchicalDecoder, HierarchicalEncoder
from genlab.nets.hvae import data_logodds
from genlab.training import build
from tests.conftest import fit_built


def hvae2(**kw) -> VAE:
    encoder = HierarchicalEncoder(28, 1)
    decoder = HierarchicalDecoder(28, 1, latent_dim=100, upper_dims=[50])
    return VAE(encoder, decoder, partial(torch.optim.Adam, lr=1e-3), binarized=True, **kw)


def binary_digits(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` MNIST-5k digits binarised once with a seed: (n, 1, 28, 28) in {-1, 1}."""
    from genlab.data.sources import mnist5k_raw

    g = torch.Generator().manual_seed(seed)
    pixels = mnist5k_raw()[0][:n].float() / 255
    return (torch.rand(pixels.shape, generator=g) < pixels).float() * 2 - 1


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_layers_match_the_authors_code():
    model = hvae2()
    enc, dec = model.encoder, model.decoder
    # q(z1 | x): 784 -> 200 -> 200 -> (mean, sigma) of 100; q(z2 | z1): 100 -> 100 -> 100 -> 50
    assert linear_shapes(enc.first) == [(784, 200), (200, 200), (200, 100), (200, 100)]
    assert linear_shapes(enc.upper) == [(100, 100), (100, 100), (100, 50), (100, 50)]
    # p(z1 | z2): 50 -> 100 -> 100 -> 100; p(x | z1): 100 -> 200 -> 200 -> 784 logits
    assert linear_shapes(dec.priors) == [(50, 100), (100, 100), (100, 100), (100, 100)]
    assert linear_shapes(dec.net) == [(100, 200), (200, 200), (200, 784)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 8
    # q: 237,400 + 30,300; p(z1 | z2): 35,400; p(x | z1): 217,984 (weights and biases, by hand)
    assert sum(p.numel() for p in model.parameters()) == 521_084
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):  # Glorot uniform
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert not layer.bias.any()  # the output bias too, until fit start sets it from the data
    x = binary_digits(4)
    assert model.sample(3).shape == (3, 1, 28, 28) and model.reconstruct(x).shape == x.shape
    assert model.prior_draw(3).shape == (3, 100)


def test_log_weights_equal_a_hand_computation_over_both_layers():
    model = hvae2()
    enc, dec = model.encoder, model.decoder
    x = binary_digits(5)
    with torch.no_grad():
        torch.manual_seed(0)
        got = model.log_weights(x, k=2)  # (2, 5)
        torch.manual_seed(0)
        expected = []
        mu1, logvar1 = enc.first(x.flatten(1))
        for _ in range(2):  # the draws posterior_draw makes, in order: z1 then z2
            q1 = Normal(mu1, (0.5 * logvar1).exp())
            z1 = mu1 + torch.randn_like(mu1) * q1.scale
            mu2, logvar2 = enc.upper[0](z1)
            q2 = Normal(mu2, (0.5 * logvar2).exp())
            z2 = mu2 + torch.randn_like(mu2) * q2.scale
            p_mu, p_logvar = dec.priors[0](z2)
            log_p = Normal(0, 1).log_prob(z2).sum(1)
            log_p = log_p + Normal(p_mu, (0.5 * p_logvar).exp()).log_prob(z1).sum(1)
            log_px = Bernoulli(logits=dec(z1)).log_prob((x + 1) / 2).flatten(1).sum(1)
            expected.append(log_px + log_p - q1.log_prob(z1).sum(1) - q2.log_prob(z2).sum(1))
    assert torch.allclose(got, torch.stack(expected), rtol=1e-5, atol=1e-3)


def test_the_one_sample_bound_is_the_elbo():
    model = hvae2()
    x = binary_digits(8)
    with torch.no_grad():
        torch.manual_seed(1)
        terms = model.elbo_terms(x)
        torch.manual_seed(1)
        bound = -model.iw_nll(x, k=1)
    assert torch.allclose(bound, -(terms["recon"] + terms["kl"]), atol=1e-3)
    assert (terms["kl"] != 0).all()  # the KL of both layers, estimated from the same draw


def test_the_k_sample_bound_increases_with_k_on_average():
    model = hvae2()
    x = binary_digits(64)
    torch.manual_seed(2)
    with torch.no_grad():
        bounds = {k: -model.iw_nll(x, k).mean().item() for k in (1, 5, 50)}
    # untrained, the posterior is poor: the gaps are several nats, far above Monte-Carlo noise
    assert bounds[1] + 2 < bounds[5] < bounds[50] - 1, bounds


class LinearGaussianLayer(nn.Module):
    """N(W h + b, s^2 I): a Gaussian layer whose marginals have a closed form."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, log_s: float) -> None:
        super().__init__()
        self.w, self.b, self.log_s = w, b, log_s

    def forward(self, h):
        mu = h @ self.w.T + self.b
        return mu, torch.full_like(mu, 2 * self.log_s)


class TwoLayerLinear(nn.Module):
    """Encoder (q(z1 | x) then ``upper``) or decoder (means of x, then ``priors``)."""

    num_classes = 0

    def __init__(self, first, rest, key: str, dims: list[int]) -> None:
        super().__init__()
        self.first, self.latent_dims, self.latent_dim = first, dims, dims[0]
        setattr(self, key, nn.ModuleList([rest]))

    def forward(self, h, labels=None):
        out = self.first(h.flatten(1))
        return out if isinstance(out, tuple) else out.view(-1, 1, 2, 2)


def test_iw_nll_over_both_layers_converges_to_the_closed_form_likelihood():
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, s1^2), x | z1 ~ N(B z1 + b, s^2): x is Gaussian."""
    torch.manual_seed(3)
    a_w, a_b, s1 = torch.randn(2, 1), torch.randn(2) * 0.3, 0.5
    b_w, b_b, s = torch.randn(4, 2), torch.randn(4) * 0.3, 0.4
    p_z1 = LinearGaussianLayer(a_w, a_b, math.log(s1))
    decoder = TwoLayerLinear(lambda z1: z1 @ b_w.T + b_b, p_z1, "priors", [2, 1])
    # proposals: the exact conditionals' means, with a common std 1.3 x their largest
    # (diagonal and broader, so the ELBO stays clearly below log p(x))
    cov_z1 = a_w @ a_w.T + s1**2 * torch.eye(2)
    gain1 = cov_z1 @ b_w.T @ torch.linalg.inv(b_w @ cov_z1 @ b_w.T + s**2 * torch.eye(4))
    std1 = (cov_z1 - gain1 @ b_w @ cov_z1).diagonal().sqrt().max() * 1.3
    q_z1 = LinearGaussianLayer(gain1, a_b - gain1 @ (b_w @ a_b + b_b), math.log(std1))
    gain2 = a_w.T @ torch.linalg.inv(cov_z1)
    std2 = (1 - gain2 @ a_w).sqrt().item() * 1.3
    q_z2 = LinearGaussianLayer(gain2, -gain2 @ a_b, math.log(std2))
    encoder = TwoLayerLinear(q_z1, q_z2, "upper", [2, 1])
    model = VAE(encoder, decoder, partial(torch.optim.Adam), likelihood="gaussian", gaussian_std=s)
    marginal = torch.distributions.MultivariateNormal(
        b_w @ a_b + b_b, b_w @ cov_z1 @ b_w.T + s**2 * torch.eye(4)
    )
    x = marginal.sample((12,))  # (12, 4)
    exact = -marginal.log_prob(x)
    with torch.no_grad():
        runs = torch.stack([model.iw_nll(x.view(12, 1, 2, 2), 500) for _ in range(6)])  # (6, 12)
        elbo = -model.log_weights(x.view(12, 1, 2, 2), 1000).mean(0)  # the mean k = 1 bound
    err = runs.std(0) / math.sqrt(len(runs))
    assert ((runs.mean(0) - exact).abs() < 4 * err + 2e-3).all(), (runs.mean(0) - exact, err)
    assert ((elbo - exact) > 20 * err + 0.05).all(), elbo - exact  # and the test can tell


def test_config_errors_name_the_key():
    with pytest.raises(GenlabError, match=r"model.encoder.hidden=\[200\] needs one width"):
        HierarchicalEncoder(28, 1, hidden=[200])
    with pytest.raises(GenlabError, match="model.decoder.num_classes=10"):
        HierarchicalDecoder(28, 1, num_classes=10)
    encoder = HierarchicalEncoder(28, 1, upper_dims=[40])
    with pytest.raises(GenlabError, match="stochastic layers"):
        VAE(encoder, HierarchicalDecoder(28, 1), partial(torch.optim.Adam))
    with pytest.raises(GenlabError, match="model.prior=vamp needs one stochastic layer"):
        hvae2(prior="vamp", image_shape=(1, 28, 28))


def test_grid_samples_are_the_same_draw_every_time():
    model = hvae2()
    with torch.no_grad():
        first, again = model.grid_images()["samples"], model.grid_images()["samples"]
        other = model.sample(len(first))
    assert torch.equal(first, again) and not torch.equal(first, other)


def learning_gain(cfg, key: str) -> tuple[float, float]:
    """``key`` on the val split before and after 2 epochs of 50 batches of full MNIST-5k."""
    cfg.data.limit = None
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 2, 50
    cfg.trainer.limit_val_batches = 4
    objs = build(cfg)
    trainer, module, data = objs["trainer"], objs["model"], objs["datamodule"]
    start = trainer.validate(module, datamodule=data, verbose=False)[0][key]
    fit_built(objs)
    return start, trainer.validate(module, datamodule=data, verbose=False)[0][key]


@pytest.mark.slow
@pytest.mark.parametrize(("k", "key"), [(1, "val/elbo"), (5, "val/nll")])
def test_short_run_on_binarised_mnist5k_improves(k, key, cfg_tiny):
    cfg = cfg_tiny("model=hvae2", "data=mnist5k", "data.binarize=true", "callbacks=none",
                   f"model.iwae_k={k}", "data.batch_size=50", "model.nll_k=8")  # fmt: skip
    start, end = learning_gain(cfg, key)
    sign = 1 if key == "val/elbo" else -1  # the ELBO rises, the NLL falls
    # nats per digit: 100 steps took hvae2 from -804 to -197 (ELBO), 688 to 181 (NLL) here;
    # -217 and 211 with model.decoder.output_bias=zero (start: before fit sets the bias)
    assert sign * (end - start) > 200, (start, end)


def authors_train_bias(train_grey: np.ndarray) -> np.ndarray:
    """The IWAE authors' ``get_train_bias_np``, written as theirs, on (N, D) pixels in [0, 1].

    yburda/iwae at 78a6075484bd7dd6f47a4bb9880d2295bc7a5220, datasets.py, DatasetTheano and
    BinarizedDatasetTheano: the mean of the training split's grey levels (binarised data are
    binarised per minibatch, after this), clipped to [0.001, 0.999], as log-odds; iwae.py,
    ``random_iwae``, puts it in the bias of the Bernoulli decoder's last linear layer only.
    """
    mean = np.mean(train_grey, axis=0)[None, :].astype(np.float32)
    return -np.log(1.0 / np.clip(mean, 0.001, 0.999) - 1.0).astype(np.float32)


class BiasAtTrainStart(pl.Callback):
    """The decoder's output bias after fit start, before the first step (and any restore)."""

    def on_train_start(self, trainer, module):
        self.bias = module.decoder.net[-1].bias.detach().clone()


def test_data_logodds_is_the_authors_formula_and_clips():
    mean = torch.tensor([0.0, 0.0004, 0.001, 0.2, 0.5, 0.93, 0.9995, 1.0])
    got = data_logodds(mean).numpy()
    assert np.allclose(got, authors_train_bias(mean.numpy()[None])[0], atol=1e-5)
    assert got[0] == got[1] == got[2] and got[-1] == got[-2] == pytest.approx(
        math.log(999), abs=1e-4
    )


def test_output_bias_starts_at_the_training_split_log_odds(cfg_tiny):
    """Through fit: the training split's grey levels, not the val split's nor the binary draws."""
    cfg = cfg_tiny("model=hvae2", "data=synthetic", "data.binarize=true", "callbacks=none",
                   "data.val_fraction=0.25", "model.nll_k=0")  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches = 1, 1, 0
    objs = build(cfg)
    seen = BiasAtTrainStart()
    objs["trainer"].callbacks.append(seen)
    assert not objs["model"].decoder.net[-1].bias.any()  # built before the data are known
    fit_built(objs)
    train = objs["datamodule"].dataset("train").base  # Subset of the uint8 TensorImages
    grey = train.dataset.images[train.indices].flatten(1).numpy() / 255  # (N, D)
    expected = torch.from_numpy(authors_train_bias(grey)[0])
    assert seen.bias.min() == pytest.approx(math.log(0.001 / 0.999))  # the blobs' dark corners
    assert torch.allclose(seen.bias, expected, atol=1e-5)
    val = objs["datamodule"].dataset("val").base
    other = authors_train_bias(val.dataset.images[val.indices].flatten(1).numpy() / 255)[0]
    assert not torch.allclose(seen.bias, torch.from_numpy(other), atol=1e-2)  # it can tell


def test_a_resumed_run_keeps_its_trained_output_bias(tmp_path):
    from genlab.checkpoints import load_model
    from tests.conftest import compose_train, train_checkpoint

    common = ["model=hvae2", "data=synthetic", "data.binarize=true", "model.nll_k=0"]
    path = train_checkpoint(tmp_path, "first", *common)
    saved = torch.load(path, weights_only=True)["state_dict"]["decoder.net.1.bias"]
    cfg = compose_train(["debug=tiny", "logger=csv", "callbacks=none", *common], tmp_path / "go")
    cfg.ckpt_path = str(path)
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches = 2, 2, 0
    objs = build(cfg)
    seen = BiasAtTrainStart()
    objs["trainer"].callbacks.append(seen)
    objs["trainer"].fit(objs["model"], datamodule=objs["datamodule"], ckpt_path=cfg.ckpt_path)
    # what a recomputation would give
    objs["model"].decoder.init_output_bias(pixel_mean(objs["datamodule"].dataset("train")))
    fresh = objs["model"].decoder.net[-1].bias.detach().clone()
    assert torch.equal(seen.bias, saved) and not torch.allclose(saved, fresh, atol=1e-4)
    assert torch.equal(load_model(str(path))[1].decoder.net[-1].bias, saved)  # genlab-eval's


def test_output_bias_zero_and_config_errors(cfg_tiny, tmp_path):
    assert HierarchicalDecoder(28, 1).output_bias == "data_logodds"  # the authors' default
    with pytest.raises(GenlabError, match="model.decoder.output_bias='mean': use data_logodds"):
        HierarchicalDecoder(28, 1, output_bias="mean")
    cfg = cfg_tiny("model=hvae2", "data=synthetic", "callbacks=none", "model.nll_k=0",
                   "model.decoder.output_bias=zero")  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches = 1, 1, 0
    objs = build(cfg)
    seen = BiasAtTrainStart()
    objs["trainer"].callbacks.append(seen)
    fit_built(objs)
    assert not seen.bias.any()
    model = hvae2(likelihood="gaussian", gaussian_std=0.1)  # builds: a saved config loads
    trainer = pl.Trainer(max_steps=1, logger=False, default_root_dir=tmp_path)
    with pytest.raises(GenlabError, match="model.likelihood=gaussian: set it to zero"):
        trainer.fit(model, datamodule=objs["datamodule"])
