"""VQGAN: adaptive adversarial weight, alternating optimizers, LPIPS from a local file, DDP."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from genlab.callbacks.precision import GANMixedPrecision
from genlab.config import instantiate
from genlab.errors import GenlabError
from genlab.models.vqgan import adaptive_weight
from genlab.training import build
from tests.conftest import TINY, compose_train, fit_built, load_ckpt, ok

# taming-transformers' VQLPIPSWithDiscriminator on fixed inputs: see test_losses_equal_tamings_...
TAMING = torch.load(
    Path(__file__).parent / "fixtures" / "references" / "taming_vqgan.pt", weights_only=False
)
QUIET = ["callbacks=none", "metrics=none", "data=synthetic"]
# narrow networks: these tests are about the training logic, not capacity
SMALL = [
    "model.encoder.hidden=32", "model.encoder.res_hidden=8", "model.quantizer.num_codes=16",
    "model.discriminator.base_channels=8",
]  # fmt: skip


def test_adaptive_weight_against_a_hand_computation_on_a_linear_decoder():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 3, generator=g)  # (N, D) quantised vectors
    x = torch.randn(6, 2, generator=g)  # (N, C) targets
    v = torch.randn(2, generator=g)  # a linear discriminator: logit = out . v
    w = torch.randn(2, 3, generator=g, requires_grad=True)  # the decoder's last (only) layer
    out = q @ w.T  # (N, C)
    rec = (x - out).abs().mean()
    g_loss = -(out @ v).mean()
    # by hand: d rec / dW = -sign(x - out)^T q / (N C); d g / dW = -v (sum_n q_n) / N
    rec_grad = -torch.sign(x - out).T @ q / out.numel()
    g_grad = -torch.outer(v, q.sum(0)) / len(q)
    want = rec_grad.norm() / (g_grad.norm() + 1e-4)
    got = adaptive_weight(rec, g_loss, w)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert not got.requires_grad
    # a discriminator that ignores the decoder output: ||grad rec|| / 1e-4, clamped at 1e4
    flat = (out * 0).sum()
    assert adaptive_weight(rec, flat, w).item() == pytest.approx(rec_grad.norm().item() / 1e-4)
    assert adaptive_weight(10 * rec, flat, w).item() == 1e4


class StepProbe(pl.Callback):
    """Record, for every optimizer step, which networks can learn and which have gradients."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        def state(net):
            params = list(net.parameters())
            return {
                "trainable": all(p.requires_grad for p in params),
                "grads": any(p.grad is not None and p.grad.any() for p in params),
            }

        self.steps.append(
            {
                "optimizer": trainer.optimizers.index(optimizer),
                "d": state(pl_module.discriminator),
                "enc": state(pl_module.encoder),
            }
        )


def tiny_vqgan(tmp_path, *extra: str):
    return compose_train(["model=vqgan", "debug=tiny", *QUIET, *SMALL, *extra], tmp_path)


@pytest.mark.parametrize("disc_start", [0, 2])
def test_autoencoder_and_discriminator_steps_alternate_under_toggled_optimizer(
    disc_start, tmp_path
):
    cfg = tiny_vqgan(tmp_path, f"model.disc_start={disc_start}", "trainer.limit_val_batches=0")
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, 3
    objs = build(cfg)
    probe = StepProbe()
    objs["trainer"].callbacks.append(probe)
    d0 = {k: v.clone() for k, v in objs["model"].discriminator.state_dict().items()}
    fit_built(objs)
    order = [s["optimizer"] for s in probe.steps]
    # one autoencoder step per batch, then (from batch disc_start on) one discriminator step
    assert order == [0] * disc_start + [0, 1] * (3 - disc_start), order
    assert objs["trainer"].global_step == disc_start + 2 * (3 - disc_start)
    for s in probe.steps:
        ae = s["optimizer"] == 0
        # toggled_optimizer: only the stepping network's parameters require gradients
        assert s["d"]["trainable"] != ae and s["enc"]["trainable"] == ae, s
        assert s["enc" if ae else "d"]["grads"], s
    logged = objs["trainer"].callback_metrics
    assert logged["train/ae_steps"] == 3 and torch.isfinite(logged["train/d_weight"])
    d1 = objs["model"].discriminator.state_dict()
    assert any(not torch.equal(d0[k], d1[k]) for k in d0)


