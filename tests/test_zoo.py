"""Model zoo: every option and recipe trains; losses, regularisers, EMA, conditional samples."""

import copy
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn.utils import parametrize

from genlab.checkpoints import load_model
from genlab.config import CONFIG_DIR
from genlab.training import build
from tests.conftest import REPO, compose_train, fit_built, train_checkpoint

MODELS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
QUIET = ["callbacks=none", "metrics=none"]
# Narrow ResNets: these tests are about wiring, not capacity.
NARROW = ["model.generator.base_channels=16", "model.discriminator.base_channels=16"]
DCGAN_NARROW = ["+model.generator.base_channels=16", "+model.discriminator.base_channels=16"]
SG2_NARROW = ["model.generator.channel_base=256", "model.generator.channel_max=16"]
MODEL_ARGS = {"sngan": NARROW, "cgan_pd": NARROW, "stylegan2": SG2_NARROW}
MODEL_ARGS["biggan"] = ["model.generator.base_channels=4", "model.discriminator.base_channels=4"]
MODEL_ARGS["r3gan"] = ["model.generator.width=16", "model.discriminator.width=16"]
# Zero-initialised gates pass no gradient to what they gate until they moved themselves:
# BigGAN's attention scale (G makes one step here), R3GAN's last conv of each residual branch.
GATED = {"biggan": r"^attention\.(theta|phi|g|out)\.", "r3gan": r"\.(conv1|conv2|act1|act2)\."}
# What an option logs for the objective it trains on, where it differs from its family's.
LOGGED = {"iwae": "train/iwae_bound"}
# The discrete-latent line: the networks each option trains, what it logs, what it needs first.
LOGGED |= {"vqvae": "train/commitment", "vq_prior": "train/prior_nll", "vqgan": "train/g_loss"}
NETS = {"vq_prior": ("prior",), "vqgan": ("encoder", "decoder", "discriminator")}
# The VAEs of other objectives (models/vae_objectives.py): their own terms; FactorVAE's D
LOGGED |= {"beta_tcvae": "train/tc", "factor_vae": "train/tc", "info_vae": "train/mmd"}
LOGGED |= {"wae_mmd": "train/mmd"}
NETS["factor_vae"] = ("encoder", "decoder", "discriminator")
# model.vqvae_ckpt: the prior trains on the codes of a (tiny) VQ-VAE checkpoint made first
FIRST_STAGE = {"vq_prior": ("model.vqvae_ckpt", ["model=vqvae", "data=synthetic", *QUIET])}


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_buffers()}


def prepare(cfg, batches: int | float, epochs: int = 1) -> dict:
    cfg.trainer.max_epochs = epochs
    cfg.trainer.limit_train_batches = batches
    cfg.trainer.limit_val_batches = 0
    return build(cfg)


def fit(cfg, batches: int | float, epochs: int = 1) -> dict:
    objs = prepare(cfg, batches, epochs)
    fit_built(objs)
    return objs


