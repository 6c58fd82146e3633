"""beta-TCVAE, FactorVAE, InfoVAE and WAE-MMD: their estimators by hand, their training by CLI."""

import csv
import math
from functools import partial

import pytest
import torch
from torch import nn

from genlab import losses
from genlab.errors import GenlabError
from genlab.models.vae_objectives import TCVAE, WAE, FactorVAE, InfoVAE
from genlab.nets import ConvDecoder, ConvEncoder
from genlab.nets.latent import LatentDiscriminator
from genlab.training import build
from tests.conftest import fit_built, ok

ADAM = partial(torch.optim.Adam, lr=1e-3)


# --- MMD ----------------------------------------------------------------------------------------


def test_unbiased_mmd_by_hand_imq_and_rbf():
    x = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([[1.0], [2.0], [4.0]])
    # IMQ, C = 1: k = 1 / (1 + d^2). Squared distances:
    #   within x (i != j, each pair twice): 1, 4, 1 -> k = 1/2, 1/5, 1/2; 2 * 1.2 / 6 = 2/5
    #   within y: 1, 9, 4 -> 1/2, 1/10, 1/5; 2 * 0.8 / 6 = 4/15
    #   cross (all 9): x=0: 1, 4, 16; x=1: 0, 1, 9; x=2: 1, 0, 4
    #     -> 1/2 + 1/5 + 1/17 + 1 + 1/2 + 1/10 + 1/2 + 1 + 1/5 = 69/17; mean 69/153
    # MMD_u^2 = 2/5 + 4/15 - 2 * 69/153 = 2/3 - 46/51 = -4/17 (a U-statistic can go below 0)
    imq = partial(losses.imq_kernel, c=1.0)
    assert losses.mmd_unbiased(x, y, imq).item() == pytest.approx(-4 / 17, rel=1e-6)
    # RBF, C = 2: k = exp(-d^2 / 2), the same distances
    e = lambda d2: math.exp(-d2 / 2)  # noqa: E731
    within = (2 * (e(1) + e(4) + e(1))) / 6 + (2 * (e(1) + e(9) + e(4))) / 6
    cross = (e(1) + e(4) + e(16) + e(0) + e(1) + e(9) + e(1) + e(0) + e(4)) / 9
    rbf = partial(losses.rbf_kernel, c=2.0)
    assert losses.mmd_unbiased(x, y, rbf).item() == pytest.approx(within - 2 * cross, rel=1e-6)
    # IMQ over scales sums C_s / (C_s + d^2), C_s = s c (WAE's code): d^2 = 1, c = 1, s = 1, 2
    k = losses.imq_kernel(x[:1], x[1:2], c=1.0, scales=(1.0, 2.0))
    assert k.item() == pytest.approx(1 / 2 + 2 / 3)


def test_unbiased_mmd_averages_to_zero_where_the_biased_one_does_not():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1500, 6, 2, generator=g), torch.randn(1500, 6, 2, generator=g)
    kernel = partial(losses.imq_kernel, c=2 * 2.0, scales=losses.IMQ_SCALES)
    u = torch.stack([losses.mmd_unbiased(a, b, kernel) for a, b in zip(x, y, strict=True)])
    # the V-statistic keeps the diagonal k(x_i, x_i): an upward bias of order 1/n
    v = torch.stack(
        [
            kernel(a, a).mean() + kernel(b, b).mean() - 2 * kernel(a, b).mean()
            for a, b in zip(x, y, strict=True)
        ]
    )
    se = u.std() / math.sqrt(len(u))
    assert abs(u.mean()) < 3 * se, (u.mean(), se)
    assert v.mean() > 20 * se and (v > 0).all()


# --- beta-TCVAE's minibatch-weighted sampling --------------------------------------------------


