"""The GAN module's numerics: 16-mixed bookkeeping, clipping, AMP penalties, compile, val RNG."""

import logging

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from genlab import losses
from genlab.callbacks.speed import FastPath
from genlab.errors import GenlabError
from genlab.training import build
from tests.conftest import TINY, fit_built

MLP = ["model=gan_mlp", "data=synthetic", "data.image_size=16", "callbacks=none"]


def prepare(cfg, batches: int, val_batches: int = 0) -> dict:
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, batches
    cfg.trainer.limit_val_batches = val_batches
    return build(cfg)


def inf_on_call(monkeypatch, calls: set[int]) -> None:
    """Make ``losses.d_loss`` return inf on the chosen (0-based) calls, i.e. batches."""
    d_loss, seen = losses.d_loss, []

    def patched(*args, **kwargs):
        seen.append(1)
        loss = d_loss(*args, **kwargs)
        return loss * float("inf") if len(seen) - 1 in calls else loss

    monkeypatch.setattr(losses, "d_loss", patched)


@pytest.mark.parametrize(
    ("skipped", "steps", "updates"),
    [((), 6, 4), ((0,), 5, 3), ((2,), 5, 3)],
    ids=["no-skip", "skip-before-any-step", "skip-after-steps"],
)
def test_16_mixed_updates_the_scaler_once_per_iteration_that_stepped(
    skipped, steps, updates, cfg_tiny, monkeypatch
):
    """n_critic=2: batches 0 and 2 step D only. Skipping one of them steps no optimizer, and
    GradScaler.update then fails (scale never set at batch 0, no inf checks at batch 2)."""
    cfg = cfg_tiny(*MLP, "trainer.precision=16-mixed", "model.n_critic=2", "model.nonfinite=skip")
    objs = prepare(cfg, batches=4)
    scaler = objs["trainer"].precision_plugin.scaler
    counts = {"update": 0, "step": 0}
    for name in counts:
        method = getattr(scaler, name)

        def counted(*a, _name=name, _method=method, **k):
            counts[_name] += 1
            return _method(*a, **k)

        monkeypatch.setattr(scaler, name, counted)
    inf_on_call(monkeypatch, set(skipped))
    fit_built(objs)
    assert objs["model"].skipped_steps == len(skipped)
    assert counts == {"step": steps, "update": updates}


def test_trainer_gradient_clip_val_names_the_gan_key(cfg_tiny):
    cfg = cfg_tiny(*MLP, "++trainer.gradient_clip_val=1.0")
    with pytest.raises(GenlabError, match=r"model\.grad_clip"):
        fit_built(prepare(cfg, batches=1))


def test_trainer_gradient_clip_val_one_line_on_the_cli(run_cli, tmp_path):
    clip = "++trainer.gradient_clip_val=1.0"
    run = f"hydra.run.dir={tmp_path / 'run'}"
    proc = run_cli("genlab-train", *TINY, "model=gan_mlp", "data=synthetic", clip, run)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("genlab-train: error:") and "model.grad_clip" in last, last


class StepNorms(pl.Callback):
    """Record the gradient norm each optimizer steps with (only steps GradScaler lets through)."""

    def __init__(self) -> None:
        self.norms: dict[int, list[float]] = {0: [], 1: []}

    def on_train_start(self, trainer, pl_module):
        for i, opt in enumerate(trainer.optimizers):  # (opt_g, opt_d)
            opt.step = self.wrap(opt, opt.step, self.norms[i])

    @staticmethod
    def wrap(opt, step, norms: list[float]):
        def record() -> None:
            grads = [p.grad for group in opt.param_groups for p in group["params"]]
            norms.append(torch.cat([g.flatten() for g in grads if g is not None]).norm().item())

        def recorded(closure=None):
            if closure is None:  # GradScaler.step: the hooks (and clipping) ran before
                record()
                return step()

            def then_record():  # Lightning's closure runs the hooks (and clipping) first
                out = closure()
                record()
                return out

            return step(closure=then_record)

        return recorded


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_grad_clip_bounds_each_network_step(precision, cfg_tiny):
    """Every step of G and D sees gradients of norm grad_clip (raw norms are far larger);
    under 16-mixed clipping must come after unscaling, or the norm would be ~clip / 65536."""
    clip = 1e-3
    cfg = cfg_tiny(*MLP, f"trainer.precision={precision}", f"model.grad_clip={clip}")
    objs = prepare(cfg, batches=4)
    probe = StepNorms()
    objs["trainer"].callbacks.append(probe)
    fit_built(objs)
    for i, norms in probe.norms.items():
        assert norms and norms == pytest.approx([clip] * len(norms), rel=1e-3), (i, norms)