def test_model_options_listed():
    assert {"gan", "sngan", "cgan_pd", "wgan_gp", "gan_mlp"} <= set(MODELS)
    assert {"vae", "beta_vae", "cvae", "iwae"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_model_option_trains_every_network(model, cfg_tiny, tmp_path):
    stage = FIRST_STAGE.get(model)
    first = [f"{stage[0]}={train_checkpoint(tmp_path, 'first', *stage[1])}"] if stage else []
    cfg = cfg_tiny(f"model={model}", "data=synthetic", *QUIET, *MODEL_ARGS.get(model, []), *first)
    is_gan = "discriminator" in cfg.model
    # enough batches for one generator step after n_critic discriminator steps
    objs = prepare(cfg, batches=cfg.model.get("n_critic", 1) if is_gan else 1)
    module = objs["model"]
    nets = NETS.get(model, ("generator", "discriminator") if is_gan else ("encoder", "decoder"))
    before = {name: params(getattr(module, name)) for name in nets}
    objs["trainer"].fit(module, datamodule=objs["datamodule"])
    # The wgan loss (and a hinge whose margins are all active) gives the critic's output bias a
    # zero gradient by construction: it cancels between real and fake logits.
    if is_gan and cfg.model.get("loss") in ("wgan", "hinge"):  # FactorVAE: no loss
        before["discriminator"].pop("head.linear.bias", None)
    for name in nets if model in GATED else ():
        before[name] = {k: v for k, v in before[name].items() if not re.search(GATED[model], k)}
    for name in nets:
        after = params(getattr(module, name))
        assert all(not torch.equal(v, after[k]) for k, v in before[name].items()), (model, name)
    key = LOGGED.get(model, "train/g_loss" if is_gan else "train/kl")
    assert torch.isfinite(objs["trainer"].callback_metrics[key]), (model, key)
    assert module.num_classes == (4 if model in ("cgan_pd", "cvae", "biggan") else 0)


def test_model_option_settings(tmp_path):
    """The published settings each option promises, as the module sees them."""

    def hp(model: str, data: str = "cifar10"):
        cfg = compose_train([f"model={model}", f"data={data}"], tmp_path)
        return instantiate(cfg.model, _convert_="object")

    sngan = hp("sngan")
    assert (sngan.hparams.loss, sngan.hparams.n_critic) == ("hinge", 5)
    assert sngan.optimizer_d.keywords == {"lr": 0.0002, "betas": [0.0, 0.9], "fused": None}
    assert parametrize.is_parametrized(sngan.discriminator.head.linear, "weight")
    cgan = hp("cgan_pd")
    assert cgan.num_classes == cgan.discriminator.num_classes == 10  # from data.num_classes
    wgan = hp("wgan_gp")
    assert (wgan.hparams.loss, wgan.hparams.gp_weight, wgan.hparams.n_critic) == ("wgan", 10.0, 5)
    assert wgan.optimizer_g.keywords == {"lr": 0.0001, "betas": [0.0, 0.9], "fused": None}
    assert hp("beta_vae").hparams.beta > 1 and hp("iwae").hparams.iwae_k > 1
    assert hp("cvae", "mnist5k").decoder.num_classes == 10
    dcgan_sn = compose_train(["model=gan", "model.discriminator.spectral_norm=true"], tmp_path)
    d = instantiate(dcgan_sn.model.discriminator)
    assert parametrize.is_parametrized(d.features[0], "weight")


@pytest.mark.parametrize("loss", ["ns", "minimax", "hinge", "wgan", "ls"])
def test_every_loss_with_every_regulariser(loss, cfg_tiny):
    cfg = cfg_tiny(
        "model=gan_mlp", "data=synthetic", "data.image_size=16", *QUIET, f"model.loss={loss}",
        "model.gp_weight=10", "model.r1_gamma=1", "model.discriminator.spectral_norm=true",
        "model.n_critic=2", "model.ema_decay=0.9",
    )  # fmt: skip
    cfg.model.diffaugment = "color,translation,cutout"
    objs = fit(cfg, batches=2)
    logged = objs["trainer"].callback_metrics
    for key in ("train/d_loss", "train/g_loss", "train/gp", "train/r1"):
        assert torch.isfinite(logged[key]), key
    assert logged["train/g_steps"] == 1 and objs["trainer"].global_step == 3
    assert parametrize.is_parametrized(objs["model"].discriminator.head.linear, "weight")


@pytest.mark.parametrize("model", ["gan_mlp", "vae"])
def test_training_values_reach_the_logger_only_on_written_steps(model, cfg_tiny):
    """self.log runs only every log_every_n_steps (batches 2, 4, 6 of 7 here); with n_critic=3
    a written step between G steps logs the last G step's loss."""
    import pandas as pd

    gan = model == "gan_mlp"
    cfg = cfg_tiny(
        f"model={model}", "data=synthetic", f"data.image_size={16 if gan else 28}",
        "metrics=none", "callbacks=none", "trainer.log_every_n_steps=2",
        *(["model.n_critic=3"] if gan else []),
    )  # fmt: skip
    objs = fit(cfg, batches=7)
    rows = pd.read_csv(Path(objs["trainer"].logger.log_dir) / "metrics.csv")
    train = rows.dropna(subset=["train/d_loss" if gan else "train/loss"])
    assert len(train) == 3, rows
    if gan:  # G steps come after batches 3 and 6: none yet at batch 2
        assert train["train/g_steps"].tolist() == [0, 1, 2]
        g_loss = train["train/g_loss"]
        # batch 4 is no G step: its value is batch 3's G loss
        assert g_loss.isna().tolist() == [True, False, False], rows


def test_kl_warmup_and_gaussian_likelihood(cfg_tiny):
    cfg = cfg_tiny(
        "model=vae", "data=synthetic", *QUIET, "model.kl_warmup_steps=8", "model.beta=2",
        "model.likelihood=gaussian",
    )  # fmt: skip
    module = fit(cfg, batches=4)["model"]
    assert module.kl_weight() == pytest.approx(2 * 4 / 8)  # halfway up the ramp
    assert module.log_std is not None and module.log_std.item() != 0  # the learned scale moved


def with_own_bn_stats(generator: torch.nn.Module, latent_dim: int) -> torch.nn.Module:
    """A copy of ``generator`` with the BatchNorm statistics of its own weights, in eval mode:
    measured on one large batch of fresh noise in train mode."""
    g = copy.deepcopy(generator).train()
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        g(torch.randn(4096, latent_dim, generator=torch.Generator().manual_seed(99)))
    return g.eval()


@pytest.mark.parametrize("stats", ["standing", "average"])
def test_ema_averages_the_generator_only(stats, cfg_tiny):
    """DCGAN, so the generator has BatchNorm: the EMA weights get statistics of their own."""
    cfg = cfg_tiny("model=gan", "data=synthetic", *QUIET, *DCGAN_NARROW, f"model.ema_stats={stats}")
    cfg.model.ema_decay = 0.9
    objs = prepare(cfg, batches=1)  # one D step, one G step, one EMA update
    module = objs["model"]
    g0, b0, eb0 = params(module.generator), buffers(module.generator), buffers(module.generator_ema)
    assert all(torch.equal(g0[k], v) for k, v in params(module.generator_ema).items())
    objs["trainer"].fit(module, datamodule=objs["datamodule"])
    g1, ema = params(module.generator), params(module.generator_ema)
    for k in g1:
        assert not torch.equal(g0[k], g1[k])
        assert torch.allclose(ema[k], 0.9 * g0[k] + 0.1 * g1[k], atol=1e-6), k
    b1, ema_b = buffers(module.generator), buffers(module.generator_ema)
    assert any("running_var" in k for k in b1)
    for k in b1:
        if b1[k].is_floating_point():  # running_mean / running_var: averaged like the weights
            assert not torch.equal(b0[k], b1[k]), k
            assert torch.allclose(ema_b[k], 0.9 * eb0[k] + 0.1 * b1[k], atol=1e-6), k
        else:  # num_batches_tracked stays an integer count
            assert ema_b[k].dtype == b1[k].dtype, k
    keys = module.state_dict().keys()
    ema_keys = {k.removeprefix("generator_ema.") for k in keys if k.startswith("generator_ema.")}
    assert ema_keys == set(module.generator.state_dict())  # a copy of G, nothing of D
    assert all(k.startswith("generator_ema.") for k in keys if "ema" in k)
    assert not any(p.requires_grad for p in module.generator_ema.parameters())
    module.eval()
    rng = torch.get_rng_state()
    generator = module.sampling_generator  # standing: statistics recomputed here, RNG forked
    assert torch.equal(rng, torch.get_rng_state())
    if stats == "standing":
        again = buffers(generator)
        assert module.sampling_generator is generator  # no new EMA update: no recomputation
        assert all(torch.equal(again[k], v) for k, v in buffers(generator).items())
    torch.manual_seed(0)
    samples = module.sample(4)
    torch.manual_seed(0)
    z = torch.randn(4, module.latent_dim)
    assert torch.equal(samples, module.generator_ema(z))  # sampling (and metrics) use the EMA
    assert not torch.equal(samples, module.generator(z))
    # what copying G's statistics (the old behaviour) would sample instead
    copied = copy.deepcopy(module.generator_ema)
    for ema_buf, buf in zip(copied.buffers(), module.generator.buffers(), strict=True):
        ema_buf.copy_(buf)
    grey = (copied(z) - samples).abs().mean() * 127.5
    assert grey > 0.01, grey  # in [0, 255] grey levels; ~10 under standing, 0.1 averaged
    if stats == "standing":  # the EMA weights normalised by their own statistics
        own = with_own_bn_stats(module.generator_ema, module.latent_dim)(z)
        off, copied_off = ((x - own).abs().mean() * 127.5 for x in (samples, copied(z)))
        assert off < 0.2 * copied_off, (off, copied_off)


class EMAProbe(pl.Callback):
    """Record the EMA weights when training (re)starts, after a checkpoint was restored."""

    def on_train_start(self, trainer, pl_module):
        self.start = params(pl_module.generator_ema)


def test_ema_survives_checkpoint_and_resume(cfg_tiny, tmp_path):
    cfg = cfg_tiny("model=gan_mlp", "data=synthetic", "data.image_size=16", *QUIET)
    cfg.model.ema_decay = 0.5
    objs = fit(cfg, batches=2)
    ckpt = tmp_path / "ema.ckpt"
    objs["trainer"].save_checkpoint(ckpt)
    saved = params(objs["model"].generator_ema)
    generator = params(objs["model"].generator)
    assert any(not torch.equal(saved[k], generator[k]) for k in saved)

    _, loaded = load_model(str(ckpt))
    assert all(torch.equal(saved[k], v) for k, v in params(loaded.generator_ema).items())

    cfg.trainer.max_epochs = 2
    resumed = build(cfg)
    probe = EMAProbe()
    resumed["trainer"].callbacks.append(probe)
    fresh = params(resumed["model"].generator_ema)
    resumed["trainer"].fit(resumed["model"], datamodule=resumed["datamodule"], ckpt_path=ckpt)
    # training went on from the saved EMA, not from a copy of a freshly initialised generator
    assert all(torch.equal(saved[k], v) for k, v in probe.start.items())
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)
    end = params(resumed["model"].generator_ema)
    assert any(not torch.equal(end[k], saved[k]) for k in saved)


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Whole images as vectors (N, C*H*W): the class shows as the blob's position."""
    return x.flatten(1)


