"""The faults a cluster throws (issue 24): a rank that dies or hangs, sweep jobs sharing a
cache, a full disk, stale or half-written inputs, and a SLURM preemption cycle."""

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from genlab.atomic import atomic_torch_save, atomic_write
from genlab.errors import GenlabError, GenlabWarning
from genlab.metrics.cache import load_reference_entry, reference_features, store_reference
from genlab.training import train
from tests.conftest import BIN, REPO, TINY, cli_env, compose_train, load_ckpt, train_checkpoint
from tests.test_reliability import _same_training_state, _signal_at, same_csv

ENOSPC = os.strerror(errno.ENOSPC)
FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist

# ---------------------------------------------------------------------------------------------
# Sweep jobs that share caches: two processes asking for the same entry at the same moment.

# Each child waits for the other at a barrier of files, then asks; whoever computes records it
# and takes 3 s, so the other asks while the entry is being computed.
CHILD = """
import logging, sys, time
from pathlib import Path
import torch
logging.basicConfig(level=logging.INFO, format="%(message)s")
tmp, me = Path(sys.argv[1]), sys.argv[2]
def slowly(compute):
    def run(*args, **kwargs):
        with open(tmp / "computed", "a") as f:
            f.write(me + "\\n")
        time.sleep(3)
        return compute(*args, **kwargs)
    return run
{setup}
(tmp / f"ready-{{me}}").touch()
while len(list(tmp.glob("ready-*"))) < 2:
    time.sleep(0.02)
torch.save({call}, tmp / f"result-{{me}}.pt")
"""

SHARED = {
    "reference": (
        "from genlab.metrics.cache import reference_features",
        "reference_features({'dataset': 'x', 'n_real': 3}, tmp / 'cache', "
        "slowly(lambda: torch.arange(12.0).reshape(3, 4)))",
    ),
    # the quick digit classifier of test_modes (its accuracy floor lowered: speed is the point)
    "modes": (
        "import genlab.metrics.modes as m\n"
        "m.MIN_ACCURACY = 0.0\n"
        "m.ModeClassifier.train = slowly(m.ModeClassifier.train)",
        "m.ModeClassifier(str(tmp / 'cache'), width=4, epochs=1, members=1, batch_size=512, "
        "augment=False).net.state_dict()",
    ),
    "fashion": (
        "import genlab.metrics.classifier as c\n"
        "c.FashionClassifier.train = slowly(c.FashionClassifier.train)",
        f"c.FashionClassifier(cache_dir=str(tmp / 'cache'), data_root='{FASHION}', "
        "train_limit=500, epochs=1, width=4, batch_size=64, min_accuracy=0.0).net.state_dict()",
    ),
}


@pytest.mark.parametrize("cache", list(SHARED))
def test_two_jobs_share_one_cache_entry_computed_once(cache, tmp_path):
    if cache == "fashion" and not FASHION.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    setup, call = SHARED[cache]
    code = CHILD.format(setup=setup, call=call)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), me], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me in ("a", "b")
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    computed = (tmp_path / "computed").read_text().split()
    assert len(computed) == 1, f"computed by {computed}"  # old code: by both
    said = ["another process is computing it" in err for _, err in outs]
    waited = [me for me, s in zip("ab", said, strict=True) if s]
    assert waited == [m for m in "ab" if m not in computed]  # the other said why it waited
    a, b = torch.load(tmp_path / "result-a.pt"), torch.load(tmp_path / "result-b.pt")
    if isinstance(a, dict):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert torch.equal(a, torch.arange(12.0, dtype=torch.float64).reshape(3, 4))
        assert torch.equal(a, b)
    # one entry; no temp file, no lock file left beside it
    assert len(list((tmp_path / "cache").iterdir())) == 1, list((tmp_path / "cache").iterdir())


# ---------------------------------------------------------------------------------------------
# Half-written caches


