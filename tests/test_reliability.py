"""Faults and scale: exact resume after SIGKILL, atomic checkpoints, SIGTERM, NaN losses,
DDP for GAN variants, bf16 on CPU, and bad input."""

import csv
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from genlab import losses
from genlab.callbacks.checkpointing import AtomicCheckpointIO
from genlab.errors import GenlabError
from genlab.training import build, train
from tests.conftest import (
    BIN,
    REPO,
    TINY,
    cli_env,
    compose_train,
    fit_built,
    load_ckpt,
    ok,
)

# deterministic CPU runs long enough to be killed inside an epoch
EXACT = [
    *TINY, "data=synthetic", "data.limit=null", "trainer.deterministic=true", "seed=7",
    "trainer.limit_train_batches=40", "trainer.max_epochs=3",
]  # fmt: skip
VARIANTS = {
    "gan": ["model=gan", "model.ema_decay=0.9", "model.n_critic=2"],
    "vae": ["model=vae", "model.nll_k=2"],
}


def _same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for pa, pb in zip(oa["state"].values(), ob["state"].values(), strict=True):
            for name in pa:
                assert torch.equal(torch.as_tensor(pa[name]), torch.as_tensor(pb[name])), name


def same_csv(run: Path, full: Path) -> None:
    """One CSV history: the uninterrupted run's rows (step, epoch), none repeated or missing,
    with the same values. Wall-clock columns aside, and values only one run has: Lightning
    repeats a step-logged value in later rows until it is logged again (G's loss under
    n_critic=2), which a resumed process has not logged yet."""

    def rows(d: Path) -> list[dict]:
        with open(d / "csv" / "metrics.csv") as f:
            return [{k: v for k, v in r.items() if v and k != "trainer/time"}
                    for r in csv.DictReader(f)]  # fmt: skip

    a, b = rows(run), rows(full)
    assert [(r["step"], r.get("epoch")) for r in a] == [(r["step"], r.get("epoch")) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert all(ra[k] == rb[k] for k in ra.keys() & rb.keys()), (ra, rb)


class SignalAt(pl.Callback):
    """Send this process ``signal`` after training batch ``batch`` of epoch ``epoch``.

    A resumed run continues after that batch, so it is never sent twice.
    """

    def __init__(self, epoch: int, batch: int, signal: str = "SIGTERM") -> None:
        self.epoch, self.batch, self.signal = epoch, batch, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), getattr(signal, self.signal))


def _signal_at(epoch: int, batch: int, sig: str = "SIGTERM") -> list[str]:
    return [f"+callbacks.signal_at.{k}={v}" for k, v in
            {"_target_": "tests.test_reliability.SignalAt", "epoch": epoch, "batch": batch,
             "signal": sig}.items()]  # fmt: skip


# (extra overrides, batch index of epoch 1 killed after, epoch and batch last.ckpt holds)
KILLS = {
    # validation every 10 batches: last.ckpt written mid-epoch after it (epoch 1, batch 9)
    "gan-val-check-interval": (["trainer.val_check_interval=10"], 14, (1, 9)),
    # no validation at all: last.ckpt written at the end of epoch 0 without one
    "vae-no-validation": (["trainer.limit_val_batches=0"], 14, (0, 39)),
}


def sigkill_resume_cycle(args: list[str], tmp_path: Path, kill_batch: int, saved: tuple) -> None:
    """``genlab-train ARGS`` uninterrupted (tmp_path/full), then SIGKILLed after batch
    ``kill_batch`` of epoch 1 (tmp_path/killed), whose last.ckpt must hold (epoch, batch)
    ``saved``, then resumed from it: its checkpoint and CSV rows must be the uninterrupted run's."""
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO)}  # the run imports SignalAt
    full, killed = tmp_path / "full", tmp_path / "killed"

    def run(*more: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "genlab-train"), *args, *more], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    ok(run(f"hydra.run.dir={full}"))
    proc = run(f"hydra.run.dir={killed}", *_signal_at(1, kill_batch, "SIGKILL"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    position = load_ckpt(last)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert (load_ckpt(last)["epoch"], position["completed"] - 1) == saved
    ok(run(f"hydra.run.dir={killed}", f"ckpt_path={last}"))
    _same_training_state(load_ckpt(full / "checkpoints" / "last.ckpt"), load_ckpt(last))
    # the rows the killed run wrote after its checkpoint are not repeated, none is missing
    same_csv(killed, full)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILLS))
