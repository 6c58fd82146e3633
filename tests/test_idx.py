"""data=mnist and data=fashion_mnist read the four IDX files (gzipped or not) from data.root."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data import ImageDataModule
from genlab.data.datasets import fetch
from genlab.data.idx import read_idx
from genlab.errors import GenlabError

FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0 0 8 ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_set(where: Path, gz: bool, n_train: int = 30, n_test: int = 7) -> dict[str, tuple]:
    """Random images and labels for both splits as IDX files in ``where``; returns the arrays."""
    where.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for name, array in zip(NAMES[split], (images, labels), strict=True):
            data = idx_bytes(array)
            if gz:  # recompressed like Debian's files: no torchvision checksum can match
                (where / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
            else:
                (where / name).write_bytes(data)
        arrays[split] = (images, labels)
    return arrays


def all_items(dm: ImageDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    base = dm.dataset(split)
    base = getattr(base, "dataset", base)  # the train split is a Subset of the full pool
    return fetch(base, list(range(len(base))))


@pytest.mark.parametrize("source", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_idx_files_read_exactly(tmp_path, no_network, source, gz, layout):
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[source]
    where = tmp_path if layout == "flat" else tmp_path / folder / "raw"
    arrays = write_set(where, gz)
    dm = ImageDataModule(source=source, root=str(tmp_path), val_fraction=0.1, batch_size=4)
    dm.setup()
    assert (len(dm.dataset("train")), len(dm.dataset("val"))) == (27, 3)
    for split in ("train", "test"):
        images, labels = all_items(dm, split)
        want_images, want_labels = arrays[split]
        pixels = images.add(1).mul(127.5).round().to(torch.uint8)[:, 0]  # exact inverse
        assert torch.equal(pixels, torch.from_numpy(want_images))
        assert torch.equal(labels, torch.from_numpy(want_labels).long())
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        p.name for p in where.iterdir()
    )  # nothing unpacked or downloaded next to them


def test_read_idx_dtype_and_shape(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    got = read_idx(tmp_path / "a")
    assert got.dtype == np.uint8 and np.array_equal(got, array)


@pytest.mark.parametrize(
    ("data", "what"),
    [(b"\x01\x02", "header"), (bytes([0, 0, 8, 1]) + np.array([5], ">i4").tobytes() + b"abc",
     "5"), (bytes([0, 0, 13, 1]) + np.array([1], ">i4").tobytes() + b"a", "uint8")],
)  # fmt: skip
def test_bad_idx_file_is_one_line(tmp_path, data, what):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(GenlabError) as e:
        read_idx(tmp_path / "bad")
    message = str(e.value)
    assert str(tmp_path / "bad") in message and what in message and "\n" not in message


def test_missing_file_names_root_and_files(tmp_path, no_network):
    write_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    dm = ImageDataModule(source="fashion_mnist", root=str(tmp_path), batch_size=4)
    dm.setup("fit")  # the train files are all there
    with pytest.raises(GenlabError) as e:
        dm.dataset("test")
    message = str(e.value)
    assert "data.root" in message and str(tmp_path.resolve()) in message
    assert "t10k-labels-idx1-ubyte" in message and "t10k-images" not in message
    assert "\n" not in message
    # with data.download=true already set, suggesting it again would not help
    dm = ImageDataModule(source="fashion_mnist", root=str(tmp_path), download=True)
    with pytest.raises(GenlabError) as e:
        dm.load("test")
    assert "data.download" not in str(e.value)


def test_mismatched_counts_are_refused(tmp_path):
    write_set(tmp_path, gz=False)
    labels = np.zeros(5, np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(GenlabError, match="holds 7 images but t10k-labels-idx1-ubyte 5 labels"):
        ImageDataModule(source="mnist", root=str(tmp_path)).dataset("test")


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_debian_fashion_mnist(no_network):
    dm = ImageDataModule(source="fashion_mnist", root=str(FASHION), val_fraction=0.0)
    train, test = dm.dataset("train"), dm.dataset("test")
    assert (len(train), len(test)) == (60000, 10000)
    labels = fetch(test, list(range(10000))).labels
    assert torch.bincount(labels).tolist() == [1000] * 10  # the official test split
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read()[16:16 + 784], np.uint8).reshape(28, 28)  # fmt: skip
    first = test[0][0].add(1).mul(127.5).round().to(torch.uint8)[0]
    assert torch.equal(first, torch.from_numpy(raw.copy()))