def test_a_half_written_reference_cache_is_recomputed_never_read(tmp_path):
    """Regression (01a73ec already warned): a truncated or garbage entry is named and recomputed,
    never read as (shorter or wrong) statistics."""
    key = {"dataset": "x", "n_real": 64}
    pool = torch.randn(64, 8, dtype=torch.float64)
    path = store_reference(key, tmp_path, pool)
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], whole[:-200], b"\0" * len(whole)):
        path.write_bytes(damaged)
        with pytest.warns(GenlabWarning, match=rf"^{path}: unreadable reference cache"):
            assert load_reference_entry(key, tmp_path) is None
        with pytest.warns(GenlabWarning, match="unreadable"):
            assert torch.equal(reference_features(key, tmp_path, lambda: pool), pool)
        assert path.read_bytes() == whole  # rewritten whole


def test_a_half_written_classifier_cache_is_named_and_retrained(tmp_path):
    """01a73ec retrained a damaged digit-classifier cache without a word."""
    import genlab.metrics.modes as m

    quick = {"width": 4, "epochs": 1, "members": 1, "batch_size": 512, "augment": False}
    floor, m.MIN_ACCURACY = m.MIN_ACCURACY, 0.0
    try:
        first = m.ModeClassifier(str(tmp_path), **quick)
        whole = first.path.read_bytes()
        first.path.write_bytes(whole[: len(whole) // 3])
        with pytest.warns(GenlabWarning, match=rf"^{first.path}: unreadable classifier cache"):
            again = m.ModeClassifier(str(tmp_path), **quick)
    finally:
        m.MIN_ACCURACY = floor
    assert torch.equal(again.reads, first.reads)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]


# ---------------------------------------------------------------------------------------------
# A full disk: ENOSPC injected into the door's own process, at the fsync of matching writes.

# os.fsync raises ENOSPC for a temp file of a target named like PATTERN from its N+1-th write
# on (atomic_write's temp files are ".NAME.XXXX.tmp"); the door then runs as a user runs it.
FULL_DISK = """
import errno, fnmatch, os, sys
pattern, allowed, door, *args = sys.argv[1:]
fsync, seen = os.fsync, []
def full(fd):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    target = name[1:].rsplit(".", 2)[0] if name.endswith(".tmp") else name
    if fnmatch.fnmatch(target, pattern):
        seen.append(target)
        if len(seen) > int(allowed):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return fsync(fd)
os.fsync = full
sys.argv = [door, *args]
from importlib import import_module
import_module(f"genlab.cli.{door.removeprefix('genlab-')}").main()
"""


def full_disk_door(tmp_path: Path, pattern: str, allowed: int, door: str, *args: str):
    """Run ``door`` with the disk full for the writes of files named ``pattern`` after
    ``allowed`` of them succeeded; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", FULL_DISK, pattern, str(allowed), door, *args],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess, door: str) -> str:
    """The door's one error line: exit 2, no traceback, the last line of stderr."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{door}: error: "), proc.stderr[-3000:]
    return line


# (files that fail, how many of them are written first, the file named, what is left there)
FULL = {
    # epoch 0's last.ckpt is written, epoch 1's is not: the run stops, epoch 0's is intact
    "last": ("last.ckpt", 1, "last.ckpt", "the previous file is intact"),
    # every epoch's best kept (save_top_k=-1): epoch 1's cannot be written, epoch 0's stays
    "best": ("best-*", 1, "best-epoch001.ckpt", "nothing was written there"),
}


@pytest.mark.parametrize("case", list(FULL))
def test_a_full_disk_at_a_checkpoint_stops_the_run_in_one_line(case, tmp_path):
    pattern, allowed, named, left = FULL[case]
    run = tmp_path / "run"
    proc = full_disk_door(
        tmp_path, pattern, allowed, "genlab-train", *TINY, "data=synthetic",
        "trainer.max_epochs=3", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "callbacks.model_checkpoint.save_top_k=-1", "callbacks.progress_bar=null",
        f"hydra.run.dir={run}",
    )  # fmt: skip
    line = one_error_line(proc, "genlab-train")
    path = run / "checkpoints" / named
    assert line == f"genlab-train: error: {path}: cannot write (No space left on device); {left}"
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["best-epoch000.ckpt", "last.ckpt"]  # no temp file, nothing half-written
    # the good files load: epoch 0's best, and last.ckpt of epoch 0 (or 1: it is written before
    # the best, as Lightning runs ModelCheckpoint after the other callbacks)
    epochs = [load_ckpt(run / "checkpoints" / name)["epoch"] for name in files]
    assert epochs == [0, 0 if case == "last" else 1]


def test_a_full_disk_at_metrics_json_stops_eval_in_one_line(tmp_path):
    ckpt = train_checkpoint(tmp_path, "vae", "model=vae", "data=synthetic")
    out = tmp_path / "eval"
    args = [f"ckpt_path={ckpt}", "metrics=none", f"hydra.run.dir={out}"]
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(written := {"metrics": {"val/elbo": 1.0}}))
    line = one_error_line(full_disk_door(tmp_path, "metrics.json", 0, "genlab-eval", *args),
                          "genlab-eval")  # fmt: skip
    left = "the previous file is intact"
    assert line == f"genlab-eval: error: {out / 'metrics.json'}: cannot write ({ENOSPC}); {left}"
    assert json.loads((out / "metrics.json").read_text()) == written
    assert not list(out.glob(".metrics.json.*"))