class TinyGradD(nn.Module):
    """D(x) = w2 * (w1 . x) with w1 = w2 = 1e-4: grad_x D = 1e-8, zero in fp16 (min ~6e-8)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 1, bias=False)
        self.b = nn.Linear(1, 1, bias=False)
        nn.init.constant_(self.a.weight, 1e-4)
        nn.init.constant_(self.b.weight, 1e-4)

    def forward(self, x, labels=None):
        return self.b(self.a(x.flatten(1))).squeeze(1)


def test_r1_under_fp16_autocast_scales_so_gradients_do_not_underflow():
    real = torch.randn(4, 1, 2, 2).requires_grad_(True)
    d = TinyGradD()
    exact = losses.r1_penalty(d(real), real).item()  # fp32: 4 * (1e-8)^2
    assert exact == pytest.approx(4e-16, rel=1e-3)
    with torch.autocast("cpu", dtype=torch.float16):
        unscaled = losses.r1_penalty(d(real), real).item()
        scaled = losses.r1_penalty(d(real), real, scale=65536.0).item()
    assert unscaled == 0.0  # what PyTorch's AMP recipe guards against
    assert scaled == pytest.approx(exact, rel=1e-2)


def test_gradient_penalty_scale_is_neutral_and_reaches_tiny_gradients():
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    d = TinyGradD()
    torch.manual_seed(0)
    exact = losses.gradient_penalty(d, real, fake).item()
    with torch.autocast("cpu", dtype=torch.float16):
        torch.manual_seed(0)
        scaled = losses.gradient_penalty(d, real, fake, scale=65536.0)
    # (||grad|| - 1)^2 with ||grad|| = 2e-8: the gradient survived and D's weights get a grad
    assert scaled.item() == pytest.approx(exact, rel=1e-6)
    scaled.backward()
    assert d.a.weight.grad.abs().sum() > 0


def test_16_mixed_penalties_get_the_loss_scale(cfg_tiny, monkeypatch):
    cfg = cfg_tiny(*MLP, "trainer.precision=16-mixed", "model.gp_weight=10", "model.r1_gamma=1")
    objs = prepare(cfg, batches=2)
    scaler = objs["trainer"].precision_plugin.scaler
    seen = []
    for name in ("gradient_penalty", "r1_penalty"):
        fn = getattr(losses, name)

        def record(*a, _fn=fn, _name=name, **k):
            seen.append((_name, k.get("scale"), scaler.get_scale()))
            return _fn(*a, **k)

        monkeypatch.setattr(losses, name, record)
    fit_built(objs)
    assert {n for n, _, _ in seen} == {"gradient_penalty", "r1_penalty"}
    assert all(scale == current for _, scale, current in seen), seen
    assert all(p.isfinite().all() for p in objs["model"].parameters())


def test_compile_leaves_a_penalised_discriminator_uncompiled(cfg_tiny, caplog):
    from genlab.callbacks.speed import compile_plan

    plain = build(cfg_tiny(*MLP))["model"]
    compiled, left = compile_plan(plain)
    assert compiled == plain.networks() and left == {}
    for key in ("model.gp_weight=10", "model.r1_gamma=1"):
        module = build(cfg_tiny(*MLP, key))["model"]
        compiled, left = compile_plan(module)
        assert [n is module.discriminator for n in compiled] == [False] * len(compiled)
        assert list(left.values()) == [module.discriminator]
        assert key.split("=")[0] in next(iter(left))
    with caplog.at_level(logging.WARNING, logger="genlab"):
        FastPath(compile=True).setup(None, module, "fit")
    assert "model.discriminator" in caplog.text and "model.r1_gamma" in caplog.text
    assert module.discriminator._compiled_call_impl is None
    assert module.generator._compiled_call_impl is not None


@pytest.mark.slow
def test_compile_trains_with_gradient_penalty_and_r1(cfg_tiny):
    cfg = cfg_tiny(*MLP, "speed.compile=true", "model.gp_weight=10", "model.r1_gamma=1")
    objs = fit_built(prepare(cfg, batches=2))
    assert all(p.isfinite().all() for p in objs["model"].parameters())


def test_val_swd_leaves_the_training_rng_alone(cfg_tiny, monkeypatch):
    """Sampling for val/swd runs under a forked RNG: validation cannot shift training noise."""
    cfg = cfg_tiny(*MLP)
    objs = prepare(cfg, batches=1, val_batches=1)
    module, equal = objs["model"], []
    end = module.on_validation_epoch_end

    def probe():
        before = torch.get_rng_state()
        end()
        equal.append(torch.equal(before, torch.get_rng_state()))

    monkeypatch.setattr(module, "on_validation_epoch_end", probe)
    fit_built(objs)
    assert "val/swd" in objs["trainer"].callback_metrics
    assert equal and all(equal)


def _labels_given_to_g(cfg_tiny, mode: str, batches: int = 2) -> tuple[dict, list, list]:
    """A conditional GAN fitted ``batches`` batches; the labels G got and the real batches'."""
    cfg = cfg_tiny("data=synthetic", "callbacks=none", "model=gan_mlp", "data.image_size=16",
                   "+model.generator.num_classes=4", "+model.discriminator.num_classes=4",
                   f"model.fake_labels={mode}")  # fmt: skip
    objs = prepare(cfg, batches=batches)
    module, given, real = objs["model"], [], []
    forward = module.generator.forward
    module.generator.forward = lambda z, y=None: given.append(y.clone()) or forward(z, y)
    step = module.training_step
    module.training_step = lambda batch, *a: real.append(batch[1].clone()) or step(batch, *a)
    fit_built(objs)
    return module, given, real


