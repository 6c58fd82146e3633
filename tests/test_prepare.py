"""genlab-prepare writes memory-mapped uint8 arrays + manifest; data=prepared reads them back."""

import gzip
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from genlab.config import CONFIG_DIR
from genlab.data import ImageDataModule
from genlab.data.datasets import Batch, fetch
from genlab.data.prepared import manifest_hash, read_manifest
from genlab.errors import GenlabError
from genlab.preparation import prepare
from tests.conftest import cli_env

FASHION = Path("/usr/share/datasets/fashion-mnist")


def prepare_cfg(*overrides: str):
    """conf/prepare.yaml composed as genlab-prepare composes it."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="prepare", overrides=list(overrides))


def image_folder(root: Path, n: int = 12) -> Path:
    """``n`` random RGB images of mixed sizes, PNG and JPEG, one in a subfolder."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)
        name = root / ("sub" if i == 0 else "") / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(name)
    return root


def test_mnist5k_prepared_batches_equal_the_source(tmp_path, capsys):
    out = prepare(prepare_cfg("data=mnist5k", "data.image_size=32", f"out={tmp_path / 'p'}"))
    manifest = read_manifest(out)
    assert manifest["splits"]["train"]["count"] == 5000 and manifest["num_classes"] == 10
    assert np.load(out / "train.npy", mmap_mode="r").shape == (5000, 32, 32, 1)  # (N, H, W, C)
    dm = ImageDataModule(source="prepared", path=str(out), image_size=32, batch_size=16)
    ref = ImageDataModule(source="mnist5k", image_size=32, batch_size=16)
    assert dm.num_classes == 10 and dm.manifest_sha256 == manifest_hash(manifest)
    assert not dm.has_test_split and not ref.has_test_split  # "test" is the val split here
    for split in ("train", "val", "test"):  # same seeded split, same pixels and labels
        idx = list(range(0, len(ref.dataset(split)), 97))
        got, want = fetch(dm.dataset(split), idx), fetch(ref.dataset(split), idx)
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
    # one gather per batch, not one call per image
    assert isinstance(dm.dataset("train").__getitems__([3, 1, 2]), Batch)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 1, 32, 32) and images.is_contiguous() and labels.dtype == torch.long
    # the mapped file travels to workers and spawned ranks by name, not as a copy of its pixels
    assert len(pickle.dumps(dm.dataset("train").dataset)) < 100_000
    capsys.readouterr()
    prepare(prepare_cfg("data=mnist5k", "data.image_size=32", f"out={out}"))
    assert "nothing to do" in capsys.readouterr().out


def test_folder_prepare_then_noop_and_refusals(tmp_path, capsys):
    root = image_folder(tmp_path / "images")
    args = ["data=folder", f"data.root={root}", "data.image_size=16", f"out={tmp_path / 'p'}"]
    out = prepare(prepare_cfg(*args, "num_workers=0"))
    listing = read_manifest(out)["splits"]["train"]
    assert listing["count"] == 12 and len(listing["file_list_sha256"]) == 64
    folder = ImageDataModule(
        source="folder", root=str(root), image_size=16, channels=3, batch_size=4
    )
    dm = ImageDataModule(source="prepared", path=str(out), image_size=16, channels=3, batch_size=4)
    assert dm.num_classes == 0
    idx = list(range(len(folder.dataset("train"))))
    assert torch.equal(
        fetch(dm.dataset("train"), idx).images, fetch(folder.dataset("train"), idx).images
    )
    capsys.readouterr()
    prepare(prepare_cfg(*args))
    assert "already holds this source" in capsys.readouterr().out
    # a new file changes the listing's hash: the directory is prepared again
    Image.new("RGB", (20, 20)).save(root / "new.png")
    prepare(prepare_cfg(*args))
    assert (
        "replacing" in capsys.readouterr().out
        and read_manifest(out)["splits"]["train"]["count"] == 13
    )
    with pytest.raises(GenlabError, match=r"data\.image_size=32 but .*manifest\.json says 16"):
        ImageDataModule(source="prepared", path=str(out), image_size=32, channels=3)
    with pytest.raises(GenlabError, match="data.path"):
        ImageDataModule(source="prepared", image_size=16, channels=3)
    with pytest.raises(GenlabError, match=r"no manifest\.json"):
        ImageDataModule(source="prepared", path=str(root), image_size=16, channels=3)