def random_lpips(path, net: str = "alex"):
    """A random LPIPS of the real architecture whose distances differ between images."""
    import lpips

    model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if name.startswith("lin"):  # the trained heads are non-negative: a distance >= 0
            p.data = torch.rand(p.shape, generator=g) / p[0].numel()
        elif p.dim() == 4:
            p.data = torch.randn(p.shape, generator=g) * (2 / p[0].numel()) ** 0.5
    torch.save(model.state_dict(), path)
    return path


def test_perceptual_loss_reads_local_weights_and_stays_out_of_checkpoints(tmp_path, no_network):
    weights = random_lpips(tmp_path / "lpips_alex.pth")
    base = [f"model.lpips_weights={weights}", "model.lpips_net=alex"]
    module = instantiate(tiny_vqgan(tmp_path, *base, "model.perceptual_weight=1").model)
    plain = instantiate(tiny_vqgan(tmp_path, *base).model)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    net = module._lpips[0]
    with torch.no_grad():
        same, other = net(x, x).mean(), net(x, y).mean()
        assert same.abs() < 1e-6 and other > 1e-3, (same, other)
        assert module.rec_loss(y, x) == pytest.approx(float(plain.rec_loss(y, x) + other))
    assert not any("lpips" in k or k.startswith("_") for k in module.state_dict())
    assert set(module.state_dict()) == set(plain.state_dict())
    for extra, key in [
        (["model.lpips_weights=null"], "model.lpips_weights is not set"),
        ([f"model.lpips_weights={tmp_path}/none.pth"], "no such file"),
    ]:
        cfg = tiny_vqgan(tmp_path, "model.lpips_net=alex", "model.perceptual_weight=1", *extra)
        with pytest.raises(GenlabError, match=key):
            instantiate(cfg.model, _convert_="object")


def test_bad_values_name_their_key(tmp_path):
    for override, key in [
        ("model.loss=wgan", "model.loss"),
        ("model.disc_start=-1", "model.disc_start"),
        ("model.discriminator.layers=6", "model.discriminator.layers"),
        ("model.gaussian_std=null", "model.gaussian_std"),
    ]:
        with pytest.raises(GenlabError, match=key):
            instantiate(tiny_vqgan(tmp_path, override).model, _convert_="object")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_vqgan_mixed_precision_trains(precision, tmp_path):
    cfg = tiny_vqgan(tmp_path, f"trainer.precision={precision}", "trainer.limit_val_batches=0")
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, 3
    objs = fit_built(build(cfg))
    logged = objs["trainer"].callback_metrics
    for key in ("train/loss", "train/d_loss", "train/g_loss", "train/d_weight"):
        assert torch.isfinite(logged[key]), key
    assert objs["trainer"].global_step == 6
    # 16-mixed: the two-optimizer plugin, whose scaler VQGAN updates once per batch
    plugin = objs["trainer"].precision_plugin
    assert isinstance(plugin, GANMixedPrecision) == (precision == "16-mixed")


@pytest.mark.slow
def test_vqgan_ddp_cpu_two_processes(run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "genlab-train", "model=vqgan", *TINY, "data=synthetic", "trainer=ddp_cpu", *SMALL,
        f"hydra.run.dir={run}",
    )  # fmt: skip
    ok(proc)
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    # 4 batches per epoch per process, 2 epochs, an autoencoder and a discriminator step each
    assert ckpt["global_step"] == 16