def test_a_full_disk_inside_torch_save_is_found_in_its_error(tmp_path):
    """torch.save reports its writer's OSError as a RuntimeError; the one line still says why."""
    path = tmp_path / "x.pt"
    atomic_torch_save({"w": torch.zeros(3)}, path)

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save(f) -> None:
        torch.save({"w": torch.ones(1 << 16)}, Full())

    with pytest.raises(GenlabError) as e:
        atomic_write(path, save)
    assert str(e.value) == f"{path}: cannot write ({ENOSPC}); the previous file is intact"
    assert torch.equal(load_ckpt(path)["w"], torch.zeros(3)) and len(list(tmp_path.iterdir())) == 1


# ---------------------------------------------------------------------------------------------
# A rank dies, or hangs, inside an epoch of a 2-rank gloo run.


class StopRank(pl.Callback):
    """Rank ``rank`` sends itself ``signal`` after training batch ``batch`` of epoch ``epoch``,
    its pid written to ``pidfile`` first (the test ends a stopped rank)."""

    def __init__(self, rank: int, epoch: int, batch: int, signal: str, pidfile: str) -> None:
        self.rank, self.epoch, self.batch, self.signal = rank, epoch, batch, signal
        self.pidfile = Path(pidfile)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        at = (trainer.global_rank, trainer.current_epoch, batch_idx)
        if at == (self.rank, self.epoch, self.batch):
            self.pidfile.write_text(str(os.getpid()))
            os.kill(os.getpid(), getattr(signal, self.signal))


DDP = [
    *TINY, "data=synthetic", "trainer=ddp_cpu", "seed=7", "trainer.limit_train_batches=6",
    "trainer.max_epochs=2", "callbacks.progress_bar=null",
]  # fmt: skip
TIMEOUT = 10  # s: trainer.ddp_timeout of the hung-rank run


def _ddp_run(tmp_path: Path, run: Path, *more: str) -> subprocess.Popen:
    """genlab-train with 2 gloo ranks in a session of its own; output to ``run``.out (a pipe
    would stay open as long as a stopped rank lives)."""
    env = {**cli_env(tmp_path), "PYTHONPATH": os.pathsep.join(_pythonpath())}
    with open(f"{run}.out", "a") as out:
        return subprocess.Popen(
            [str(BIN / "genlab-train"), *DDP, f"hydra.run.dir={run}", *more], cwd=tmp_path,
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _pythonpath() -> list[str]:
    """The ranks import StopRank from here; genlab comes from where this test's genlab does."""
    return [*filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)), str(REPO)]


def _stop_rank(pidfile: Path, sig: str) -> list[str]:
    return [f"+callbacks.stop.{k}={v}" for k, v in
            {"_target_": "tests.test_faults.StopRank", "rank": 1, "epoch": 1, "batch": 2,
             "signal": sig, "pidfile": pidfile}.items()]  # fmt: skip


def _finish(proc: subprocess.Popen, limit: float) -> str:
    """Wait up to ``limit`` s for a run; a hung one is killed (its whole session) and fails."""
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"still running after {limit:.0f} s (hung):\n{_output(proc)[-3000:]}")
    return _output(proc)


