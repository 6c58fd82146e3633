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


# --- genlab.console.track: word of every long wait, in a terminal and in a batch log ---

WAIT_END = r"{} \| {}/{} {} \| [\d,.]+ {}/s \| elapsed \d+:\d\d:\d\d \| done"


def assert_waited(text: str, what: str, n: int, unit: str = "images") -> None:
    """``text`` (a CLI's output) says ``what`` started and was done, its lines in order."""
    lines = [ln[ln.index(what) :] for ln in text.splitlines() if what in ln]
    assert lines and lines[0] == f"{what} | 0/{n:,} {unit} | started", text[-3000:]
    end = WAIT_END.format(re.escape(what), f"{n:,}", f"{n:,}", unit, unit)
    assert re.fullmatch(end, lines[-1]) and len(lines) == 2, lines


class Clock:
    """``time.monotonic`` that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def batch_log(monkeypatch) -> Clock:
    """stdout is no terminal (as under ``pytest -s`` in one), on a clock the test moves."""
    import time

    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    for name in console.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return clock


def test_a_batch_log_gets_a_line_at_the_start_every_interval_and_the_end(batch_log):
    lines: list[str] = []
    seen = []
    # 10 steps of 200 images (the last of 100), 100 s each; a line at most every 250 s
    for step in console.track(range(10), "x", 1900, per_step=200, every=250, say=lines.append):
        seen.append(step)
        batch_log.now += 100
    assert seen == list(range(10))
    assert lines == [
        "x | 0/1,900 images | started",
        "x | 600/1,900 images | 2.0 images/s | elapsed 0:05:00 | ETA 0:10:50",
        "x | 1,200/1,900 images | 2.0 images/s | elapsed 0:10:00 | ETA 0:05:50",
        "x | 1,800/1,900 images | 2.0 images/s | elapsed 0:15:00 | ETA 0:00:50",
        "x | 1,900/1,900 images | 1.9 images/s | elapsed 0:16:40 | done",
    ]


def test_lines_go_to_the_genlab_logger_and_interval_zero_writes_every_step(batch_log, caplog):
    caplog.set_level(logging.INFO, logger="genlab")
    for _ in console.track(range(3), "k-NN", 3, unit="rows", every=0):
        batch_log.now += 1
    lines = [r.getMessage() for r in caplog.records if r.name == "genlab"]
    assert [ln.split(" | ")[1] for ln in lines] == ["0/3 rows", "1/3 rows", "2/3 rows", "3/3 rows"]
    assert lines[-1].endswith("| done") and lines[1].endswith("| ETA 0:00:02")


def test_a_terminal_gets_a_bar_then_one_line(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    import rich.progress

    bars, draw = [], rich.progress.track

    def rich_track(steps, description, total, transient):
        bars.append((description, total))
        return draw(steps, description=description, total=total, transient=transient)

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(rich.progress, "track", rich_track)
    lines: list[str] = []
    assert list(console.track(range(3), "features", 3, say=lines.append)) == [0, 1, 2]
    assert bars == [("features", 3)]
    assert len(lines) == 1 and lines[0].startswith("features | 3/3 images |"), lines
    # bar=False (training, where Lightning's bar holds the terminal): lines instead
    lines.clear()
    list(console.track(range(3), "features", 3, bar=False, say=lines.append))
    assert lines[0] == "features | 0/3 images | started" and len(lines) == 2


def test_a_bar_nests_only_where_rich_nests_live_displays(monkeypatch):
    import rich

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    for console_state, fits in [
        ({"_live_stack": [object()]}, True),  # rich >= 14.1: nests
        ({"_live": object()}, False),  # rich 13 with a live display: a second one raises
        ({"_live": None}, True),
    ]:
        monkeypatch.setattr(rich, "get_console", lambda s=console_state: SimpleNamespace(**s))
        assert console.bar_fits() is fits, console_state


def test_only_rank_zero_speaks(batch_log, monkeypatch):
    lines: list[str] = []
    monkeypatch.setenv("RANK", "1")
    assert list(console.track(range(3), "x", 3, every=0, say=lines.append)) == [0, 1, 2]
    assert lines == []
    monkeypatch.setenv("RANK", "0")
    list(console.track(range(3), "x", 3, say=lines.append))
    assert len(lines) == 2


def test_a_slow_nearest_neighbour_search_reports_progress(batch_log, caplog, monkeypatch):
    import torch

    from genlab.metrics import knn

    caplog.set_level(logging.INFO, logger="genlab")
    x, ref = torch.randn(5, 4), torch.randn(7, 4)
    knn.nearest(x, ref, block=2)
    knn.knn_radii(ref, {1}, block=2)
    assert not caplog.records  # a search of seconds says nothing
    monkeypatch.setattr(knn, "SLOW_SEARCH", 5 * 7 * 4)
    knn.nearest(x, ref, block=2)
    assert_waited(caplog.text, "nearest of 7 features to each of 5", 5, "rows")
    monkeypatch.setattr(knn, "SLOW_SEARCH", 7 * 7 * 4)
    knn.knn_radii(ref, {1}, block=2)
    assert_waited(caplog.text, "k-NN radii of 7 features", 7, "rows")


def test_training_the_modes_classifier_reports_progress(batch_log, caplog, tmp_path):
    from genlab.errors import GenlabError
    from genlab.metrics.modes import ModeClassifier

    caplog.set_level(logging.INFO, logger="genlab")
    with pytest.raises(GenlabError, match="held-out accuracy"):  # too small to pass: quick
        ModeClassifier(str(tmp_path), width=4, epochs=2, members=1, batch_size=512, augment=False)
    what = f"digit classifier for val/modes (trained once, cached in {tmp_path})"
    assert_waited(caplog.text, what, 2, "epochs")


# the long waits through the console scripts, in a batch log (stdout a pipe)
SMALL_METRICS = [
    "metrics.inception_sha256=null",  # random weights (tests/inception.py)
    "metrics.num_samples=8", "metrics.num_real=8", "metrics.batch_size=8",
    "metrics.kid_subset_size=4", "metrics.is_splits=2",
]  # fmt: skip
REFERENCE = "reference features of train (cached for later runs)"


def cli(tmp_path: Path, script: str, *args: str) -> str:
    """Run a console script as a batch job would; its stdout and stderr, checked."""
    proc = subprocess.run(
        [str(BIN / script), *args],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, weights) -> tuple[str, Path]:
    """A tiny GAN trained with sample metrics: its output and last checkpoint."""
    run = tmp_path_factory.mktemp("scored")
    out = cli(
        run, "genlab-train", *TINY[:2], "metrics=fid", f"metrics.inception_weights={weights}",
        *SMALL_METRICS, "data.limit=64", "trainer.max_epochs=1", f"hydra.run.dir={run}",
    )  # fmt: skip
    return out, run / "checkpoints" / "last.ckpt"


def test_training_time_sample_metrics_report_their_passes(scored_run):
    out, _ = scored_run
    assert_waited(out, REFERENCE, 8)
    assert_waited(out, "sample features", 8)


def test_sample_nearest_reports_the_reference_pass(scored_run, weights, tmp_path):
    """The 337 s of silence of issue 28: the reference pass of genlab-sample nearest=true."""
    out = cli(
        tmp_path, "genlab-sample", f"ckpt_path={scored_run[1]}", "nearest=true",
        "nearest_count=4", "nrow=4", "num_samples=4", f"+metrics.inception_weights={weights}",
        "+metrics.inception_sha256=null", "+metrics.num_real=8",
        f"+metrics.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/out",
    )  # fmt: skip
    assert_waited(out, REFERENCE, 8)


def test_eval_reports_its_feature_passes(scored_run, weights, tmp_path):
    out = cli(
        tmp_path, "genlab-eval", f"ckpt_path={scored_run[1]}", "metrics=fid",
        f"metrics.inception_weights={weights}", *SMALL_METRICS, f"metrics.cache_dir={tmp_path}/c",
    )  # fmt: skip
    assert_waited(out, REFERENCE, 8)
    assert_waited(out, "sample features", 8)


def test_prepare_reports_decoding(tmp_path):
    from tests.test_prepare import image_folder

    root = image_folder(tmp_path / "images", n=6)
    out = cli(
        tmp_path, "genlab-prepare", "data=folder", f"data.root={root}", "data.image_size=8",
        f"out={tmp_path / 'p'}", "num_workers=0", "chunk=4",
    )  # fmt: skip
    assert_waited(out, "decoding train", 6)