def hue(x: torch.Tensor) -> torch.Tensor:
    """Each image's share of light per channel (N, C): the class shows as the blob's tint."""
    light = (x + 1).flatten(2).sum(2)
    return light / light.sum(1, keepdim=True)


# (model, overrides, epochs over ~57 batches of 32, features the classifier reads)
CONDITIONAL = [
    ("cvae", ["model.encoder.latent_dim=2"], 3, pixels),  # a tiny z leaves the class to labels
    (
        "gan_mlp",
        [
            "+model.generator.num_classes=${data.num_classes}",
            "+model.discriminator.num_classes=${data.num_classes}",
            "model.loss=hinge",
            "model.discriminator.spectral_norm=true",
            "model.optimizer_g.lr=1e-3",
            "model.optimizer_d.lr=1e-3",
        ],
        6,
        pixels,
    ),
    (
        "cgan_pd",
        [
            *NARROW,
            "data.channels=3",
            "model.n_critic=1",
            "model.optimizer_g.lr=1e-3",
            "model.optimizer_d.lr=1e-3",
        ],
        7,
        hue,  # a ResNet D pools globally: the blob's position is nearly invisible to it, not hue
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "extra", "epochs", "features"), CONDITIONAL, ids=[c[0] for c in CONDITIONAL]
)
def test_conditional_samples_follow_their_labels(model, extra, epochs, features, cfg_tiny):
    """A nearest-class-mean classifier of real images labels the samples of each class."""
    cfg = cfg_tiny(
        f"model={model}", "data=synthetic", "data.limit=null", "data.batch_size=32", *QUIET, *extra
    )
    objs = fit(cfg, batches=1.0, epochs=epochs)
    module, dm = objs["model"].eval(), objs["datamodule"]
    x, y = _stack(dm.dataset("train"))
    means = torch.stack([features(x[y == k]).mean(0) for k in range(dm.num_classes)])  # (K, F)
    labels = torch.arange(dm.num_classes).repeat_interleave(50)
    with torch.no_grad():
        predicted = torch.cdist(features(module.sample(len(labels), labels)), means).argmin(1)
    per_class = [(predicted[labels == k] == k).float().mean().item() for k in labels.unique()]
    assert min(per_class) > 0.6, per_class  # chance is 0.25
    # the same samples checked against shuffled labels are at chance: the test can fail
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert (predicted == shuffled).float().mean() < 0.45


