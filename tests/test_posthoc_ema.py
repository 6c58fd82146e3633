"""Post-hoc EMA (EDM2): the profiles, their least-squares rebuild against EMAs tracked directly,
the snapshots a run writes, genlab-eval's sweep, and bad input."""

import shutil

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from genlab.callbacks.posthoc_ema import PostHocEMA
from genlab.errors import GenlabError
from genlab.evaluation import apply_profile, posthoc_profiles
from genlab.models import posthoc_ema as phema
from genlab.models.ema import standing_stats
from genlab.training import build, train
from tests.conftest import TINY, compose_train, fit_built, load_ckpt, ok


def test_edm2_profiles_have_the_papers_exponents():
    # EDM2 section 3: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert phema.sigma_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert phema.sigma_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for gamma in (0.1, 1.0, 6.94, 16.97, 50.0):
        assert phema.sigma_to_gamma(phema.gamma_to_sigma(gamma)) == pytest.approx(gamma)


def test_profile_inner_products_are_the_integrals_of_the_profiles():
    def profile(t, g, tau):  # the weight of time tau in the EMA at t
        return np.where(tau <= t, (g + 1) * tau**g / t ** (g + 1), 0.0)

    tau = np.linspace(0, 3, 3_000_001)[1:]
    for (ta, ga), (tb, gb) in [((1.0, 6.9), (3.0, 17.0)), ((2.5, 17.0), (2.0, 2.0)),
                               ((3.0, 6.9), (3.0, 6.9))]:  # fmt: skip
        numeric = np.trapezoid(profile(ta, ga, tau) * profile(tb, gb, tau), tau)
        closed = phema.profile_dot(np.float64(ta), ga, np.float64(tb), gb)
        assert closed == pytest.approx(numeric, rel=1e-4)


def discrete_profile(gamma: float, steps: int, total: int) -> np.ndarray:
    """The weight of each step's weights (1..total) in the average after ``steps`` equal batches."""
    h = np.zeros(total)
    for k in range(1, steps + 1):
        beta = phema.power_beta(gamma, k, 1)
        h[:k] *= beta
        h[k - 1] = 1 - beta
    return h


def rebuild_bound(terms: list, steps: list[int], sigma: float, total: int) -> float:
    """||sum_i x_i h_i - h_r||_1 over the steps: |rebuilt - direct| <= it x half the range of
    the weights' trajectory (the weights sum to 1 on both sides, so any constant cancels)."""
    r = -discrete_profile(phema.sigma_to_gamma(sigma), total, total)
    for (_, stored, x), n in zip(terms, steps, strict=True):
        r += x * discrete_profile(phema.sigma_to_gamma(stored), n, total)
    return float(np.abs(r).sum())


def test_rebuilt_scalar_ema_equals_the_ema_tracked_at_that_length():
    """A scalar "network" whose weights are written down: snapshots of the 0.05 and 0.10 profiles
    every 50 of 1000 steps rebuild 0.07 within the bound the least-squares fit allows."""
    total, every = 1000, 50
    k = np.arange(1, total + 1)
    w = np.sin(k / 40) + 0.5 * (k / total) ** 2 + 0.2 * np.cos(k / 7)  # (total,)
    tracked = phema.PowerEMA((0.05, 0.07, 0.10), {"w": torch.zeros((), dtype=torch.float64)})
    snapshots = []
    for step in range(1, total + 1):
        tracked.update({"w": torch.tensor(w[step - 1], dtype=torch.float64)}, step, 1)
        if step % every == 0:
            snapshots.append((step, [float(a["w"]) for a in tracked.averages]))
    stored = [(t, s, values[i]) for t, values in snapshots for i, s in ((0, 0.05), (2, 0.10))]
    x, error = phema.solve(
        [t for t, _, _ in stored], [phema.sigma_to_gamma(s) for _, s, _ in stored],
        total, phema.sigma_to_gamma(0.07),
    )  # fmt: skip
    rebuilt = float(x @ np.array([v for _, _, v in stored]))
    direct = float(tracked.averages[1]["w"])
    bound = rebuild_bound(
        [(None, s, xi) for (_, s, _), xi in zip(stored, x, strict=True)],
        [t for t, _, _ in stored], 0.07, total,
    )  # fmt: skip
    half_range = (w.max() - w.min()) / 2
    assert abs(rebuilt - direct) <= bound * half_range + 1e-12
    assert bound < 0.05 and error < 0.01  # the fit is close: the test can tell a miss
    # and it can fail: the stored profiles themselves are much further from the direct EMA
    for i in (0, 2):
        assert abs(float(tracked.averages[i]["w"]) - direct) > 5 * abs(rebuilt - direct)