def test_sigkill_mid_epoch_then_resume_is_bit_exact(case, tmp_path):
    """SIGKILL inside epoch 1; resuming from the last.ckpt it left repeats the full run exactly."""
    extra, kill_batch, saved = KILLS[case]
    args = [*EXACT, *VARIANTS[case.split("-")[0]], *extra]
    sigkill_resume_cycle(args, tmp_path, kill_batch, saved)


def sigterm_resume_cycle(overrides: list[str], tmp_path: Path) -> dict:
    """Train ``overrides`` in-process uninterrupted (tmp_path/full), then again with SIGTERM after
    batch 2 of epoch 1 (tmp_path/run: exit 143, last.ckpt saved inside epoch 1), then
    ``auto_resume=true``: the resumed last.ckpt and CSV rows must be the uninterrupted run's.
    Returns the checkpoint the SIGTERM left, for the caller's own checks."""
    train(compose_train(overrides, tmp_path / "full"))
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train(compose_train([*overrides, *_signal_at(1, 2)], run))
    assert stopped.value.code == 143
    last = run / "checkpoints" / "last.ckpt"
    saved = load_ckpt(last)
    assert saved["epoch"] == 1
    train(compose_train([*overrides, "auto_resume=true"], run))
    _same_training_state(load_ckpt(tmp_path / "full" / "checkpoints" / "last.ckpt"),
                         load_ckpt(last))  # fmt: skip
    same_csv(run, tmp_path / "full")
    return saved


# in-process runs: 6 batches an epoch, 3 epochs, SIGTERM after batch 2 of epoch 1
RESUMES = {
    "gan-ncritic2-ema": VARIANTS["gan"],
    "gan-no-validation-in-epoch": ["model=gan", "trainer.check_val_every_n_epoch=2"],
    # post-hoc EMA's profiles travel in last.ckpt; the snapshots after the resume are the same
    "gan-posthoc-ema": [*VARIANTS["gan"], "callbacks.posthoc_ema.every_n_images=40"],
    # the SIGTERM save and auto_resume both follow the one owner of last.ckpt
    "vae-moved-last": [*VARIANTS["vae"], "callbacks.last_checkpoint.dirpath=${paths.output_dir}/x"],
}


@pytest.mark.parametrize("case", list(RESUMES))
def test_sigterm_mid_epoch_then_auto_resume_is_bit_exact(case, tmp_path, caplog):
    overrides = [*TINY, "data=synthetic", "seed=7", "trainer.limit_train_batches=6",
                 "trainer.max_epochs=3", "callbacks.progress_bar=null", *RESUMES[case]]  # fmt: skip
    train(compose_train(overrides, tmp_path / "full"))
    run = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="genlab")
    with pytest.raises(SystemExit) as stopped:
        train(compose_train([*overrides, *_signal_at(1, 2)], run))
    assert stopped.value.code == 143
    last = run / ("x" if "moved" in case else "checkpoints") / "last.ckpt"
    if "moved" in case:
        assert not (run / "checkpoints" / "last.ckpt").exists()
    assert load_ckpt(last)["epoch"] == 1  # saved inside epoch 1
    # the log says how to continue: the command's key and the file, or auto_resume
    assert f"resume with ckpt_path={last}" in caplog.text
    train(compose_train([*overrides, "auto_resume=true"], run))
    full = tmp_path / "full" / last.relative_to(run)
    _same_training_state(load_ckpt(full), load_ckpt(last))
    same_csv(run, tmp_path / "full")
    if "posthoc" in case:
        _same_posthoc_ema(tmp_path / "full", run, load_ckpt(full), load_ckpt(last))