def normal_pdf(z: float, mu: float, var: float) -> float:
    return math.exp(-((z - mu) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def test_mws_log_densities_by_brute_force():
    torch.manual_seed(0)
    z, mu = torch.randn(3, 2).double(), torch.randn(3, 2).double()
    logvar = torch.randn(3, 2).double() * 0.3
    n = 10
    t = losses.tc_vae_terms(z, mu, logvar, dataset_size=n)
    var = logvar.exp()
    for i in range(3):
        # Chen et al. 2018 eq. for MWS: log q(z_i) ~ log sum_j q(z_i | x_j) - log(N M)
        joint = sum(
            math.prod(normal_pdf(z[i, d], mu[j, d], var[j, d]) for d in range(2)) for j in range(3)
        )
        assert t["log_qz"][i].item() == pytest.approx(math.log(joint / (n * 3)), rel=1e-9)
        marginals = [
            sum(normal_pdf(z[i, d], mu[j, d], var[j, d]) for j in range(3)) / (n * 3)
            for d in range(2)
        ]
        assert t["log_prod_qz"][i].item() == pytest.approx(sum(map(math.log, marginals)))
        own = math.prod(normal_pdf(z[i, d], mu[i, d], var[i, d]) for d in range(2))
        assert t["log_qz_x"][i].item() == pytest.approx(math.log(own))
    # the three terms add up to the one-draw KL estimate log q(z | x) - log p(z)
    kl = t["log_qz_x"] - t["log_pz"]
    assert torch.allclose(t["mi"] + t["tc"] + t["dim_kl"], kl)


def authors_mss_matrix(batch_size: int, dataset_size: int) -> torch.Tensor:
    """rtqichen/beta-tcvae vae_quant.py ``_log_importance_weight_matrix``, as theirs (unlogged)."""
    n, m = dataset_size, batch_size - 1
    strat_weight = (n - m) / (n * m)
    w = torch.full((batch_size, batch_size), 1 / m, dtype=torch.float64)
    w.view(-1)[:: m + 1] = 1 / n
    w.view(-1)[1 :: m + 1] = strat_weight
    w[m - 1, 0] = strat_weight
    return w


def test_mss_weights_sum_to_one_and_are_the_authors_row_0_for_every_example():
    b, n = 5, 100
    w = losses.mss_log_weights(b, n).exp()
    assert torch.allclose(w.sum(1), torch.ones(b, dtype=torch.float64))
    theirs = authors_mss_matrix(b, n)
    # their row 0 is the estimator of the paper's Appendix C.2 for z_0; each z_i gets it with
    # its own example first (1/N) and the next one stratified: the row rolled by i
    for i in range(b):
        assert torch.allclose(w[i], theirs[0].roll(i)), i
    # theirs: the stride of B walks down column 0 (rtqichen/beta-tcvae pull request 1)
    assert torch.allclose(theirs[1:, 0][[0, 1, 3]], torch.full((3,), 1 / n, dtype=torch.float64))


def test_mss_log_densities_by_brute_force():
    torch.manual_seed(1)
    z, mu = torch.randn(3, 2).double(), torch.randn(3, 2).double()
    logvar = torch.randn(3, 2).double() * 0.3
    n, m = 10, 2
    t = losses.tc_vae_terms(z, mu, logvar, dataset_size=n, mss=True)
    var = logvar.exp()
    for i in range(3):
        # own posterior 1/N, the next one (i + 1 mod 3) (N - M) / (N M), the last 1/M
        w = {i: 1 / n, (i + 1) % 3: (n - m) / (n * m), (i + 2) % 3: 1 / m}
        joint = sum(
            w[j] * math.prod(normal_pdf(z[i, d], mu[j, d], var[j, d]) for d in range(2))
            for j in range(3)
        )
        assert t["log_qz"][i].item() == pytest.approx(math.log(joint), rel=1e-9)
        prod = math.prod(
            sum(w[j] * normal_pdf(z[i, d], mu[j, d], var[j, d]) for j in range(3)) for d in range(2)
        )
        assert t["log_prod_qz"][i].item() == pytest.approx(math.log(prod), rel=1e-9)


def test_mws_tc_is_larger_for_correlated_codes():
    torch.manual_seed(0)
    b, logvar = 256, torch.full((256, 2), math.log(0.01))
    independent = torch.randn(b, 2)
    correlated = torch.randn(b, 1).expand(b, 2).clone()  # z_2 = z_1: q(z) far from prod q(z_d)
    tcs = []
    for mu in (independent, correlated):
        z = mu + 0.1 * torch.randn(b, 2)
        tcs.append(losses.tc_vae_terms(z, mu, logvar, dataset_size=1000)["tc"].mean().item())
    # MWS shifts every TC by about the same constant ((Z - 1) log M); the difference is the
    # dependence: z = (m + e1, m + e2), m ~ N(0, 1), e ~ N(0, 0.01) has correlation r = 1 / 1.01
    # and TC = -0.5 log(1 - r^2) = 1.96 nats, the independent codes 0. MWS at M = 256 gives
    # 1.62-1.72 here (seeds 0-2): biased low, as Chen et al. say of small batches
    closed_form = -0.5 * math.log(1 - (1 / 1.01) ** 2)
    assert tcs[1] - tcs[0] == pytest.approx(closed_form, abs=0.5), tcs


def test_tc_vae_terms_refuse_a_dataset_smaller_than_the_batch():
    z = torch.zeros(4, 2)
    with pytest.raises(GenlabError, match="model.dataset_size=3"):
        losses.tc_vae_terms(z, z, z, dataset_size=3)


# --- FactorVAE ----------------------------------------------------------------------------------


def test_permute_dims_keeps_each_column_and_breaks_rows():
    z = torch.arange(64 * 3, dtype=torch.float).view(64, 3)
    p = losses.permute_dims(z, torch.Generator().manual_seed(0))
    for d in range(3):
        assert torch.equal(p[:, d].sort().values, z[:, d].sort().values)
    rows = {tuple(r) for r in z.tolist()}
    assert sum(tuple(r) not in rows for r in p.tolist()) > 50  # most rows are new combinations


def test_factor_discriminator_loss_and_tc_by_hand():
    q, perm = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # CE(q as class 0) = log(1 + e^-2); CE(perm as class 1) = log(1 + e^-1); halved sum
    want = 0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)))
    assert losses.factor_d_loss(q, perm).item() == pytest.approx(want)
    # log D / (1 - D) with D = softmax(logits)[0]: the logit difference, + when D says "q(z)"
    assert losses.factor_tc(q).item() == pytest.approx(2.0)
    assert losses.factor_tc(perm).item() == pytest.approx(-1.0)


