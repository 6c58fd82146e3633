"""IAF posterior (Kingma et al. 2016): log-determinant, autoregressive structure, exact IW-NLL."""

import csv
import math
from functools import partial

import pytest
import torch

from genlab import losses
from genlab.errors import GenlabError
from genlab.models.vae import VAE
from genlab.nets import ConvDecoder, ConvEncoder
from genlab.nets.iaf import IAF, MADE
from tests.conftest import ok
from tests.test_vae import LinearGaussian, WidePosterior


def _flow(dim: int = 3, steps: int = 3, hidden: int = 12, seed: int = 0) -> IAF:
    """A flow far from the identity: weights and biases redrawn wide, in float64."""
    torch.manual_seed(seed)
    flow = IAF(dim, steps, hidden).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.3)
    return flow


def test_log_q_is_the_gaussian_minus_the_brute_force_jacobian_log_det():
    """log q(z_T) = log N(eps; mu, sigma) - log|det dz_T/dz_0| (change of variables, eq. 12)."""
    flow = _flow()
    torch.manual_seed(1)
    mu, logvar = torch.randn(4, 3).double(), torch.randn(4, 3).double() * 0.5
    eps = torch.randn(4, 3).double()
    z, log_q = flow(mu, logvar, eps)
    for b in range(4):

        def forward(e, b=b):
            return flow(mu[b : b + 1], logvar[b : b + 1], e.view(1, 3))[0].view(3)

        jac = torch.autograd.functional.jacobian(forward, eps[b])  # (3, 3): dz_T / d eps
        # d eps -> d z_0 is diag(sigma_0): its log-det is the Gaussian's sum log sigma_0
        expected = -0.5 * (eps[b] ** 2).sum() - 1.5 * math.log(2 * math.pi)
        expected = expected - torch.linalg.slogdet(jac)[1]
        assert log_q[b].item() == pytest.approx(expected.item(), rel=1e-7)
    assert not torch.allclose(z, mu + (0.5 * logvar).exp() * eps)  # the flow moved z


def test_each_step_is_autoregressive_in_its_own_order():
    """Step 0: dz'/dz lower-triangular; step 1 reads reversed z: upper in the original order."""
    flow = _flow(dim=4, steps=2)
    h = flow.context(torch.randn(1, 8).double())  # (1, hidden)
    z = torch.randn(4).double()
    for t, tri in ((0, torch.tril), (1, torch.triu)):
        jac = torch.autograd.functional.jacobian(
            lambda v, t=t: flow.step(t, v.view(1, 4), h)[0][0], z
        )
        assert torch.equal(jac, tri(jac)), (t, jac)
        assert (jac.diagonal() > 0).all() and (jac.diagonal() < 1).all()  # sigma in (0, 1)
        assert (jac - tri(jac, -1 if t == 0 else 1).T).abs().sum() > 0  # off-diagonal terms


def test_made_output_i_sees_only_earlier_inputs_and_the_context():
    torch.manual_seed(2)
    made = MADE(5, 16, 3).double()
    z, h = torch.randn(5).double(), torch.randn(1, 3).double()
    jac = torch.autograd.functional.jacobian(lambda v: torch.cat(made(v.view(1, 5), h), 1)[0], z)
    for i in range(5):  # m_i and s_i: zero on inputs i.. (0-indexed)
        assert jac[[i, 5 + i], i:].abs().max() == 0  # jac: (10, 5)
        assert i == 0 or jac[[i, 5 + i], :i].abs().sum() > 0  # and they do see earlier ones
    # the first output is a function of the context alone, and does depend on it
    jh = torch.autograd.functional.jacobian(lambda c: made(z.view(1, 5), c)[0][0, 0], h)
    assert jh.abs().sum() > 0