class Trajectory(pl.Callback):
    """Every sampled tensor after every batch: the weights the profiles average."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: v.clone() for k, v in phema.sampling_tensors(pl_module).items()})


def posthoc_run(tmp_path, *overrides: str, trajectory: pl.Callback | None = None) -> dict:
    cfg = compose_train([*TINY, "data=synthetic", "seed=3", *overrides], tmp_path)
    objs = build(cfg)
    if trajectory is not None:
        objs["trainer"].callbacks.append(trajectory)
    return fit_built(objs)


def test_gan_run_rebuilds_a_directly_tracked_profile(tmp_path):
    """A real DCGAN run tracks 0.05, 0.07 and 0.10; 0.07 rebuilt from the other two equals the
    tracked one within the fit's bound, for every tensor of the generator."""
    trajectory = Trajectory()
    objs = posthoc_run(
        tmp_path, "callbacks.posthoc_ema.every_n_images=32",
        "callbacks.posthoc_ema.sigma_rels=[0.05,0.07,0.1]", "trainer.max_epochs=4",
        trajectory=trajectory,
    )  # fmt: skip
    snapshots = phema.read_snapshots(tmp_path / "ema_snapshots")
    # 4 epochs of 4 batches of 16: a snapshot every 2 batches, the last at the end of fit
    assert [s.images for s in snapshots] == list(range(32, 257, 32))
    terms, info = phema.plan(snapshots, 0.07, use=(0.05, 0.10))
    assert {s for _, s, _ in terms} == {0.05, 0.10} and info["images"] == 256
    reference = phema.sampling_tensors(objs["model"])
    rebuilt = phema.reconstruct(terms, reference, "ema.snapshots")
    direct = phema.reconstruct([(snapshots[-1], 0.07, 1.0)], reference, "ema.snapshots")
    far = phema.reconstruct([(snapshots[-1], 0.05, 1.0)], reference, "ema.snapshots")
    total = len(trajectory.steps)
    bound = rebuild_bound(terms, [s.images // 16 for s, _, _ in terms], 0.07, total)
    assert bound < 0.1
    for name in reference:
        path = torch.stack([step[name] for step in trajectory.steps]).double()
        half_range = (path.amax(0) - path.amin(0)) / 2
        error = (rebuilt[name].double() - direct[name].double()).abs()
        assert (error <= bound * half_range + 1e-6).all(), name
    worst = max(float((rebuilt[k] - direct[k]).abs().max()) for k in reference)
    apart = max(float((far[k] - direct[k]).abs().max()) for k in reference)
    assert worst < apart / 5  # the stored 0.05 profile is clearly further away
    # the profiles travel in the checkpoint, the snapshots do not
    state = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["callbacks"]["PostHocEMA"]
    assert state["images"] == 256 and state["index"] == len(snapshots)
    for i, sigma in enumerate((0.05, 0.07, 0.10)):
        last = phema.reconstruct([(snapshots[-1], sigma, 1.0)], reference, "ema.snapshots")
        for k in reference:
            assert torch.equal(state["averages"][i][k], last[k]), k


def test_a_rebuilt_profile_samples_with_standing_statistics(tmp_path):
    """Into a BatchNorm generator without an EMA copy: its statistics are the rebuilt weights'."""
    objs = posthoc_run(tmp_path, "callbacks.posthoc_ema.every_n_images=32")
    model = objs["model"].eval()
    ema = OmegaConf.create({"sigma_rel": 0.08, "sweep": []})
    cfg = OmegaConf.create({"ckpt_path": str(tmp_path / "checkpoints" / "last.ckpt"), "ema": ema})
    profiles, reference = posthoc_profiles(cfg, model)
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    apply_profile(model, profiles[0][0], reference)
    after = model.generator.state_dict()
    assert not torch.equal(before["net.0.weight"], after["net.0.weight"])
    stats = {k: v.clone() for k, v in after.items() if "running" in k}
    standing_stats(model.generator, model.latent_dim, model.num_classes, model.device)
    for k, v in stats.items():
        assert torch.equal(v, model.generator.state_dict()[k]), k
    rebuilt = phema.reconstruct(profiles[0][0], reference, "ema.snapshots")
    assert not torch.allclose(stats["net.1.running_mean"], rebuilt["generator.net.1.running_mean"])


def eval_cli(run_cli, ckpt, *args: str):
    return run_cli("genlab-eval", f"ckpt_path={ckpt}", "trainer.accelerator=cpu", *args)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A tiny VAE run with snapshots every 32 images (128 a run)."""
    run = tmp_path_factory.mktemp("vae_posthoc")
    overrides = ["model=vae", "model.nll_k=2", "callbacks.posthoc_ema.every_n_images=32"]
    posthoc_run(run, *overrides)
    return run


def test_eval_sweep_scores_each_profile_and_saves_the_best(vae_run, run_cli, tmp_path):
    """genlab-eval ema.sweep: a row per profile, the best ELBO marked, written as a checkpoint
    that scores the same."""
    ckpt = vae_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "sweep"
    proc = eval_cli(run_cli, ckpt, "metrics=none", "ema.sweep=[0.05,0.08,0.12]",
                    "ema.save_best=true", f"hydra.run.dir={out}")  # fmt: skip
    ok(proc)
    import json

    result = json.loads((out / "metrics.json").read_text())
    rows = result["posthoc_ema"]["profiles"]
    assert [r["sigma_rel"] for r in rows] == [0.05, 0.08, 0.12]
    assert result["posthoc_ema"]["best_by"] == "val/elbo"  # the VAE's monitor, maximised
    elbos = [r["metrics"]["val/elbo"] for r in rows]
    assert len(set(elbos)) == 3  # the profiles differ
    best = int(np.argmax(elbos))
    assert [r["best"] for r in rows] == [i == best for i in range(3)]
    assert result["metrics"] == rows[best]["metrics"]
    # one profile alone scores as its row of the sweep (the same draws)
    single = tmp_path / "single"
    ok(eval_cli(run_cli, ckpt, "metrics=none", "ema.sigma_rel=0.08", f"hydra.run.dir={single}"))
    alone = json.loads((single / "metrics.json").read_text())
    assert alone["posthoc_ema"]["sigma_rel"] == 0.08 and "metrics" not in alone["posthoc_ema"]
    assert alone["metrics"]["val/elbo"] == pytest.approx(elbos[1], rel=1e-6)
    again = tmp_path / "again"
    ok(eval_cli(run_cli, out / "posthoc_ema.ckpt", "metrics=none", f"hydra.run.dir={again}"))
    rescored = json.loads((again / "metrics.json").read_text())["metrics"]["val/elbo"]
    assert rescored == pytest.approx(elbos[best], rel=1e-6)
    drawn = tmp_path / "drawn"
    ok(run_cli("genlab-sample", f"ckpt_path={out / 'posthoc_ema.ckpt'}", "num_samples=4",
               "reconstructions=false", "device=cpu", f"hydra.run.dir={drawn}"))  # fmt: skip
    assert (drawn / "samples.png").is_file()
    # genlab-export carries the profile and the numbers it scored
    from genlab.checkpoints import load_model
    from genlab.exporting import write_export

    exported = write_export(str(out / "posthoc_ema.ckpt"), tmp_path / "export")
    card = (exported / "README.md").read_text()
    assert f"post-hoc EMA profile sigma_rel={rows[best]['sigma_rel']}" in card
    assert f"| val/elbo | {elbos[best]:.6g} |" in card
    torch.manual_seed(0)
    expected = load_model(str(out / "posthoc_ema.ckpt"))[1].sample(4)
    torch.manual_seed(0)
    assert torch.equal(load_model(str(exported))[1].sample(4), expected)


def test_bad_posthoc_input_fails_in_one_line_naming_the_key(vae_run, run_cli, tmp_path):
    ckpt = vae_run / "checkpoints" / "last.ckpt"
    proc = eval_cli(run_cli, ckpt, "metrics=none", "ema.sigma_rel=0.5")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("genlab-eval: error: ema.sigma_rel=0.5"), last
    assert not list((vae_run / "eval").glob("*/metrics.json"))
    both = eval_cli(run_cli, ckpt, "metrics=none", "ema.sigma_rel=0.1", "ema.sweep=[0.05]")
    assert "ema.sigma_rel and ema.sweep are exclusive" in both.stderr.strip().splitlines()[-1]

    def refused(**ema) -> str:
        cfg = OmegaConf.create({"ckpt_path": str(ckpt), "ema": {"sweep": [], **ema}})
        model = torch.nn.Module()
        model.sampling_state = ("encoder.",)
        from genlab.checkpoints import load_model

        _, model = load_model(str(ckpt))
        with pytest.raises(GenlabError) as e:
            posthoc_profiles(cfg, model)
        assert "\n" not in str(e.value)
        return str(e.value)

    # a profile the snapshots cannot fit (far shorter than both stored ones)
    assert refused(sigma_rel=0.01).startswith("ema.sigma_rel=0.01: the snapshots")
    # a run without snapshots
    assert refused(sigma_rel=0.07, snapshots=str(tmp_path)).startswith("ema.snapshots=")
    # a snapshot gone, one cut short, one written by another model
    for damage in ("missing", "truncated", "other"):
        folder = tmp_path / damage
        shutil.copytree(vae_run / "ema_snapshots", folder)
        victim = folder / phema.snapshot_name(1)
        if damage == "missing":
            victim.unlink()
        elif damage == "truncated":
            victim.write_bytes(victim.read_bytes()[:1000])
        else:
            gan = tmp_path / "gan"
            posthoc_run(gan, "callbacks.posthoc_ema.every_n_images=32", "trainer.max_epochs=1")
            shutil.copy(gan / "ema_snapshots" / phema.snapshot_name(1), victim)
        message = refused(sigma_rel=0.07, snapshots=str(folder))
        assert str(folder) in message or str(victim) in message, message
        assert {"missing": "is missing", "truncated": "not a readable snapshot",
                "other": "genlab.models.gan.GAN"}[damage] in message  # fmt: skip


def test_training_refuses_bad_profiles_and_a_mid_run_start(tmp_path):
    with pytest.raises(GenlabError, match="callbacks.posthoc_ema.sigma_rels"):
        PostHocEMA(10, sigma_rels=(0.05,))
    with pytest.raises(GenlabError, match="callbacks.posthoc_ema.sigma_rels"):
        PostHocEMA(10, sigma_rels=(0.05, 0.4))
    plain = tmp_path / "plain"
    posthoc_run(plain, "trainer.max_epochs=1")
    last = plain / "checkpoints" / "last.ckpt"
    overrides = [*TINY, "data=synthetic", f"ckpt_path={last}", "trainer.max_epochs=2"]
    cfg = compose_train([*overrides, "callbacks.posthoc_ema.every_n_images=32"], tmp_path / "r")
    with pytest.raises(GenlabError, match="trained without post-hoc EMA"):
        train(cfg)


@pytest.mark.parametrize("model", ["vae_vamp", "hvae2", "vqvae", "vqgan", "vq_prior"])
def test_every_model_snapshots_and_rebuilds_what_it_samples_with(model, tmp_path):
    """Each model averages its sampling networks (never a discriminator) and takes a profile."""
    overrides = {
        "vae_vamp": ["model=vae", "model.prior=vamp", "model.prior_components=4", "model.nll_k=2"],
        "hvae2": ["model=hvae2", "model.nll_k=2"],
        "vqvae": ["model=vqvae"],
        "vqgan": ["model=vqgan", "model.disc_start=0"],
    }.get(model)
    if model == "vq_prior":
        from tests.conftest import train_checkpoint

        vqvae = train_checkpoint(tmp_path, "vqvae", "model=vqvae", "data=synthetic")
        overrides = ["model=vq_prior", f"model.vqvae_ckpt={vqvae}"]
    run = tmp_path / "run"
    every = ["callbacks.posthoc_ema.every_n_images=32", "trainer.max_epochs=1"]
    objs = posthoc_run(run, *overrides, *every)
    module = objs["model"]
    averaged = phema.sampling_tensors(module)
    assert averaged and not any("discriminator" in k or k.startswith("vqvae.") for k in averaged)
    snapshots = phema.read_snapshots(run / "ema_snapshots")
    assert [s.images for s in snapshots] == [32, 64]
    terms, _ = phema.plan(snapshots, 0.07)
    before = {k: v.clone() for k, v in averaged.items()}
    apply_profile(module, terms, averaged)
    after = phema.sampling_tensors(module)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    with torch.no_grad():
        assert torch.isfinite(module.eval().sample(2)).all()
