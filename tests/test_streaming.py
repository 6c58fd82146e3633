"""data=streaming: LitData chunks written by genlab-prepare format=litdata, read from a directory
and from a real S3-compatible server on 127.0.0.1 (moto's, started by tests.s3).

LitData's own behaviour these tests lean on, read in its source (litdata 0.2.76): the
StreamingDataset shards chunks by rank and worker and shuffles by (seed, epoch); the
StreamingDataLoader's ``state_dict`` counts the samples handed out, and Lightning's fit loop saves
and restores it (``_Stateful`` loaders in ``CombinedLoader._state_dicts``).
"""

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from genlab.callbacks.sample_features import data_key
from genlab.data.chunks import STREAM_MANIFEST, write_litdata
from genlab.data.sources import synthetic_images
from genlab.data.streaming import StreamingDataModule
from genlab.errors import GenlabError
from genlab.redact import redact
from tests.conftest import BIN, REPO, TINY, cli_env, compose_train, load_ckpt, ok
from tests.s3 import s3_server  # noqa: F401  (the module's loopback S3 server fixture)
from tests.test_multinode import METRICS, run_two_nodes
from tests.test_reliability import (
    _same_training_state,
    _signal_at,
    same_csv,
    sigterm_resume_cycle,
)

# data=synthetic's images (2048 blobs, 4 classes, 32 px grey), written once to the server
SIZE, CHANNELS, CLASSES = 32, 1, 4
STREAM = [f"data.image_size={SIZE}", f"data.channels={CHANNELS}", "data.num_workers=0"]


def synthetic_hwc(n: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    images, labels = synthetic_images(n, CLASSES, SIZE, CHANNELS, 0)
    return images.permute(0, 2, 3, 1).numpy(), labels.numpy()  # (N, H, W, C), (N,)


@pytest.fixture(scope="module")
def s3_data(s3_server) -> str:  # noqa: F811
    """s3:// URL of the synthetic set's train split, written once for the module."""
    images, labels = synthetic_hwc()
    url = f"s3://{s3_server.bucket}/synthetic/train"
    # small chunks: several per rank, so sharding and chunk checks have something to do
    write_litdata(images, labels, url, {"source": "synthetic", "num_classes": CLASSES},
                  s3_server.storage_options, num_workers=2, chunk_bytes="64KB")  # fmt: skip
    return url


def streaming(s3_server, url: str, tmp: Path) -> list[str]:  # noqa: F811
    """The overrides that train from ``url`` on the loopback server, chunks cached in ``tmp``."""
    return ["data=streaming", f"data.path={url}", *STREAM, f"data.cache_dir={tmp}/litdata",
            *s3_server.overrides("data.storage_options")]  # fmt: skip


def test_items_round_trip_from_a_directory_and_s3(s3_server, s3_data, tmp_path):  # noqa: F811
    """Every item comes back as written, in genlab's contract, from a directory and from S3."""
    images, labels = synthetic_hwc()
    local = tmp_path / "local" / "train"
    write_litdata(images[:300], labels[:300], str(local), {"num_classes": CLASSES},
                  chunk_bytes="64KB")  # fmt: skip
    manifest = json.loads((local / STREAM_MANIFEST).read_text())
    assert (manifest["count"], manifest["image_size"], manifest["channels"]) == (300, 32, 1)
    assert len(manifest["chunks"]) > 1 and manifest["num_classes"] == CLASSES
    test_images, test_labels = synthetic_hwc(20)
    write_litdata(test_images[:, ::-1], test_labels, str(local.parent / "test"), {})
    keys = []
    for path, n, opts in [(str(local.parent), 300, {}),  # a parent with train/ reads train/
                          (s3_data, 2048, s3_server.storage_options)]:  # fmt: skip
        dm = StreamingDataModule(path=path, storage_options=opts, image_size=SIZE,
                                 channels=CHANNELS, cache_dir=str(tmp_path / "cache"),
                                 val_fraction=0.1, batch_size=16)  # fmt: skip
        assert dm.num_classes == CLASSES
        keys.append(data_key(dm))
        val, train_ = dm.dataset("val"), dm.dataset("train")
        assert (len(val), len(train_)) == (round(0.1 * n), n - round(0.1 * n))
        # the stored order is a seeded permutation: item i is source image order[i]
        order = np.random.default_rng(0).permutation(n)
        for split, offset in ((val, 0), (train_, len(val))):
            for i in (0, len(split) - 1):
                x, y = split[i]
                assert x.dtype == torch.float32 and x.shape == (CHANNELS, SIZE, SIZE)
                assert y.dtype == torch.long and y.ndim == 0
                want = torch.from_numpy(images[order[offset + i]]).permute(2, 0, 1)
                assert torch.equal(x.add(1).mul(127.5).round().to(torch.uint8), want)
                assert y.item() == labels[order[offset + i]]
    # a test split beside train (genlab-prepare writes one for torchvision sets) is the test set
    dm = StreamingDataModule(path=str(local), image_size=SIZE, channels=CHANNELS)
    assert dm.has_test_split and len(dm.dataset("test")) == 20
    x, _ = dm.dataset("test")[0]
    order = np.random.default_rng(0).permutation(20)
    assert np.array_equal(x.add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy(),
                          test_images[order[0], ::-1])  # fmt: skip
    # the reference-statistics cache key names the content: the two sets differ, so do the keys
    assert keys[0]["content"] != keys[1]["content"] and keys[0]["source"] == "streaming"
    # the validation items are a uniform sample: every class is there
    assert set(labels[order[:205]].tolist()) == set(range(CLASSES))


def test_bad_streaming_input_is_one_line(s3_server, s3_data, tmp_path):  # noqa: F811
    """A split without its manifest (a write cut short), a size mismatch, a missing bucket."""
    opts = s3_server.storage_options
    half = f"s3://{s3_server.bucket}/half/train"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="half/train/index.json", Body=b"{}")
    with pytest.raises(GenlabError, match=f"data.path={half}: no {STREAM_MANIFEST} there"):
        StreamingDataModule(path=half, storage_options=opts, image_size=SIZE, channels=CHANNELS)
    with pytest.raises(GenlabError, match="data.image_size=64 but .*genlab.json says 32"):
        StreamingDataModule(path=s3_data, storage_options=opts, image_size=64, channels=CHANNELS)
    with pytest.raises(GenlabError, match="data.storage_options='<redacted>' must be a mapping"):
        StreamingDataModule(path=s3_data, storage_options="<redacted>", image_size=SIZE)
    with pytest.raises(GenlabError, match="data.path=s3://nobucket/x: cannot read"):
        StreamingDataModule(path="s3://nobucket/x", storage_options=opts, image_size=SIZE)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_chunk_stops_in_one_line_naming_it(damage, s3_server, tmp_path):  # noqa: F811
    """A chunk whose bytes changed after writing (one byte flipped, or cut short) on S3 stops the
    first read of it with the chunk's name; a directory is checked the same way. LitData chunks
    carry no checksum: the sha256 genlab.json records at write time is the check."""
    images, labels = synthetic_hwc(200)
    url = f"s3://{s3_server.bucket}/corrupt-{damage}/train"
    local = tmp_path / "local"
    for out, opts in ((url, s3_server.storage_options), (str(local), {})):
        write_litdata(images, labels, out, {"num_classes": CLASSES}, opts, chunk_bytes="64KB")
    name = "chunk-0-1.bin"
    data = bytearray((local / name).read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    (local / name).write_bytes(bytes(data))
    key = f"corrupt-{damage}/train/{name}"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=bytes(data))
    for path, opts in ((url, s3_server.storage_options), (str(local), {})):
        dm = StreamingDataModule(path=path, storage_options=opts, image_size=SIZE,
                                 channels=CHANNELS, cache_dir=str(tmp_path / "cache"),
                                 val_fraction=0.0, batch_size=8)  # fmt: skip
        with pytest.raises(GenlabError, match=f"{path}/{name}: corrupt chunk") as e:
            for _ in dm.train_dataloader():
                pass
        assert "\n" not in str(e.value)
    # the bad copy is not kept in the cache: a later run downloads it afresh; a directory's own
    # chunk is left where it is
    assert not list((tmp_path / "cache").rglob(name)) and (local / name).is_file()


