"""In-process training: one step moves every network; short runs learn; resume continues."""

import copy
import csv

import pytest
import torch

from genlab.training import build, train
from tests.conftest import fit_built, load_ckpt


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _all_changed(before: dict, module: torch.nn.Module) -> bool:
    return all(not torch.equal(before[k], v) for k, v in module.named_parameters())


def _one_batch(cfg) -> None:
    cfg.trainer.max_epochs = 1
    cfg.trainer.limit_train_batches = 1
    cfg.trainer.limit_val_batches = 0


@pytest.mark.parametrize(
    ("model", "nets"), [("gan", ("generator", "discriminator")), ("vae", ("encoder", "decoder"))]
)
def test_one_step_changes_every_network(model, nets, cfg_tiny):
    cfg = cfg_tiny(f"model={model}", "data=synthetic", "callbacks=none")
    _one_batch(cfg)
    objs = build(cfg)
    before = {name: _params(getattr(objs["model"], name)) for name in nets}
    fit_built(objs)
    for name in nets:
        assert _all_changed(before[name], getattr(objs["model"], name)), name


def test_gan_global_step_counts_both_optimizers(cfg_tiny):
    cfg = cfg_tiny("model=gan", "data=synthetic", "callbacks=none", "model.n_critic=2")
    cfg.trainer.limit_train_batches = 4
    cfg.trainer.max_epochs = 1
    objs = build(cfg)
    fit_built(objs)
    # 4 D steps + 2 G steps (n_critic=2)
    assert objs["trainer"].global_step == 6
    assert objs["trainer"].callback_metrics["train/g_steps"] == 2


def _validate(objs) -> dict[str, float]:
    out = objs["trainer"].validate(objs["model"], datamodule=objs["datamodule"], verbose=False)
    return out[0]


@pytest.mark.slow
def test_vae_short_run_improves_val_elbo(cfg_tiny):
    cfg = cfg_tiny("model=vae", "data=synthetic", "callbacks=none")
    cfg.data.limit = None
    cfg.trainer.max_epochs = 3
    cfg.trainer.limit_train_batches = 40
    cfg.trainer.limit_val_batches = 4
    objs = build(cfg)
    start = _validate(objs)["val/elbo"]
    fit_built(objs)
    end = _validate(objs)["val/elbo"]
    # ELBO in nats per image: a trained model beats its initialisation by a wide margin
    assert end > start + 50, (start, end)


@pytest.mark.slow
def test_gan_short_run_moves_samples_toward_data(cfg_tiny):
    """Sliced Wasserstein distance between val images and samples drops by at least a third."""
    cfg = cfg_tiny("model=gan", "data=synthetic", "callbacks=none")
    cfg.data.limit = None
    cfg.trainer.max_epochs = 3
    cfg.trainer.limit_train_batches = 50
    cfg.trainer.limit_val_batches = 4
    objs = build(cfg)
    start = _validate(objs)["val/swd"]
    fit_built(objs)
    end = _validate(objs)["val/swd"]
    assert end < 0.67 * start, (start, end)


def test_train_returns_optimized_metric_and_writes_checkpoints(cfg_tiny, tmp_path):
    cfg = cfg_tiny("model=vae", "data=synthetic")
    value = train(copy.deepcopy(cfg))
    assert isinstance(value, float)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    best = torch.load(
        next((tmp_path / "checkpoints").glob("best-*.ckpt")), map_location="cpu", weights_only=False
    )
    callback_state = next(v for k, v in best["callbacks"].items() if "ModelCheckpoint" in k)
    assert callback_state["monitor"] == "val/elbo"


def test_gan_schedules_step_with_generator_steps(cfg_tiny):
    linear = {"_target_": "torch.optim.lr_scheduler.LinearLR", "_partial_": True,
              "start_factor": 1.0, "end_factor": 0.0, "total_iters": 4}  # fmt: skip
    cfg = cfg_tiny("data=synthetic", "callbacks=none", "model.n_critic=2")
    cfg.model.scheduler_g = linear
    cfg.model.scheduler_d = linear
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, 4
    objs = build(cfg)
    fit_built(objs)
    # 4 batches with n_critic=2: 2 generator steps of 4 -> half the initial rate, for both
    for opt in objs["trainer"].optimizers:
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5)