def _output(proc: subprocess.Popen) -> str:
    run = next(a for a in proc.args if a.startswith("hydra.run.dir=")).split("=", 1)[1]
    return Path(f"{run}.out").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "timeout"),
    [("SIGSTOP", TIMEOUT), ("SIGKILL", None)],
    ids=["hung-rank", "killed-rank"],
)
def test_a_rank_that_hangs_or_dies_fails_the_run_in_bounded_time(sig, timeout, tmp_path):
    """Rank 1 of 2 (gloo) stops answering inside epoch 1: SIGSTOP (as a hung node) or SIGKILL.

    A SIGKILLed peer resets gloo's connection, so the survivor fails at once (01a73ec did too);
    a stopped one is waited for until the process-group timeout, which ``trainer.ddp_timeout``
    sets (01a73ec had no key: 30 minutes). Either way last.ckpt is epoch 0's, whole, and
    ``auto_resume`` (after the hang) ends on the uninterrupted run's weights.
    """
    run, pidfile = tmp_path / "run", tmp_path / "rank1.pid"
    more = [] if timeout is None else [f"trainer.ddp_timeout={timeout}"]
    proc = _ddp_run(tmp_path, run, *more, *_stop_rank(pidfile, sig))
    try:
        out = _finish(proc, 240)
        stopped_at = pidfile.stat().st_mtime  # old code: never got there (no such key)
        took = time.time() - stopped_at
    finally:
        if pidfile.exists():  # a stopped rank outlives nothing: kill it if the run left it
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    print(f"{sig}: the survivor exited {took:.1f} s after rank 1 stopped (rc {proc.returncode})")
    assert proc.returncode not in (0, None), out[-3000:]
    # the survivor gave up within the timeout plus a margin for its teardown on 2 busy cores
    assert took < (timeout or 0) + 30, (took, out[-3000:])
    if timeout is not None:
        assert f"Timed out waiting {timeout * 1000}ms" in out, out[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    state = load_ckpt(last)
    assert (state["epoch"], state["global_step"]) == (0, 12)  # epoch 0's end: 6 batches, D + G
    if timeout is None:
        return
    full = tmp_path / "full"
    full_run = _ddp_run(tmp_path, full)
    assert full_run.wait(300) == 0, _output(full_run)[-3000:]
    resumed = _ddp_run(tmp_path, run, "auto_resume=true")
    out = _finish(resumed, 300)
    assert resumed.returncode == 0, out[-3000:]
    _same_training_state(load_ckpt(full / "checkpoints" / "last.ckpt"), load_ckpt(last))


# ---------------------------------------------------------------------------------------------
# A dataset changed under its prepared manifest


def test_arrays_changed_under_a_prepared_manifest_are_refused(tmp_path, monkeypatch):
    """Same shape, other bytes: the header and size check passes, the recorded sha256 does not.
    Each file is hashed once per version (the stamp record); an older manifest is taken with a
    warning. 01a73ec trained on the changed arrays."""
    import genlab.data.prepared as prepared
    from genlab.data.datamodule import ImageDataModule
    from genlab.preparation import prepare
    from tests.test_prepare import prepare_cfg

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = prepare(prepare_cfg("data=synthetic", "data.synthetic_size=64", f"out={tmp_path / 'p'}"))
    kwargs = dict(source="prepared", path=str(out), image_size=32, channels=1, batch_size=8)
    hashed = []
    file_sha256 = prepared.file_sha256
    monkeypatch.setattr(prepared, "file_sha256", lambda f: hashed.append(f.name) or file_sha256(f))
    ImageDataModule(**kwargs)
    assert sorted(hashed) == ["train.npy", "train_labels.npy"]  # its one split
    hashed.clear()
    ImageDataModule(**kwargs)  # a later start reads no array whole
    assert hashed == []
    train = out / "train.npy"
    before = train.stat()
    images = np.load(train)
    np.save(train, 255 - images)  # same shape and dtype, other pixels
    os.utime(train, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with its old mtime
    with pytest.raises(GenlabError) as e:
        ImageDataModule(**kwargs)
    assert str(e.value).startswith(f"{train}: its content is not what {out}/manifest.json records")
    assert "\n" not in str(e.value)
    np.save(train, images)  # put back: accepted again
    ImageDataModule(**kwargs)
    # a manifest of an older genlab-prepare (no hashes): taken, with one warning
    manifest = json.loads((out / "manifest.json").read_text())
    for info in manifest["splits"].values():
        del info["images_sha256"], info["labels_sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    np.save(train, 255 - images)
    with pytest.warns(GenlabWarning, match="records no content hashes"):
        ImageDataModule(**kwargs)


# ---------------------------------------------------------------------------------------------
# A SLURM preemption cycle, in-process with SLURM's variables and a stand-in scontrol

SLURM = {
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "genlab", "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost", "SLURM_RESTART_COUNT": "0",
}  # fmt: skip


def _slurm_data(data: str, tmp_path: Path) -> list[str]:
    if data == "synthetic":
        return ["data=synthetic"]
    from genlab.data.chunks import write_litdata
    from tests.test_streaming import CLASSES, STREAM, synthetic_hwc

    images, labels = synthetic_hwc(512)
    write_litdata(images, labels, str(tmp_path / "lit" / "train"), {"num_classes": CLASSES},
                  chunk_bytes="64KB")  # fmt: skip
    return ["data=streaming", f"data.path={tmp_path / 'lit'}", *STREAM,
            f"data.cache_dir={tmp_path / 'litdata'}"]  # fmt: skip


@pytest.mark.parametrize("data", ["synthetic", "streaming"])
def test_a_slurm_preemption_cycle_resumes_to_the_uninterrupted_weights(data, tmp_path, monkeypatch):
    """SIGUSR1 (``#SBATCH --signal=USR1@90``) after batch 2 of epoch 1: last.ckpt written there,
    exit 138 (README's signal table), ``scontrol requeue JOB`` run once; the requeued job
    (SLURM_RESTART_COUNT=1, the same command and directory) ends on the uninterrupted weights."""
    overrides = [*TINY, *_slurm_data(data, tmp_path), "seed=7", "trainer.limit_train_batches=6",
                 "trainer.max_epochs=3", "callbacks.progress_bar=null"]  # fmt: skip
    train(compose_train(overrides, tmp_path / "full"))
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train(compose_train([*overrides, *_signal_at(1, 2, "SIGUSR1")], run))
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert calls.read_text() == "requeue 4242\n"
    last = run / "checkpoints" / "last.ckpt"
    saved = load_ckpt(last)
    position = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]
    assert (saved["epoch"], position) == (1, 3)  # batches 0..2 of epoch 1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM starts the job again, as it was
    train(compose_train(overrides, run))
    full = load_ckpt(tmp_path / "full" / "checkpoints" / "last.ckpt")
    _same_training_state(full, load_ckpt(last))
    same_csv(run, tmp_path / "full")
    assert calls.read_text() == "requeue 4242\n"  # a run that ends is not requeued


@pytest.mark.parametrize(
    "args",
    [["trainer=ddp_cpu", "trainer.ddp_timeout=0"], ["trainer=ddp_cpu", "trainer.ddp_timeout=abc"],
     ["trainer=cpu", "trainer.ddp_timeout=60"]],
    ids=["zero", "text", "no-ddp"],
)  # fmt: skip
def test_a_bad_ddp_timeout_is_one_line_naming_the_key(args, tmp_path):
    from genlab.config import check_training

    with pytest.raises(GenlabError) as e:
        check_training(compose_train([*TINY, *args], tmp_path))
    assert str(e.value).startswith(f"{args[1]} must be seconds > 0 with a DDP strategy")
    check_training(compose_train([*TINY, "trainer=ddp_cpu", "trainer.ddp_timeout=60"], tmp_path))


def test_a_filesystem_without_locks_computes_without_one(tmp_path, monkeypatch, caplog):
    """Lustre without ``-o flock`` answers ENOSYS: the entry is computed and stored all the same."""
    import fcntl

    def no_locks(f, op):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    pool = torch.randn(4, 2, dtype=torch.float64)
    with caplog.at_level("WARNING", logger="genlab"):
        assert torch.equal(reference_features({"d": 1}, tmp_path, lambda: pool), pool)
    assert "no file locks here" in caplog.text
    assert torch.equal(reference_features({"d": 1}, tmp_path, lambda: pool * 0), pool)  # cached
    assert len(list(tmp_path.iterdir())) == 1
