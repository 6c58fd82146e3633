"""VAE diagnostics: active units (Burda et al. 2016) and KL per layer and per dimension."""

import math
from functools import partial

import pytest
import torch
from torch import nn

from genlab.models.vae import VAE
from genlab.nets import HierarchicalDecoder, HierarchicalEncoder

ACTIVE = (0, 2, 5)  # the dimensions whose posterior mean depends on x


class ThreeActive(nn.Module):
    """q(z | x) over 8 dims: means vary with x in dims 0, 2, 5 only; fixed log-variances."""

    latent_dim = 8

    def forward(self, x, labels=None):
        x = x.flatten(1)  # (B, 4), uniform on [-1, 1]: variance 1/3
        mu = torch.full((len(x), 8), 0.3)
        mu[:, 0], mu[:, 2], mu[:, 5] = x[:, 0], -2 * x[:, 1], 0.5 * x[:, 2]
        mu[:, 7] = 0.3 + 0.1 * x[:, 3]  # varies, but by 0.0033 < 0.01: inactive
        logvar = torch.linspace(-2, 0.5, 8).expand(len(x), 8)
        return mu, logvar


class Flat(nn.Module):
    num_classes = 0

    def forward(self, z, labels=None):
        return z[:, :4].view(-1, 1, 2, 2)


def _validate(model: VAE, batches: list[torch.Tensor]) -> dict[str, float]:
    model.log = lambda *a, **k: None
    model.on_validation_epoch_start()
    with torch.no_grad():
        for i, x in enumerate(batches):
            model.validation_step((x, torch.zeros(len(x), dtype=torch.long)), i)
    return model.diagnostics()


def test_three_varying_means_of_eight_are_three_active_units_and_kl_per_dim_is_closed_form():
    torch.manual_seed(0)
    model = VAE(ThreeActive(), Flat(), partial(torch.optim.Adam), likelihood="gaussian",
                gaussian_std=1.0, nll_k=0)  # fmt: skip
    x = torch.rand(300, 1, 2, 2) * 2 - 1
    got = _validate(model, list(x.split(64)))  # 5 batches, the last one short
    assert got["val/active_units"] == 3
    # by hand: Cov_x of each mean, and 0.5 (mu^2 + sigma^2 - 1 - log sigma^2) per dim
    mu, logvar = ThreeActive()(x)
    assert [i for i in range(8) if mu[:, i].var(unbiased=False) > 0.01] == list(ACTIVE)
    per_dim = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(0)  # (8,)
    for i in range(8):
        assert got[f"val/kl_dim{i}"] == pytest.approx(per_dim[i].item(), rel=1e-5)
    assert got["val/kl_dim_max"] == pytest.approx(per_dim.max().item(), rel=1e-5)
    assert got["val/kl_l1"] == pytest.approx(per_dim.sum().item(), rel=1e-5)
    # one dim's hand value: dim 1 has mean 0.3 and log-variance -2 + 2.5 / 7
    lv = -2 + 2.5 / 7
    assert got["val/kl_dim1"] == pytest.approx(0.5 * (0.09 + math.exp(lv) - 1 - lv), rel=1e-5)
    # a new epoch starts from nothing: the same data give the same numbers
    assert _validate(model, [x]) == pytest.approx(got)


@pytest.mark.parametrize("posterior", ["gaussian", "iaf"])
def test_a_hierarchy_reports_each_layer(posterior):
    torch.manual_seed(1)
    nets = (
        HierarchicalEncoder(28, 1, 6, [3], [20, 10]),
        HierarchicalDecoder(28, 1, 6, [3], [20, 10]),
    )
    model = VAE(*nets, partial(torch.optim.Adam), nll_k=0, posterior=posterior)
    x = torch.rand(40, 1, 28, 28).round() * 2 - 1
    got = _validate(model, [x[:20], x[20:]])
    assert {"val/active_units_l1", "val/active_units_l2", "val/kl_l1", "val/kl_l2"} <= set(got)
    assert "val/kl_dim_max" not in got  # no closed form per dim under p(z1 | z2)
    assert got["val/active_units"] == got["val/active_units_l1"] + got["val/active_units_l2"]
    assert 0 <= got["val/active_units_l2"] <= 3


def test_compare_shows_active_units_beside_the_monitored_metric(tmp_path):
    from genlab.comparison import runs as R
    from genlab.comparison import tables as T
    from tests.test_compare import write_run

    ladder = {"model": {"_target_": "genlab.models.ladder.LadderVAE"}}
    write_run(tmp_path / "a", ["seed=1"], {"val/elbo": [-90.0], "val/active_units": [12.0]})
    write_run(tmp_path / "b", ["seed=2"], {"val/elbo": [-88.0], "val/active_units": [30.0]}, ladder)
    assert T.default_metrics(R.load_runs(tmp_path)) == ["val/elbo", "val/active_units"]
    write_run(tmp_path / "c", [], {"val/elbo": [-1.0]})  # a run from before the diagnostics
    assert T.default_metrics(R.load_runs(tmp_path / "c")) == ["val/elbo"]