def test_conditional_networks_must_agree(cfg_tiny):
    from genlab.errors import GenlabError

    cfg = cfg_tiny("data=synthetic", "+model.generator.num_classes=4")
    with pytest.raises(GenlabError, match="model.discriminator.num_classes=0"):
        build(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gan", "vae"])
def test_speed_options_train_and_keep_checkpoint_keys(model, cfg_tiny, tmp_path):
    cfg = cfg_tiny(f"model={model}", "data=synthetic", "speed.channels_last=true",
                   "speed.compile=true", "speed.matmul_precision=high")  # fmt: skip
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, 2
    objs = build(cfg)
    keys = set(objs["model"].state_dict())
    fit_built(objs)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == keys  # compiling in place keeps the keys
    conv = next(m for m in objs["model"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.set_float32_matmul_precision("highest")


def _csv_rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _last_step_of(rows: list[dict[str, str]], key: str) -> int:
    return max(int(r["step"]) for r in rows if r.get(key))


FINAL_METRICS = [
    "metrics=fid", "metrics.num_samples=16", "metrics.num_real=16", "metrics.batch_size=16",
    "metrics.every_n_epochs=5", "metrics.inception_sha256=null",  # random weights
]  # fmt: skip


def test_gan_stopped_by_max_steps_scores_and_checkpoints_the_final_model(
    cfg_tiny, weights, tmp_path
):
    """max_steps ends fit mid-epoch: the final model is still scored, logged, kept and returned."""
    # 4 batches (8 steps) an epoch: stops after batch 2 of epoch 1
    cfg = cfg_tiny(*FINAL_METRICS, f"metrics.inception_weights={weights}",
                   f"metrics.cache_dir={tmp_path}/cache", "data=synthetic",
                   "callbacks.progress_bar=null", "callbacks.image_grid=null",
                   "trainer.max_epochs=-1", "trainer.max_steps=14")  # fmt: skip
    value = train(copy.deepcopy(cfg))
    rows = _csv_rows(tmp_path)
    final = _last_step_of(rows, "train/d_loss")
    assert _last_step_of(rows, "val/fid") == final == 6  # batch index of step 14
    fid = [float(r["val/fid"]) for r in rows if r.get("val/fid")]
    assert value == pytest.approx(fid[-1])
    assert load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 14
    (best,) = (tmp_path / "checkpoints").glob("best-*.ckpt")
    assert len(fid) == 1 and load_ckpt(best)["global_step"] == 14  # FID is due at no epoch end
    state = next(v for k, v in load_ckpt(best)["callbacks"].items() if "ModelCheckpoint" in k)
    assert state["best_model_score"] == pytest.approx(min(fid))


def test_vae_stopped_by_max_steps_logs_val_elbo_at_the_final_step(cfg_tiny, tmp_path):
    # 4 batches an epoch: stops after batch 1 of epoch 1
    cfg = cfg_tiny(
        "model=vae",
        "data=synthetic",
        "callbacks=none",
        "trainer.max_epochs=-1",
        "trainer.max_steps=6",
    )
    value = train(copy.deepcopy(cfg))
    rows = _csv_rows(tmp_path)
    assert _last_step_of(rows, "val/elbo") == _last_step_of(rows, "train/loss") == 5
    elbo = [float(r["val/elbo"]) for r in rows if r.get("val/elbo")]
    assert len(elbo) == 2 and value == pytest.approx(elbo[-1])  # epoch 0's end and the final step


def test_gan_stopped_early_scores_the_final_model(cfg_tiny, weights, tmp_path):
    """Early stopping ends fit on an epoch where FID is not due: FID still runs at that step."""
    # min_delta 1e9: no epoch improves enough, so patience 0 stops at the 2nd validation (epoch 1)
    cfg = cfg_tiny(*FINAL_METRICS, f"metrics.inception_weights={weights}",
                   f"metrics.cache_dir={tmp_path}/cache", "data=synthetic",
                   "callbacks.progress_bar=null", "callbacks.image_grid=null",
                   "trainer.max_epochs=10", "optimized_metric=val/swd",
                   "+callbacks.early_stop._target_=pytorch_lightning.callbacks.EarlyStopping",
                   "+callbacks.early_stop.monitor=val/swd", "+callbacks.early_stop.patience=0",
                   "+callbacks.early_stop.min_delta=1e9")  # fmt: skip
    train(copy.deepcopy(cfg))
    rows = _csv_rows(tmp_path)
    final = _last_step_of(rows, "train/d_loss")
    assert _last_step_of(rows, "val/swd") == final
    assert [int(r["step"]) for r in rows if r.get("val/fid")] == [final]
    assert load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 16  # 2 epochs