def test_truncated_or_stale_arrays_are_refused_by_name(tmp_path):
    out = prepare(prepare_cfg("data=synthetic", "data.synthetic_size=64", f"out={tmp_path / 'p'}"))
    kwargs = dict(source="prepared", path=str(out), image_size=32, channels=1, batch_size=8)
    data = (out / "train.npy").read_bytes()
    (out / "train.npy").write_bytes(data[:-100])
    with pytest.raises(GenlabError, match=r"train\.npy: .* bytes where .*\(truncated\)"):
        ImageDataModule(**kwargs)
    np.save(out / "train.npy", np.zeros((63, 32, 32, 1), np.uint8))  # not what the manifest says
    with pytest.raises(GenlabError, match=r"train\.npy: holds \(63, 32, 32, 1\).*\(stale\)"):
        ImageDataModule(**kwargs)
    prepare(prepare_cfg("data=synthetic", "data.synthetic_size=64", f"out={out}"))
    assert len(ImageDataModule(**kwargs).dataset("train")) == 58  # 64 less the 10% val split


def test_corrupt_image_is_named_and_nothing_is_written(tmp_path):
    root = image_folder(tmp_path / "images", n=4)
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "broken.jpg")
    data = (root / "broken.jpg").read_bytes()  # cut short: passes verify(), fails to decode
    (root / "broken.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "p"
    cfg = prepare_cfg("data=folder", f"data.root={root}", "data.image_size=16", f"out={out}")
    with pytest.raises(GenlabError, match=r"broken\.jpg.*nothing written"):
        prepare(cfg)
    assert not out.exists()


def test_cli_errors_are_one_line_exit_2(tmp_path):
    env = cli_env(tmp_path)
    for args, message in (
        ([], "data: choose the source to prepare"),
        (["data=prepared"], "data=prepared is prepared already"),
        (["data=folder", f"data.root={tmp_path / 'nowhere'}"], "is not a directory"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "genlab.cli.prepare", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # nothing but OUT/ is ever written
    # --help and config errors answer before torch is imported
    check = "import sys, genlab.cli.prepare; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_refused_preparation_leaves_the_working_directory_alone(tmp_path):
    """genlab-prepare runs in "." (hydra.run.dir): a failed start must not discard it as an empty
    run directory. It did when "." held only *.log files, and the error became a traceback."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "slurm-1234.log").write_text("a job's log\n")
    done = subprocess.run(
        [sys.executable, "-m", "genlab.cli.prepare", "data=prepared"],
        cwd=work, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "data=prepared is prepared already" in done.stderr, done.stderr
    assert (work / "slurm-1234.log").read_text() == "a job's log\n"


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_fashion_mnist_train_and_test_splits(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"  # where torchvision looks, unpacked
    raw.mkdir(parents=True)
    for gz in FASHION.glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    out = prepare(
        prepare_cfg("data=fashion_mnist", f"data.root={tmp_path}", f"out={tmp_path / 'p'}")
    )
    splits = read_manifest(out)["splits"]
    assert splits["train"]["count"] == 60000 and splits["test"]["count"] == 10000
    assert splits["test"]["torchvision"] == "FashionMNIST split=test"
    dm = ImageDataModule(source="prepared", path=str(out), image_size=28, channels=1)
    assert dm.has_test_split  # genlab-eval scores the official test split of a prepared set too
    ref = ImageDataModule(source="fashion_mnist", root=str(tmp_path), image_size=28, channels=1)
    idx = list(range(0, 10000, 499))
    for split in ("train", "test"):
        got, want = fetch(dm.dataset(split), idx), fetch(ref.dataset(split), idx)
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
