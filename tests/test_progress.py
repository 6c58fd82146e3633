"""Progress lines for batch logs (LogProgress) and the quieted library noise (genlab.console)."""

import io
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from genlab import console
from genlab.callbacks.progress import LogProgress, clock, done_fraction, eta
from tests.conftest import BIN, TINY, cli_env, compose_train, fit_built

# what a researcher tailing the log needs in every line, in order
FIELDS = (
    r"epoch \d+/\d+ batch \d+/\d+ \| step \d+ \| images [\d,]+ \| [\d,.]+ img/s"
    r" \| train/d_loss \S+ train/g_loss \S+ \| val/swd \S+ \| elapsed \d+:\d\d:\d\d"
    r" \| (ETA \d+:\d\d:\d\d|done)$"
)
NOISE = (
    "💡 Tip",
    "litlogger",
    "litmodels",
    "`weights_only` was not set",
    "LeafSpec",
    "anonymous setting",
    "DeprecationWarning",
    "FutureWarning",
)


def progress_lines(caplog) -> list[str]:
    """Messages LogProgress logged."""
    return [r.getMessage() for r in caplog.records if r.module == "progress"]


def test_eta_extrapolates_from_this_fit_only():
    assert eta(10.0, 0.0, 0.5) == pytest.approx(10.0)
    assert eta(10.0, 0.5, 0.75) == pytest.approx(10.0)  # resumed at half-way
    assert eta(10.0, 0.5, 0.5) is None
    assert clock(3725.4) == "1:02:05"


def test_done_fraction_takes_the_limit_that_ends_fit_first():
    trainer = SimpleNamespace(max_steps=100, global_step=50, max_epochs=10, num_training_batches=4)
    assert done_fraction(trainer, epoch=1, batches=2) == pytest.approx(0.5)  # steps: 50/100
    trainer.max_steps = -1
    assert done_fraction(trainer, epoch=1, batches=2) == pytest.approx(0.15)  # 1.5 of 10 epochs
    trainer.num_training_batches = float("inf")
    assert done_fraction(trainer, epoch=1, batches=2) == 0.0


def test_images_seen_survive_resume():
    saved = LogProgress()
    saved.images = 1234
    resumed = LogProgress()
    resumed.load_state_dict(saved.state_dict())
    assert resumed.images == 1234