def test_fake_labels_batch_reuses_the_real_labels(cfg_tiny):
    _, given, real = _labels_given_to_g(cfg_tiny, "batch")
    assert len(given) == 4  # D and G step of 2 batches
    for n, y in enumerate(given):
        assert torch.equal(y, real[n // 2])


def test_fake_labels_uniform_draws_every_class_afresh(cfg_tiny):
    # StudioGAN's sample_y("totally_random"), mimicry and BigGAN-PyTorch: randint per batch
    _, given, real = _labels_given_to_g(cfg_tiny, "uniform", batches=4)
    drawn = torch.cat(given)
    assert not any(torch.equal(y, real[n // 2]) for n, y in enumerate(given))
    assert not torch.equal(given[0], given[1])  # the G step draws its own
    assert set(drawn.tolist()) == {0, 1, 2, 3}


def test_fake_labels_dataset_follow_the_training_labels(cfg_tiny):
    # StyleGAN2-ADA's and R3GAN's training_loop: training_set.get_label(randint(len(training_set)))
    module, given, _ = _labels_given_to_g(cfg_tiny, "dataset")
    train = module.trainer.datamodule.dataset("train")
    counts = torch.bincount(torch.stack([train[i][1] for i in range(len(train))]), minlength=4)
    assert torch.equal(module._label_weights, counts.float())
    module._label_weights = torch.tensor([0.0, 0.0, 5.0, 0.0])  # only class 2 among the images
    assert (module._fake_labels(torch.zeros(64, dtype=torch.long)) == 2).all()


def test_labels_of_reads_held_labels_through_the_wrappers():
    from genlab.data.datasets import Binarized, Mirrored, TensorImages, labels_of

    images = TensorImages(torch.zeros(5, 1, 8, 8, dtype=torch.uint8), torch.tensor([3, 1, 4, 1, 5]))
    subset = torch.utils.data.Subset(images, [4, 0, 2])
    assert labels_of(subset).tolist() == [5, 3, 4]
    assert labels_of(Mirrored(Binarized(subset))).tolist() == [5, 3, 4, 5, 3, 4]


def test_bad_fake_labels_name_the_key(cfg_tiny):
    with pytest.raises(GenlabError, match="model.fake_labels='random': use batch, uniform or"):
        build(cfg_tiny("data=synthetic", "model=gan_mlp", "model.fake_labels=random"))