def test_trained_discriminator_estimates_a_gaussians_total_correlation():
    # z ~ N(0, [[1, r], [r, 1]]): TC = KL(q(z) || q(z1) q(z2)) = -0.5 log(1 - r^2) = 0.830 (r 0.9)
    torch.manual_seed(0)
    r = 0.9
    disc = LatentDiscriminator(2, hidden=64, depth=2)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.9))

    def draw(n: int) -> torch.Tensor:
        a = torch.randn(n, 2)
        return torch.stack([a[:, 0], r * a[:, 0] + math.sqrt(1 - r**2) * a[:, 1]], 1)

    for _ in range(600):
        loss = losses.factor_d_loss(disc(draw(256)), disc(losses.permute_dims(draw(256))))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tc = losses.factor_tc(disc(draw(20000))).mean().item()
        tc_indep = losses.factor_tc(disc(losses.permute_dims(draw(20000)))).mean().item()
    assert tc == pytest.approx(-0.5 * math.log(1 - r**2), abs=0.2), tc
    assert tc_indep < 0  # on permuted draws the ratio's log averages -KL(prod || q) < 0


# --- InfoVAE / WAE objectives by hand -----------------------------------------------------------


class Shift(nn.Module):
    """q(z | x) = N(mean of x's pixels, 0.25) in one dimension."""

    latent_dim, num_classes = 1, 0

    def forward(self, x, labels=None):
        m = x.flatten(1).mean(1, keepdim=True)
        return m, torch.full_like(m, math.log(0.25))


class Pixel(nn.Module):
    """One-pixel decoder: logit (Bernoulli) or mean = z."""

    num_classes = 0

    def forward(self, z, labels=None):
        return z.view(-1, 1, 1, 1)


def imq_1d(a: float, b: float, c: float) -> float:
    return sum(s * c / (s * c + (a - b) ** 2) for s in losses.IMQ_SCALES)


def mmd_by_hand(zs: list[float], ps: list[float], c: float) -> float:
    n = len(zs)
    within = sum(imq_1d(a, b, c) for i, a in enumerate(zs) for j, b in enumerate(zs) if i != j)
    within += sum(imq_1d(a, b, c) for i, a in enumerate(ps) for j, b in enumerate(ps) if i != j)
    cross = sum(imq_1d(a, b, c) for a in zs for b in ps)
    return within / (n * (n - 1)) - 2 * cross / n**2


def test_info_vae_objective_by_hand():
    x = torch.tensor([-0.5, 0.2, 0.9]).view(3, 1, 1, 1)
    model = InfoVAE(Shift(), Pixel(), ADAM, alpha=0.25, lbd=3.0)
    torch.manual_seed(0)
    got = model.objective(x)
    torch.manual_seed(0)  # the same draws: z by reparameterisation, then the prior's
    eps, prior = torch.randn(3, 1), torch.randn(3, 1)
    z = x.flatten(1) + 0.5 * eps
    # Bernoulli NLL of (x + 1) / 2 under logit z; KL of N(m, 1/4) to N(0, 1) in closed form
    recon = [
        -(t * math.log(torch.sigmoid(v)) + (1 - t) * math.log(1 - torch.sigmoid(v)))
        for t, v in zip(((x.flatten() + 1) / 2).tolist(), z.flatten(), strict=True)
    ]
    kl = [0.5 * (m**2 + 0.25 - 1 - math.log(0.25)) for m in x.flatten().tolist()]
    mmd = mmd_by_hand(z.flatten().tolist(), prior.flatten().tolist(), c=2.0)  # C = 2 Z bw^2
    # Zhao et al. eq. 6: recon + (1 - alpha) KL + (alpha + lambda - 1) MMD = ... + 0.75 KL + 2.25
    want = sum(recon) / 3 + 0.75 * sum(kl) / 3 + 2.25 * mmd
    assert got["mmd"].item() == pytest.approx(mmd, rel=1e-5)
    assert got["loss"].item() == pytest.approx(want, rel=1e-5)