def test_one_line_per_epoch_and_every_interval(tmp_path, caplog):
    from genlab.training import build

    def fit(*overrides: str) -> list[str]:
        caplog.clear()
        quick = ["callbacks.progress_bar=null", "callbacks.image_grid=null", *overrides]
        fit_built(build(compose_train([*TINY, *quick], tmp_path / str(len(overrides)))))
        return progress_lines(caplog)

    caplog.set_level(logging.INFO, logger="genlab")
    lines = fit()
    assert [ln.split(" batch")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"], lines
    for line in lines:
        assert re.fullmatch(FIELDS, line), line
    assert "images 64 " in lines[0] and "images 128 " in lines[1]  # 4 batches of 16 per epoch
    assert " ETA " in lines[0] and lines[1].endswith("| done")

    lines = fit("callbacks.progress_log.every_minutes=0")
    # every batch but each epoch's last, whose line comes after validation
    batches = [re.search(r"batch (\d)/4", ln).group(1) for ln in lines]
    assert batches == ["1", "2", "3", "4", "1", "2", "3", "4"], lines


def test_quiet_libraries_drops_lightning_tips_and_weights_only_line(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    records: list[str] = []
    collect = logging.Handler(logging.INFO)
    collect.emit = lambda record: records.append(record.getMessage())
    lightning = logging.getLogger("pytorch_lightning")
    lightning.addHandler(collect)

    def run() -> None:
        trainer = pl.Trainer(
            logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False
        )
        trainer.strategy.connect(pl.LightningModule())
        trainer.save_checkpoint(tmp_path / "x.ckpt")

    try:
        run()
        assert any("litlogger" in r for r in records), records  # the noise exists unquieted
        assert any("`weights_only` was not set" in r for r in records), records
        records.clear()
        console.quiet_libraries()
        console.quiet_libraries()  # idempotent
        run()
        assert not any("litlogger" in r or "weights_only" in r for r in records), records
        assert any("GPU available" in r for r in records), records  # the rest stays
    finally:
        lightning.removeHandler(collect)
        for name in console.TIP_LOGGERS:
            logging.getLogger(name).removeFilter(console.TIP_FILTER)
        logging.getLogger(console.CHECKPOINT_LOGGER).removeFilter(console.WEIGHTS_ONLY_FILTER)


def test_quiet_libraries_hides_lightnings_leafspec_deprecation_only():
    from pytorch_lightning.utilities.combined_loader import CombinedLoader

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        CombinedLoader([[1, 2]])
        assert any("LeafSpec" in str(w.message) for w in seen)  # the noise exists unquieted
        seen.clear()
        console.quiet_libraries()
        CombinedLoader([[1, 2]])
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("model.n_critic=0 is not a step count", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    # Lightning's is gone; the same deprecation outside Lightning and genlab's own warning stay
    assert messages == [
        "`isinstance(treespec, LeafSpec)` is deprecated",
        "model.n_critic=0 is not a step count",
    ]


def test_console_handler_writes_to_the_stdout_of_the_moment(monkeypatch):
    handler = console.ConsoleHandler(sys.stdout)
    proxy = io.StringIO()  # what a terminal's rich progress bar puts in place of sys.stdout
    monkeypatch.setattr(sys, "stdout", proxy)
    handler.emit(logging.makeLogRecord({"msg": "epoch 1/2", "levelno": logging.INFO}))
    assert proxy.getvalue() == "epoch 1/2\n"


# Passes once the training entry point calls genlab.console.quiet_libraries() (see the
# console module) and the W&B logger stops passing `anonymous` to wandb.init.
@pytest.mark.slow
def test_batch_job_log_shows_progress_and_no_noise(tmp_path: Path):
    """A default run as a SLURM job runs it: stdout and stderr to one file, no terminal."""
    log_file = tmp_path / "job.out"
    with open(log_file, "w") as f:
        proc = subprocess.run(
            [
                str(BIN / "genlab-train"),
                "debug=tiny",
                "logger=default",
                "metrics=none",
                f"hydra.run.dir={tmp_path / 'run'}",
            ],  # fmt: skip
            cwd=tmp_path,
            env=cli_env(tmp_path),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    out = log_file.read_text()
    assert proc.returncode == 0, out[-3000:]
    for where in (out, (tmp_path / "run" / "train.log").read_text()):
        lines = [ln.split("] ", 1)[-1] for ln in where.splitlines() if "[genlab][INFO] epoch" in ln]
        assert [ln.split(" batch")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"], where
        assert all(re.fullmatch(FIELDS, ln) for ln in lines), lines
    assert not [ln for ln in out.splitlines() if any(n in ln for n in NOISE)], out


@pytest.mark.slow
def test_warnings_reach_the_user_as_one_genlab_line(tmp_path: Path, weights: Path):
    """genlab's own warning in one line of its own, no library file path; no Lightning advice.

    KID's subset size is said once, when the settings are read, not again when KID is computed.
    """
    proc = subprocess.run(
        [
            str(BIN / "genlab-train"), *TINY, "model=vqgan", "data=synthetic", "metrics=default",
            f"metrics.inception_weights={weights}", "metrics.inception_sha256=null",
            "metrics.num_samples=16", "metrics.num_real=16", "metrics.batch_size=16",
            f"metrics.cache_dir={tmp_path}/cache",
            "metrics.kid_subset_size=1000", "model.encoder.hidden=32", "model.encoder.res_hidden=8",
            "model.quantizer.num_codes=16", "model.discriminator.base_channels=8",
            "trainer.max_epochs=1", "trainer.limit_train_batches=1", f"hydra.run.dir={tmp_path}/r",
        ],  # fmt: skip
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "val/kid" in (tmp_path / "r" / "csv" / "metrics.csv").read_text()  # KID ran
    kid = [ln for ln in out.splitlines() if "kid_subset_size" in ln]
    assert len(kid) == 1 and "[genlab][WARNING]" in kid[0], out[-3000:]
    assert ".py:" not in kid[0] and "UserWarning" not in kid[0], kid
    assert "is an instance of `nn.Module`" not in out, out[-3000:]