def _same_posthoc_ema(full: Path, resumed: Path, a: dict, b: dict) -> None:
    from safetensors.torch import load_file

    sa, sb = a["callbacks"]["PostHocEMA"], b["callbacks"]["PostHocEMA"]
    assert (sa["images"], sa["index"]) == (sb["images"], sb["index"]) == (288, 7)
    for pa, pb in zip(sa["averages"], sb["averages"], strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    names = sorted(p.name for p in (full / "ema_snapshots").iterdir())
    assert names == sorted(p.name for p in (resumed / "ema_snapshots").iterdir())
    assert len(names) == 7  # 18 batches of 16: one past each 40 images, the last at the end
    for name in names:
        ta, tb = (load_file(d / "ema_snapshots" / name) for d in (full, resumed))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name


def test_checkpoint_write_interrupted_keeps_the_old_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, str(path))

    def dies_halfway(obj, f, *a, **kw):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted during the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, str(path))
    monkeypatch.undo()
    assert load_ckpt(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_nonzero(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "data=synthetic", "data.limit=null", "trainer.limit_train_batches=2000",
            "trainer.max_epochs=1", "trainer.limit_val_batches=1",
            f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.Popen([str(BIN / "genlab-train"), *args], cwd=tmp_path,
                            env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    metrics = run / "csv" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or metrics.stat().st_size < 200):
        time.sleep(0.1)  # the CSV logger flushes after a few logged steps: training is on
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert 0 < ckpt["global_step"] < 2 * 2000  # saved mid-epoch, where it was stopped


def test_nonfinite_loss_stops_with_step_and_keeps_checkpoint(cfg_tiny, tmp_path, monkeypatch):
    cfg = cfg_tiny("data=synthetic", "callbacks=default", "callbacks.progress_bar=null")
    cfg.trainer.max_epochs = 2
    objs = build(cfg)
    fit_built(objs)
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    d_loss = losses.d_loss
    monkeypatch.setattr(losses, "d_loss", lambda *a: d_loss(*a) * float("nan"))
    cfg.trainer.max_epochs = 3
    objs = build(cfg)
    with pytest.raises(GenlabError, match=r"non-finite train/d_loss=nan at step 16"):
        objs["trainer"].fit(objs["model"], datamodule=objs["datamodule"], ckpt_path=str(last))
    assert last.read_bytes() == before


def test_nonfinite_skip_skips_the_step(cfg_tiny):
    cfg = cfg_tiny(
        "data=synthetic", "callbacks=none", "model.gp_weight=inf", "model.nonfinite=skip"
    )
    objs = build(cfg)
    d_before = {k: v.clone() for k, v in objs["model"].discriminator.state_dict().items()}
    fit_built(objs)
    # every D step was skipped (gp * inf), every G step taken
    for k, v in objs["model"].discriminator.state_dict().items():
        assert torch.equal(v, d_before[k]), k
    assert objs["model"].skipped_steps == 8
    assert objs["trainer"].global_step == 8


def test_nonfinite_cli_stops_in_one_line(run_cli, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("genlab-train", *TINY, "model.gp_weight=inf", f"hydra.run.dir={run}")
    assert proc.returncode == 2
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("genlab-train: error: non-finite train/d_loss=inf at step 0")


@pytest.mark.parametrize("model", ["gan", "vae", "ladder_vae", "vqvae", "vqgan"])
def test_an_unknown_nonfinite_policy_names_the_choices(cfg_tiny, model):
    # one sentence for every family: the GAN and VAE checks once wrote their own
    cfg = cfg_tiny(f"model={model}", "model.nonfinite=ignore")
    with pytest.raises(GenlabError, match=r"^model.nonfinite='ignore': use stop, skip or off$"):
        build(cfg)


class SaveRankWeights(pl.Callback):
    """Each DDP rank writes its final weights to ``dirpath/rank{R}.pt``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), f"{self.dirpath}/rank{trainer.global_rank}.pt")


DDP_VARIANTS = {
    "wgan_gp_ncritic_ema": [
        "model.loss=wgan",
        "model.gp_weight=10",
        "model.n_critic=2",
        "model.ema_decay=0.9",
        "callbacks.posthoc_ema.every_n_images=32",
    ],  # fmt: skip
    "hinge_r1_diffaugment_sn": [
        "model.loss=hinge",
        "model.r1_gamma=1",
        "model.diffaugment='color,translation,cutout'",
        "model.discriminator.spectral_norm=true",
    ],  # fmt: skip
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(DDP_VARIANTS))
def test_ddp_gan_variants_keep_ranks_identical(variant, tmp_path):
    """Two gloo ranks, the CLI as users run it; each rank dumps its weights at the end."""
    run = tmp_path / "run"
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO)}  # the ranks import SaveRankWeights
    proc = subprocess.run(
        [str(BIN / "genlab-train"), *TINY, "data=synthetic", "trainer=ddp_cpu",
         "trainer.max_epochs=1", *DDP_VARIANTS[variant], f"hydra.run.dir={run}",
         "+callbacks.rank_weights._target_=tests.test_reliability.SaveRankWeights",
         f"+callbacks.rank_weights.dirpath={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    ok(proc)
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:
        if "running_" in k or "num_batches_tracked" in k:
            continue  # BatchNorm statistics are per-rank (not synchronised) by design
        assert torch.equal(r0[k], r1[k]), k
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best-epoch000.ckpt",
        "last.ckpt",
    ]
    if "posthoc" in " ".join(DDP_VARIANTS[variant]):
        _rank_zero_snapshots(run)


def _rank_zero_snapshots(run: Path) -> None:
    """Images count over both ranks; the files are rank 0's profiles (BatchNorm statistics,
    per rank, tell the ranks' profiles apart)."""
    from safetensors.torch import load_file

    from genlab.models.posthoc_ema import read_snapshots

    snapshots = read_snapshots(run / "ema_snapshots")
    assert [s.images for s in snapshots] == [32, 64, 96, 128]  # 4 batches of 16 on 2 ranks
    state = load_ckpt(run / "checkpoints" / "last.ckpt")["callbacks"]["PostHocEMA"]
    stored = load_file(snapshots[-1].path)
    for average, sigma in zip(state["averages"], state["sigma_rels"], strict=True):
        for k, v in average.items():
            assert torch.equal(stored[f"{sigma:.6f}/{k}"], v), k


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [["model.loss=ns"], ["model.loss=minimax"], ["model.loss=hinge", "model.r1_gamma=1"],
     ["model.loss=wgan", "model.gp_weight=10"], ["model.loss=ls"], ["model=vae"],
     ["model=vae", "model.likelihood=gaussian"]],
    ids=["ns", "minimax", "hinge-r1", "wgan-gp", "ls", "vae", "vae-gaussian"],
)  # fmt: skip
def test_bf16_mixed_on_cpu_stays_finite(extra, cfg_tiny):
    cfg = cfg_tiny("data=synthetic", "callbacks=none", "trainer.precision=bf16-mixed", *extra)
    cfg.trainer.max_epochs = 1
    objs = build(cfg)
    # nonfinite=stop (the default) would raise on the first NaN/inf loss
    fit_built(objs)
    assert all(torch.isfinite(p).all() for p in objs["model"].parameters())


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["data.batch_size=abc"], "data"),
        (["model.optimizer_g.lr=-1"], "model.optimizer_g"),
        (["data.batch_size=0"], "data.batch_size"),
        (["model.generator.channels=3"], "data.channels"),
        (["hydra.run.dir=/etc/hostname/run"], "/etc/hostname/run"),
    ],
    ids=["wrong-type", "negative-lr", "batch-0", "channels-mismatch", "unwritable-output"],
)
def test_more_bad_input_one_line(args, named, run_cli, tmp_path):
    proc = run_cli("genlab-train", *TINY, f"hydra.run.dir={tmp_path / 'run'}", *args)
    assert proc.returncode == 2
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("genlab-train: error:") and named in last, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_of_another_model_or_corrupt_is_refused(run_cli, cfg_tiny, tmp_path):
    cfg = cfg_tiny("data=synthetic", "callbacks=default", "callbacks.progress_bar=null")
    cfg.trainer.max_epochs = 1
    objs = build(cfg)
    fit_built(objs)
    gan_ckpt = tmp_path / "checkpoints" / "last.ckpt"
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(gan_ckpt.read_bytes()[:1000])
    saved_by = "saved by genlab.models.gan.GAN"
    for ckpt, expected in [(gan_ckpt, saved_by), (corrupt, "not a readable")]:
        proc = run_cli("genlab-train", *TINY, "model=vae", "data=synthetic", f"ckpt_path={ckpt}",
                       f"hydra.run.dir={tmp_path / 'r2'}")  # fmt: skip
        assert proc.returncode == 2
        assert expected in proc.stderr.splitlines()[-1]
    assert gan_ckpt.stat().st_size > 1000  # the good checkpoint is untouched


@pytest.mark.slow
def test_auto_resume_continues_a_requeued_run_in_its_directory(run_cli, tmp_path):
    """What a requeued SLURM job does: start again in the same directory and carry on."""
    run = tmp_path / "run"
    ok(run_cli("genlab-train", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run}"))
    first = load_ckpt(run / "checkpoints" / "last.ckpt")["global_step"]
    proc = run_cli(
        "genlab-train", *TINY, "trainer.max_epochs=2", "auto_resume=true", f"hydra.run.dir={run}"
    )
    ok(proc)
    assert "auto_resume: continuing from" in proc.stdout + proc.stderr
    assert load_ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 2 * first


def test_nonfinite_off_does_not_check(cfg_tiny):
    cfg = cfg_tiny("data=synthetic", "callbacks=none", "model.gp_weight=inf", "model.nonfinite=off")
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 1, 2
    objs = build(cfg)
    fit_built(objs)  # no error raised
    d = torch.cat([p.flatten() for p in objs["model"].discriminator.parameters()])
    assert not torch.isfinite(d).all()  # the inf penalty went through, unchecked
    assert objs["model"].skipped_steps == 0