@pytest.mark.slow
def test_vqgan_learns_on_synthetic_data(tmp_path):
    cfg = tiny_vqgan(
        tmp_path, "data.limit=null", "data.batch_size=32", "model.optimizer.lr=2e-3",
        "model.disc_start=60", "model.quantizer.restart_after=20", "logger=none",
    )  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 2, 1.0
    cfg.trainer.limit_val_batches = 4
    objs = build(cfg)
    trainer = objs["trainer"]
    before = trainer.validate(objs["model"], objs["datamodule"], verbose=False)[0]["val/mse"]
    fit_built(objs)
    after = trainer.validate(objs["model"], objs["datamodule"], verbose=False)[0]["val/mse"]
    assert after < 0.3 * before, (before, after)
    assert objs["model"].batches_seen > 60  # the adversarial phase ran


def test_taming_networks_train_and_reload_from_their_checkpoint(tmp_path):
    """model/vq_nets=taming plugs taming's encoder/decoder into VQGAN (narrow, for the CPU)."""
    from genlab.checkpoints import load_model
    from tests.conftest import train_checkpoint

    nets = [
        "model/vq_nets=taming", "model.encoder.ch=32", "model.encoder.ch_mult=[1,2]",
        "model.encoder.num_res_blocks=1", "model.encoder.z_channels=8",
        "model.encoder.embedding_dim=8", "model.encoder.attn_resolutions=[16]",
        "model.quantizer.num_codes=16", "model.discriminator.base_channels=8",
    ]  # fmt: skip
    ckpt = train_checkpoint(tmp_path, "taming", "model=vqgan", *QUIET, *nets)
    _, model = load_model(str(ckpt))
    assert type(model.encoder).__name__ == "TamingEncoder" and model.grid == (16, 16)
    assert model.decoder.last_layer is model.decoder.conv_out.weight
    assert model.hparams.beta_on == "codebook"  # taming's legacy=True quantiser loss
    state = load_ckpt(ckpt)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert model.reconstruct(x).shape == x.shape and model.sample(2).shape == x.shape


def test_losses_equal_tamings_vqlpips_with_discriminator(tmp_path):
    """Against VQLPIPSWithDiscriminator (perceptual weight 0, disc_weight 0.8, hinge) in
    tests/fixtures/references/taming_vqgan.pt (experiments/references/taming_vqgan.py,
    taming-transformers 3ba01b241669f5ade541ce990f7650a3b8f65318)."""
    ref = TAMING["vqperceptual"]
    cfg = tiny_vqgan(tmp_path, "data.channels=3", "model.discriminator.base_channels=8")
    module = instantiate(cfg.model, _convert_="object")
    module.discriminator.load_state_dict(ref["disc_state"])
    last = torch.nn.Conv2d(4, 3, 3, padding=1)  # the decoder's last layer
    last.load_state_dict(ref["last_state"])
    x, out = ref["x"], last(ref["h"])
    with torch.no_grad():
        assert torch.allclose(module.discriminator(x).view(ref["d_out"].shape), ref["d_out"],
                              atol=1e-5)  # fmt: skip
    assert module.hparams.disc_weight == ref["disc_weight"]
    vq = ref["codebook_loss"].mean()  # taming: codebook_weight 1 x the quantiser's loss
    ae = module.autoencoder_loss(x, out, vq, last.weight, adversarial=True)
    d = module.discriminator_loss(x, out)
    for key, theirs in [("rec", "nll_loss"), ("g_loss", "g_loss"), ("weight", "d_weight"),
                        ("loss", "loss")]:  # fmt: skip
        assert ae[key].item() == pytest.approx(ref[theirs].item(), rel=1e-5), key
    assert d["d_loss"].item() == pytest.approx(ref["d_loss"].item(), rel=1e-5)
    # the adversarial term counts: without it the loss is clearly another number
    plain = module.autoencoder_loss(x, out, vq, last.weight, adversarial=False)["loss"]
    assert abs(plain.item() - ref["loss"].item()) > 1e-2