def test_storage_options_are_redacted(s3_server, tmp_path):  # noqa: F811
    """Credentials and endpoint under data.storage_options never reach a logged config."""
    cfg = compose_train([*TINY, *streaming(s3_server, "s3://b/x/train", tmp_path)], tmp_path)
    from omegaconf import OmegaConf

    shown = json.dumps(redact(OmegaConf.to_container(cfg, resolve=True), secrets=set()))
    for value in s3_server.storage_options.values():
        if value != "us-east-1":
            assert value not in shown, value
    assert "storage_options" in shown


def test_sigterm_then_auto_resume_streaming_is_bit_exact(s3_server, s3_data, tmp_path):  # noqa: F811
    """tests/test_reliability.py's SIGTERM -> auto_resume cycle with data=streaming from S3: the
    loader's state travels in last.ckpt, and the resumed run ends on the same weights,
    optimizer state and CSV rows as an uninterrupted one."""
    overrides = [*TINY, *streaming(s3_server, s3_data, tmp_path), "seed=7", "model=gan",
                 "model.ema_decay=0.9", "model.n_critic=2", "trainer.limit_train_batches=6",
                 "trainer.max_epochs=3", "callbacks.progress_bar=null"]  # fmt: skip
    saved = sigterm_resume_cycle(overrides, tmp_path)
    (state,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state["num_samples_yielded"] == 3 * 16  # batches 0..2 of epoch 1


class RecordSamples(pl.Callback):
    """Write the sha1 of every training image this rank saw to ``dirpath/rank{r}.json``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath, self.seen = Path(dirpath), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images, labels = batch  # the models' batch contract holds
        pixels = images.add(1).mul(127.5).round().to(torch.uint8).cpu().numpy()
        self.seen += [hashlib.sha1(p.tobytes()).hexdigest() for p in pixels]

    def on_train_end(self, trainer, pl_module) -> None:
        (self.dirpath / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.slow
def test_two_ranks_stream_disjoint_samples_from_s3(s3_server, s3_data, tmp_path):  # noqa: F811
    """Two genlab-train processes as two nodes (tests/test_multinode.py's launch), both reading
    the loopback S3 server: each sees the same number of batches and no image the other saw."""
    common = [
        *TINY, *streaming(s3_server, s3_data, tmp_path), "model=gan", "trainer=ddp_cpu",
        "trainer.num_nodes=2", "trainer.devices=1", "trainer.max_epochs=1", "data.val_fraction=0.1",
        "trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1",
        "+callbacks.record._target_=tests.test_streaming.RecordSamples",
        f"+callbacks.record.dirpath={tmp_path}", f"hydra.run.dir={tmp_path}/run",
    ]  # fmt: skip
    run_two_nodes(common, tmp_path)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # debug=tiny: 256 images, 26 for validation; 230 over 2 ranks in batches of 16: 7 each
    assert len(seen[0]) == len(seen[1]) == 7 * 16
    assert len(set(seen[0])) == len(seen[0]) and not set(seen[0]) & set(seen[1])
    # the images are distinct, so disjoint hashes are disjoint samples
    dm = StreamingDataModule(path=s3_data, storage_options=s3_server.storage_options,
                             image_size=SIZE, channels=CHANNELS, limit=256, val_fraction=0.1,
                             cache_dir=str(tmp_path / "litdata"))  # fmt: skip
    train_images = {hashlib.sha1(dm.dataset("train")[i][0].add(1).mul(127.5).round()
                                 .to(torch.uint8).numpy().tobytes()).hexdigest()
                    for i in range(len(dm.dataset("train")))}  # fmt: skip
    assert len(train_images) == 230 and set(seen[0]) | set(seen[1]) <= train_images


@pytest.mark.slow
def test_cli_prepare_then_sigkill_resume_streaming_is_bit_exact(s3_server, weights, tmp_path):  # noqa: F811
    """The CLI as a user runs it: genlab-prepare format=litdata to s3://, then genlab-train
    data=streaming from it (the default GAN), killed with SIGKILL inside epoch 1 and resumed from
    its last.ckpt: the same weights, optimizer state and CSV rows as the uninterrupted run
    (tests/test_reliability.py's SIGKILL test). No logged file holds the storage options, so
    genlab-eval of the run is given them again (data_storage_options)."""
    env = {**cli_env(tmp_path), "PYTHONPATH": str(REPO)}  # the run imports SignalAt
    opts = "{" + ", ".join(f"{k}: '{v}'" for k, v in s3_server.storage_options.items()) + "}"
    out = f"s3://{s3_server.bucket}/cli"

    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / script), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    ok(run("genlab-prepare", "data=synthetic", "format=litdata", f"out={out}",
           f"storage_options={opts}"))  # fmt: skip
    args = [*TINY, "model=gan", "data=streaming", f"data.path={out}/train", *STREAM,
            f"data.storage_options={opts}", f"data.cache_dir={tmp_path}/litdata", "seed=7",
            "trainer.deterministic=true", "trainer.limit_train_batches=10",
            "trainer.val_check_interval=5", "trainer.max_epochs=2"]  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    ok(run("genlab-train", *args, f"hydra.run.dir={full}"))
    proc = run("genlab-train", *args, f"hydra.run.dir={killed}", *_signal_at(1, 7, "SIGKILL"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    position = load_ckpt(last)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert (load_ckpt(last)["epoch"], position["completed"] - 1) == (1, 4)  # after val at 5
    ok(run("genlab-train", *args, f"hydra.run.dir={killed}", f"ckpt_path={last}"))
    _same_training_state(load_ckpt(full / "checkpoints" / "last.ckpt"), load_ckpt(last))
    same_csv(killed, full)
    logged = [full / "csv" / "hparams.yaml", full / "checkpoints" / "last.ckpt"]
    for file in logged:
        text = file.read_bytes()
        for secret in ("testing-secret-key", "testing-access-key", s3_server.endpoint):
            assert secret.encode() not in text, (file, secret)
    scoring = [f"ckpt_path={last}", *METRICS, f"metrics.inception_weights={weights}",
               f"metrics.cache_dir={tmp_path}/cache", "trainer.accelerator=cpu"]  # fmt: skip
    proc = run("genlab-eval", *scoring, f"hydra.run.dir={tmp_path}/eval0")
    assert proc.returncode == 2 and "data.storage_options='<redacted>'" in proc.stderr
    ok(run("genlab-eval", *scoring, f"data_storage_options={opts}", f"hydra.run.dir={tmp_path}/ev"))
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]["fid"] > 0