def test_wae_objective_by_hand():
    x = torch.tensor([-0.5, 0.2, 0.9]).view(3, 1, 1, 1)
    model = WAE(Shift(), Pixel(), ADAM, likelihood="gaussian", gaussian_std=1.0, lbd=4.0)
    torch.manual_seed(0)
    got = model.objective(x)
    torch.manual_seed(0)
    prior = torch.randn(3, 1)  # deterministic encoder: z = mu, the only draw is the prior's
    zs = x.flatten().tolist()
    # decoder mean = z = x here: no reconstruction cost, the loss is lbd MMD alone
    mmd = mmd_by_hand(zs, prior.flatten().tolist(), c=2.0)
    assert got["recon"].item() == pytest.approx(0.0, abs=1e-7)
    assert got["loss"].item() == pytest.approx(4.0 * mmd, rel=1e-5)
    # a decoder off by 0.2 in [-1, 1] pixels costs 0.05 (0.1)^2 per image ([0, 1] pixels)
    model.decoder.forward = lambda z, labels=None: (z - 0.2).view(-1, 1, 1, 1)
    torch.manual_seed(0)
    assert model.objective(x)["recon"].item() == pytest.approx(0.05 * 0.01, rel=1e-5)


# --- bad input -----------------------------------------------------------------------------------


def conv(latent: int = 4) -> tuple[nn.Module, nn.Module]:
    return ConvEncoder(28, 1, latent), ConvDecoder(latent, 28, 1)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: TCVAE(*conv(), ADAM, alpha=-1.0), "model.alpha=-1.0 must be >= 0"),
        (lambda: TCVAE(*conv(), ADAM, gamma=-2.0), "model.gamma=-2.0 must be >= 0"),
        (lambda: TCVAE(*conv(), ADAM, beta=-6.0), "model.beta=-6.0 must be >= 0"),
        (lambda: TCVAE(*conv(), ADAM, dataset_size=0), "model.dataset_size=0"),
        (lambda: TCVAE(*conv(), ADAM, iwae_k=5), "model.iwae_k=5"),
        (lambda: TCVAE(*conv(), ADAM, prior="vamp", image_shape=(1, 28, 28)), "model.prior="),
        (lambda: InfoVAE(*conv(), ADAM, kernel="laplace"), "model.kernel='laplace'"),
        (lambda: InfoVAE(*conv(), ADAM, lbd=-1.0), "model.lbd=-1.0 must be >= 0"),
        (lambda: InfoVAE(*conv(), ADAM, alpha=0.0, lbd=0.5), "model.alpha=0.0 and model.lbd"),
        (lambda: InfoVAE(*conv(), ADAM, alpha=2.0), "model.alpha=2.0 and model.lbd"),
        (lambda: InfoVAE(*conv(), ADAM, beta=4.0), "model.beta=4.0 would be ignored"),
        (lambda: WAE(*conv(), ADAM, kernel_bandwidth=0.0), "model.kernel_bandwidth=0.0"),
        (lambda: WAE(*conv(), ADAM, scales=[]), "model.scales=[]"),
        (lambda: WAE(*conv(), ADAM, cost_scale=-0.05), "model.cost_scale=-0.05"),
        (lambda: WAE(*conv(), ADAM, encoder_noise="uniform"), "model.encoder_noise='uniform'"),
        (
            lambda: FactorVAE(*conv(), ADAM, LatentDiscriminator(4), ADAM, gamma=-35.0),
            "model.gamma=-35.0 must be >= 0",
        ),
        (lambda: LatentDiscriminator(4, depth=0), "model.discriminator.depth=0"),
    ],
)
def test_bad_input_names_the_key(make, named):
    with pytest.raises(GenlabError, match=named.replace("[", r"\[").replace("]", r"\]")) as e:
        make()
    assert "\n" not in str(e.value)


# --- training -----------------------------------------------------------------------------------