def _header(name: str) -> list[str]:
    return (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text().splitlines()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_starts_with_command_and_target(name):
    lines = _header(name)
    assert lines[0] == "# @package _global_"  # Hydra reads it only before any other line
    assert re.match(rf"# genlab-train experiment={name}( |$)", lines[1]), lines[1]
    assert lines[2].startswith("# Target: "), lines[2]
    assert re.search(r"\d", lines[2]) or "none published" in lines[2]
    readme = (REPO / "experiments" / "README.md").read_text()
    assert f"experiment={name}" in readme


REDUCED = {"num_fp16_res": 0, "bf16_stages": 0}  # the networks' own mixed precision: off


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_one_batch_on_synthetic_data_of_its_shape(name, tmp_path, monkeypatch):
    # standing statistics of a full-width EMA generator (BigGAN: 1024 passes) are not what this
    # test is about, and would cost a minute on the CPU: one small batch of them here
    monkeypatch.setattr("genlab.models.ema.STANDING_BATCHES", 1)
    monkeypatch.setattr("genlab.models.ema.STANDING_BATCH_SIZE", 8)
    real = compose_train([f"experiment={name}"], tmp_path)
    resolved = OmegaConf.to_container(real, resolve=True)
    shape = [
        f"data.image_size={real.data.image_size}",
        f"data.channels={real.data.channels}",
        f"data.synthetic_classes={max(real.data.num_classes, 1)}",
    ]
    # one image of a 256 px recipe (taming's VQGAN: 72M parameters) costs most of a minute here
    batch = 8 if real.data.image_size <= 64 else 1
    # The references' reduced-precision blocks (StyleGAN2's float16, R3GAN's bfloat16) run 3 to
    # 14 times slower on a CPU than fp32; their outputs are tested against the references' in
    # test_stylegan2.py and test_r3gan.py, so here the networks run in fp32.
    generator = real.model.get("generator") or {}
    fp32 = [f"model.generator.{k}={v}" for k, v in REDUCED.items() if k in generator]
    cfg = compose_train(
        [f"experiment={name}", "data=synthetic", *shape, f"data.batch_size={batch}", "debug=fdr",
         "logger=none", *QUIET, *fp32],
        tmp_path,
    )  # fmt: skip
    # Only the data source (and precision) changed: the model is built as the recipe specifies.
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key in REDUCED:
        for net in ("generator", "discriminator"):
            for config in (resolved["model"], model):
                if isinstance(config.get(net), dict):
                    config[net].pop(key, None)
    assert model == resolved["model"]
    objs = build(cfg)
    fit_built(objs)
    assert objs["trainer"].state.finished and objs["trainer"].global_step >= 1