def test_iw_nll_with_iaf_converges_to_the_closed_form_log_likelihood():
    """The linear-Gaussian model of tests/test_vae.py: p(x) = N(b, W W^T + s^2 I) exactly."""
    torch.manual_seed(1)
    w, b, s = torch.randn(4, 2), torch.randn(4) * 0.3, 0.3
    model = VAE(
        WidePosterior(w, b, s), LinearGaussian(w, b), partial(torch.optim.Adam, lr=1e-3),
        likelihood="gaussian", gaussian_std=s, posterior="iaf", iaf_steps=2, iaf_hidden=16,
    )  # fmt: skip
    assert not model.analytic_kl  # the KL of a flowed posterior is the one-draw estimate
    with torch.no_grad():  # a flow off the identity, whose draws still cover p(z | x)
        for p in model.flow.parameters():
            p.normal_(0, 0.1)
        for step in model.flow.steps:
            step.out.bias[2:] += 3  # sigma near 0.95: q is moved and reshaped, not shrunk away
        torch.manual_seed(2)
        eps, (mu, logvar) = torch.randn(64, 2), model.encoder(torch.randn(64, 1, 2, 2))
        z, log_q = model.flow(mu, logvar, eps)
        gaussian = losses.log_normal(mu + (0.5 * logvar).exp() * eps, mu, logvar)
        assert (log_q - gaussian).abs().mean() > 0.1  # dropping the flow's log-det would show
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + s**2 * torch.eye(4))
    x = marginal.sample((16,)).view(16, 1, 2, 2)
    exact = -marginal.log_prob(x.view(16, 4))  # (16,)
    with torch.no_grad():
        runs = torch.stack([model.iw_nll(x, 1000) for _ in range(6)])  # (6, 16)
        small = torch.stack([model.iw_nll(x, 3) for _ in range(100)]).mean(0)  # (16,)
        terms = model.elbo_terms(x)
    err = runs.std(0) / math.sqrt(len(runs))
    assert ((runs.mean(0) - exact).abs() < 4 * err + 2e-3).all(), (runs.mean(0) - exact, err)
    # over the 16 images: a log q without the flow's sum log sigma would be ~0.2 nats off here
    mean_err = 4 * err.square().sum().sqrt() / len(err) + 2e-3
    assert (runs.mean(0) - exact).mean().abs() < mean_err, ((runs.mean(0) - exact).mean(), mean_err)
    # a small k is an upper bound on -log p(x) (Burda et al. 2016, theorem 1), and clearly so here
    assert ((small - exact) > 0.05).all(), small - exact
    assert torch.isfinite(terms["kl"]).all() and terms["kl"].shape == (16,)


def test_iaf_works_with_the_conv_and_the_hierarchical_encoders():
    from genlab.nets import HierarchicalDecoder, HierarchicalEncoder

    opt = partial(torch.optim.Adam, lr=1e-3)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    conv = VAE(ConvEncoder(28, 1, 4, base_channels=8), ConvDecoder(4, 28, 1, base_channels=8), opt,
               posterior="iaf")  # fmt: skip
    hier = VAE(HierarchicalEncoder(28, 1, 6, [3], [20, 10]),
               HierarchicalDecoder(28, 1, 6, [3], [20, 10]), opt, posterior="iaf")  # fmt: skip
    for model in (conv, hier):
        torch.manual_seed(0)
        terms = model.elbo_terms(x)
        torch.manual_seed(0)
        lw = model.log_weights(x, 1)[0]  # the same draw: log w = -(recon + kl)
        assert torch.allclose(lw, -(terms["recon"] + terms["kl"]), atol=1e-4)
        assert model.reconstruct(x).shape == x.shape


def test_iaf_config_errors_name_the_key():
    opt = partial(torch.optim.Adam, lr=1e-3)
    nets = ConvEncoder(28, 1, 4, base_channels=8), ConvDecoder(4, 28, 1, base_channels=8)
    for kw, key in (({"posterior": "maf"}, "model.posterior"),
                    ({"posterior": "iaf", "iaf_steps": 0}, "model.iaf_steps"),
                    ({"posterior": "iaf", "prior": "vamp"}, "model.prior=vamp")):  # fmt: skip
        with pytest.raises(GenlabError, match=key):
            VAE(*nets, opt, **kw)


def test_iaf_with_a_vq_model_is_one_line_naming_the_key(run_cli):
    """VQ models have no Gaussian posterior to flow: the key is refused where it is written."""
    proc = run_cli("genlab-train", "model=vqvae", "debug=tiny", "model.posterior=iaf")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "model.posterior" in proc.stderr


def test_iaf_vae_learns_on_mnist5k(cfg_tiny):
    from tests.test_hvae import learning_gain

    cfg = cfg_tiny("model=vae", "model.posterior=iaf", "data=mnist5k", "data.binarize=true",
                   "callbacks=none", "data.batch_size=50", "model.nll_k=4")  # fmt: skip
    start, end = learning_gain(cfg, "val/elbo")
    # nats per digit: 100 steps took it from -584 to -206 here (the Gaussian posterior: -585, -205)
    assert end - start > 200, (start, end)


def test_cli_trains_a_tiny_iaf_vae_and_logs_the_diagnostics(run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("genlab-train", "model=vae", "model.posterior=iaf", "debug=tiny",
                   "logger=csv", "metrics=none", f"hydra.run.dir={run}")  # fmt: skip
    ok(proc)
    with open(run / "csv" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert {"val/nll", "val/active_units", "val/kl_l1"} <= set(header), header