MODELS = {
    "beta_tcvae": ("train/mi", "train/tc", "train/dim_kl"),
    "factor_vae": ("train/tc", "train/d_loss", "train/kl"),
    "info_vae": ("train/mmd", "train/kl"),
    "wae_mmd": ("train/mmd", "train/recon"),
}


@pytest.mark.slow  # about 30 s a model: a training run and a genlab-eval run, each a process
@pytest.mark.parametrize("model", list(MODELS))
def test_trains_from_the_cli_and_the_checkpoint_evaluates(model, run_cli, tmp_path):
    run = tmp_path / "run"
    ok(run_cli("genlab-train", f"model={model}", "debug=tiny", "metrics=none",
               "trainer.max_epochs=1", f"hydra.run.dir={run}"))  # fmt: skip
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    header = set(rows[0])
    assert {"val/elbo", "train/loss", *MODELS[model]} <= header
    assert all(math.isfinite(float(r["train/loss"])) for r in rows if r["train/loss"])
    ok(run_cli("genlab-eval", f"ckpt_path={run}/checkpoints/last.ckpt", "metrics=none"))


def test_factor_vae_refuses_trainer_clipping(cfg_tiny):
    cfg = cfg_tiny("model=factor_vae", "callbacks=none", "trainer.gradient_clip_val=1.0")
    objs = build(cfg)
    with pytest.raises(GenlabError, match="trainer.gradient_clip_val=1.0"):
        fit_built(objs)


def test_factor_vae_clipping_refused_before_the_run(cfg_tiny):
    """The door's config check names the key before anything is built (as for GAN and VQGAN)."""
    from genlab.config import check_training

    cfg = cfg_tiny("model=factor_vae", "callbacks=none", "trainer.gradient_clip_val=1.0")
    with pytest.raises(GenlabError, match="trainer.gradient_clip_val=1.0"):
        check_training(cfg)


def objective_gain(cfg, steps: int) -> tuple[float, float]:
    """The objective on 4 fixed val batches of MNIST-5k before and after ``steps`` batches."""
    cfg.data.limit = None
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, steps
    cfg.trainer.limit_val_batches = 0
    objs = build(cfg)
    module, data = objs["model"], objs["datamodule"]
    data.setup("fit")
    batches = [b for _, b in zip(range(4), data.val_dataloader(), strict=False)]

    def score() -> float:
        if isinstance(module, TCVAE):  # N as fit start reads it
            module.dataset_size = len(data.dataset("train"))
        torch.manual_seed(0)
        with torch.no_grad():
            return sum(module.objective(x, y)["loss"].item() for x, y in batches) / len(batches)

    start = score()
    fit_built(objs)
    return start, score()


@pytest.mark.parametrize("model", list(MODELS))
def test_short_run_on_mnist5k_lowers_the_objective(model, cfg_tiny):
    cfg = cfg_tiny(f"model={model}", "data=mnist5k", "callbacks=none", "data.batch_size=64")
    start, end = objective_gain(cfg, steps=40)
    # per digit, 40 batches of 64, measured here (nats; WAE: its cost units): beta_tcvae
    # 895 -> 606, factor_vae 514 -> 388, info_vae 597 -> 312, wae_mmd 28.4 -> 6.1
    assert end < 0.8 * start, (start, end)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["model=info_vae", "model.kernel=laplace"], "model.kernel='laplace': use"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, named, run_cli, tmp_path):
    proc = run_cli("genlab-train", *args, "debug=tiny", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert named in lines[-1], lines


def test_tc_vae_with_mss_trains_its_networks():
    torch.manual_seed(0)
    model = TCVAE(*conv(), ADAM, dataset_size=1000, mss=True)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    before = [p.detach().clone() for p in model.parameters()]
    terms = model.objective(x)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_tc_vae_with_unit_weights_is_the_one_draw_negative_elbo():
    # alpha = beta = gamma = 1: MI + TC + dim-KL telescopes to log q(z|x) - log p(z) (Chen eq. 2)
    model = TCVAE(*conv(), ADAM, alpha=1.0, beta=1.0, gamma=1.0, dataset_size=50)
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        torch.manual_seed(3)
        got = model.objective(x)
        torch.manual_seed(3)
        mu, logvar = model.encoder(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        kl = losses.log_normal(z, mu, logvar) - losses.log_standard_normal(z)
        want = (model.nll(model.decoder(z), x) + kl).mean()
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    # beta weights TC alone: raising it by 5 adds 5 x the batch's mean TC
    model.hparams.beta = 6.0
    with torch.no_grad():
        torch.manual_seed(3)
        six = model.objective(x)
    assert six["loss"].item() == pytest.approx((want + 5 * got["tc"]).item(), rel=1e-5)
