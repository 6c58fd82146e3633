"""data=zip (StyleGAN dataset zips), data=hf (Hugging Face datasets) and genlab-prepare
format=zip|npy: reading, writing, integrity and resume.

The zip format and its reading semantics are StyleGAN2-ADA's (NVlabs/stylegan2-ada-pytorch):
``dataset_tool.py`` writes ``00000/img00000000.png`` ... (1000 per folder, PNG compress_level=0,
ZIP_STORED) and ``dataset.json`` ``{"labels": [[name, label], ...] | null}``;
``training/dataset.py``'s ``ImageFolderDataset`` reads the sorted member names whose extension is
in ``PIL.Image.EXTENSION``, ``np.array(PIL.Image.open(f))`` per image, and maps the labels by
name in that order (``labels.astype(int64)`` for 1-d labels). ``stylegan_read`` below
reimplements that loader to check what genlab writes.
"""

import errno
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from genlab.config import CONFIG_DIR
from genlab.data import ImageDataModule
from genlab.data.datasets import fetch
from genlab.data.prepared import file_sha256, read_manifest
from genlab.errors import GenlabError
from genlab.preparation import prepare, temp_array
from tests.conftest import TINY, ok


def prepare_cfg(*overrides: str):
    """conf/prepare.yaml composed as genlab-prepare composes it."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="prepare", overrides=list(overrides))


def random_images(n: int, size: int = 12, channels: int = 3, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, C) noise."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "png")
    return buffer.getvalue()


def write_zip(path: Path, images: np.ndarray, labels=None, extra=(), deflate=False) -> list[str]:
    """A dataset zip with members written in reverse order (readers must sort), plus extras."""
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    kind = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=kind) as zf:
        for name, pixels in reversed(list(zip(names, images, strict=True))):
            zf.writestr(name, png(pixels))
        for name, data in extra:
            zf.writestr(name, data)
        if labels is not None:
            table = [[n, int(label)] for n, label in zip(names, labels, strict=True)]
            zf.writestr("dataset.json", json.dumps({"labels": table}))
    return names


def stylegan_read(path: Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """StyleGAN2-ADA's ImageFolderDataset over a zip: names, uint8 (N, H, W, C), labels."""
    Image.init()
    with zipfile.ZipFile(path) as zf:
        all_names = set(zf.namelist())
        names = sorted(n for n in all_names if os.path.splitext(n)[1].lower() in Image.EXTENSION)
        images = []
        for name in names:
            with zf.open(name) as f:
                image = np.array(Image.open(f))
            images.append(image[:, :, None] if image.ndim == 2 else image)  # HW => HWC
        labels = None
        if "dataset.json" in all_names:
            table = json.loads(zf.read("dataset.json"))["labels"]
            if table is not None:
                by_name = dict(table)
                labels = np.array([by_name[n.replace("\\", "/")] for n in names])
                labels = labels.astype({1: np.int64, 2: np.float32}[labels.ndim])
    return names, np.stack(images), labels


def zip_dm(path: Path, **kw) -> ImageDataModule:
    args = dict(source="zip", path=str(path), image_size=12, channels=3, batch_size=4)
    return ImageDataModule(**{**args, **kw})


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) back to uint8 (B, H, W, C): the exact inverse of to_float."""
    return images.add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------ data=zip


def test_zip_reads_like_stylegan(tmp_path):
    images, labels = random_images(30), np.arange(30) % 4
    path = tmp_path / "set.zip"
    extra = [("README.txt", b"not an image"), ("notes/x.json", b"{}")]
    write_zip(path, images, labels, extra)
    dm = zip_dm(path, val_fraction=0.0, batch_size=30)
    assert dm.num_classes == 4 and not dm.has_test_split
    full = dm.load("train")
    names, ref_images, ref_labels = stylegan_read(path)
    assert full.names == names and len(names) == 30  # sorted images, the extras skipped
    batch = fetch(full, list(range(30)))
    assert np.array_equal(as_uint8(batch.images), ref_images)
    assert np.array_equal(batch.labels.numpy(), ref_labels) and ref_labels.dtype == np.int64
    assert np.array_equal(ref_images, images)  # and both are what was written
    # pickled for workers and DDP ranks without the open zip; the copy reads the same
    full.pixels(0)
    assert full._zip is not None
    copy = pickle.loads(pickle.dumps(full))
    assert copy._zip is None and torch.equal(copy[5][0], full[5][0])
    # grayscale output and resizing as the folder source does
    gray = zip_dm(path, image_size=8, channels=1).load("train")[0][0]
    assert gray.shape == (1, 8, 8)


def test_zip_through_worker_loader_and_unlabelled(tmp_path):
    path = tmp_path / "plain.zip"
    write_zip(path, random_images(20))  # no dataset.json: unlabelled
    dm = zip_dm(path, num_workers=1, val_fraction=0.1)
    assert dm.num_classes == 0
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 12, 12) and not labels.any()
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    assert zip_dm(path).num_classes == 0


def corrupt_member(path: Path, name: str) -> None:
    """Flip bytes in the middle of ``name``'s stored data, keeping the zip's structure."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.compress_size // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("deflate", [False, True])
def test_corrupt_member_is_one_line_naming_zip_and_member(tmp_path, deflate):
    path = tmp_path / "bad.zip"
    names = write_zip(path, random_images(12), deflate=deflate)
    corrupt_member(path, names[3])
    dm = zip_dm(path, val_fraction=0.0, batch_size=12, num_workers=1, drop_last=False)
    full = dm.load("train")
    with pytest.raises(GenlabError, match=f"data.path={path}: member {names[3]} is corrupt"):
        full[3]
    full[2]  # the others read fine
    # through a DataLoader worker: still the one line, not torch's "Caught ... in worker"
    loader = dm.loader(full, shuffle=False, drop_last=False)
    with pytest.raises(GenlabError) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"data.path={path}: member {names[3]}")
    assert ("Bad CRC-32" in message) or deflate  # a broken deflate stream: zlib's own words


def test_truncated_zip_and_bad_inputs_are_one_line(tmp_path):
    path = tmp_path / "set.zip"
    names = write_zip(path, random_images(6), labels=[0, 1, 2, 0, 1, 2])
    whole = path.read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])  # an interrupted copy: the central directory lost
    cases = {
        str(tmp_path / "missing.zip"): "no such file",
        str(cut): "not a readable zip file",
    }
    (tmp_path / "text.zip").write_text("hello")
    cases[str(tmp_path / "text.zip")] = "not a readable zip file"
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "no images")
    cases[str(empty)] = "no image files in the zip"
    stray = tmp_path / "stray.zip"
    write_zip(stray, random_images(2))
    with zipfile.ZipFile(stray, "a") as zf:
        zf.writestr("dataset.json", json.dumps({"labels": [[names[0], 0], ["gone.png", 1]]}))
    cases[str(stray)] = "dataset.json names gone.png, which is not an image in the zip"
    unlabelled = tmp_path / "partial.zip"
    write_zip(unlabelled, random_images(2))
    with zipfile.ZipFile(unlabelled, "a") as zf:
        zf.writestr("dataset.json", json.dumps({"labels": [[names[0], 0]]}))
    cases[str(unlabelled)] = f"dataset.json has no label for {names[1]}"
    vectors = tmp_path / "vectors.zip"
    write_zip(vectors, random_images(2))
    with zipfile.ZipFile(vectors, "a") as zf:
        table = [[n, [0.5, 1.0]] for n in names[:2]]
        zf.writestr("dataset.json", json.dumps({"labels": table}))
    cases[str(vectors)] = "genlab needs one integer class id per image"
    for where, says in cases.items():
        with pytest.raises(GenlabError, match=f"data.path={where}: .*{says}") as caught:
            zip_dm(Path(where))
        assert "\n" not in str(caught.value)
    with pytest.raises(GenlabError, match="data.source=zip needs data.path"):
        ImageDataModule(source="zip", image_size=12, channels=3)


def test_zip_cut_inside_its_members_is_refused_at_setup(tmp_path):
    """The central directory survives, some member data does not (bytes lost mid-file)."""
    path = tmp_path / "set.zip"
    write_zip(path, random_images(4))
    with zipfile.ZipFile(path) as zf:
        start_dir = zf.start_dir
    data = path.read_bytes()
    path.write_bytes(data[: start_dir - 100] + data[start_dir:])
    with pytest.raises(GenlabError, match=f"data.path={path}: member .* is not where the zip"):
        zip_dm(path)


def test_zip_equals_folder_images_and_reference_features(tmp_path, weights):
    from genlab.callbacks.sample_features import data_key, real_features, single_process
    from genlab.metrics.image_metrics import ImageMetrics

    images = random_images(16, size=20)
    path = tmp_path / "set.zip"
    names = write_zip(path, images)
    folder = tmp_path / "folder"
    for name, pixels in zip(names, images, strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png(pixels))
    kw = dict(image_size=16, channels=3, batch_size=4)  # resized: 20 -> 16 in both
    from_zip = zip_dm(path, **kw)
    from_folder = ImageDataModule(source="folder", root=str(folder), **kw)
    for split in ("train", "val", "test"):
        a, b = from_zip.dataset(split), from_folder.dataset(split)
        idx = list(range(len(b)))
        assert len(a) == len(b) and torch.equal(fetch(a, idx).images, fetch(b, idx).images)
    metrics = ImageMetrics(["fid"], inception_weights=str(weights), batch_size=8)
    cache = tmp_path / "cache"
    got = {}
    for name, dm in (("zip", from_zip), ("folder", from_folder)):
        got[name], n = real_features(
            single_process(dm), metrics, "train", 8, cache, 8, torch.device("cpu")
        )
        assert n == 8
    assert torch.equal(got["zip"]["pool"], got["folder"]["pool"])
    assert len(list(cache.glob("ref-*.pt"))) == 2  # one entry each: different sources
    # the same path written again with other images is another cache entry; same bytes, same one
    key = data_key(from_zip)
    write_zip(path, random_images(16, size=20, seed=1))
    assert data_key(zip_dm(path, **kw)) != key
    write_zip(path, images)
    assert data_key(zip_dm(path, **kw)) == key


# -------------------------------------------------------------------- genlab-prepare zip


def test_prepare_zip_is_what_stylegan_reads(tmp_path, capsys):
    out = tmp_path / "syn.zip"
    cfg = prepare_cfg("data=synthetic", "data.synthetic_size=1003", "data.image_size=8",
                      "data.channels=3", "format=zip", f"out={out}")  # fmt: skip
    prepare(cfg)
    names, images, labels = stylegan_read(out)
    # dataset_tool.py's layout: 1000 images per folder
    assert names[0] == "00000/img00000000.png" and names[999] == "00000/img00000999.png"
    assert names[1000] == "00001/img00001000.png" and len(names) == 1003
    with zipfile.ZipFile(out) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    source = ImageDataModule(source="synthetic", synthetic_size=1003, image_size=8, channels=3)
    want = source.load("train")
    assert np.array_equal(images, want.images.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(labels, want.labels.numpy()) and labels.dtype == np.int64
    # genlab reads it back as data=zip
    dm = zip_dm(out, image_size=8, val_fraction=0.0, batch_size=16)
    assert dm.num_classes == source.num_classes
    assert torch.equal(fetch(dm.load("train"), [0, 1002]).images, fetch(want, [0, 1002]).images)
    assert "data=zip data.path=" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["syn.zip"]  # no temp file left
    # and a zip prepares to arrays like any source, its content hash in the manifest
    npy = prepare(prepare_cfg("data=zip", f"data.path={out}", "data.image_size=8",
                              f"out={tmp_path / 'npy'}"))  # fmt: skip
    assert np.array_equal(np.load(npy / "train.npy"), images)
    assert np.array_equal(np.load(npy / "train_labels.npy"), labels)
    assert read_manifest(npy)["splits"]["train"]["content_sha256"] == dm.content_sha256


def test_prepare_zip_unlabelled_and_atomic(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, pixels in enumerate(random_images(5, size=10)):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "f.zip"
    args = ["data=folder", f"data.root={folder}", "data.image_size=10", "num_workers=0",
            "format=zip", f"out={out}"]  # fmt: skip
    prepare(prepare_cfg(*args))
    with zipfile.ZipFile(out) as zf:
        assert json.loads(zf.read("dataset.json")) == {"labels": None}
    names, images, labels = stylegan_read(out)
    assert labels is None and len(names) == 5
    good = out.read_bytes()
    import genlab.preparation as preparation

    calls, original = [], preparation.png_bytes

    def fails_on_the_third(pixels):
        calls.append(1)
        if len(calls) == 3:  # the disk fills up in the middle of the zip
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(pixels)

    monkeypatch.setattr(preparation, "png_bytes", fails_on_the_third)
    with pytest.raises(GenlabError, match=f"out={out}: cannot write .*No space left on device"):
        prepare(prepare_cfg(*args))
    assert out.read_bytes() == good  # the previous zip untouched, no temp left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zip", "images"]


def test_prepare_refuses_bad_format_and_out(tmp_path):
    with pytest.raises(GenlabError, match="format='tar': use npy, zip or litdata"):
        prepare(prepare_cfg("data=mnist5k", "format=tar", f"out={tmp_path / 'x'}"))
    with pytest.raises(GenlabError, match="format=zip writes one zip file"):
        prepare(prepare_cfg("data=mnist5k", "format=zip", f"out={tmp_path / 'x'}"))
    assert not list(tmp_path.iterdir())


# ------------------------------------------- genlab-prepare npy: array hashes, full disk


def test_prepared_manifest_records_array_hashes(tmp_path):
    out = prepare(prepare_cfg("data=synthetic", "data.synthetic_size=64", f"out={tmp_path}/p"))
    info = read_manifest(out)["splits"]["train"]
    assert info["images_sha256"] == file_sha256(out / "train.npy")
    assert info["labels_sha256"] == file_sha256(out / "train_labels.npy")
    # the same source again is still a no-op (the hashes are not part of what is compared)
    before = (out / "manifest.json").read_bytes()
    prepare(prepare_cfg("data=synthetic", "data.synthetic_size=64", f"out={tmp_path}/p"))
    assert (out / "manifest.json").read_bytes() == before


def test_temp_arrays_are_allocated_up_front(tmp_path):
    tmp, array = temp_array(tmp_path, "x.npy", (64, 64, 64, 3), "u1")
    stat = tmp.stat()
    # allocated blocks, not a sparse file: ENOSPC comes here, not from a memmap page write
    assert stat.st_blocks * 512 >= stat.st_size - 4096
    del array


def test_full_disk_while_preparing_is_one_line_and_keeps_the_old_directory(tmp_path, monkeypatch):
    args = ["data=synthetic", "data.synthetic_size=64", f"out={tmp_path}/p"]
    out = prepare(prepare_cfg(*args))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import genlab.preparation as preparation

    real = np.lib.format.open_memmap

    def disk_full(file, *a, **kw):
        if "labels" in str(file):  # the second array of the split: the first is half done
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(file, *a, **kw)

    monkeypatch.setattr(preparation.np.lib.format, "open_memmap", disk_full)
    with pytest.raises(GenlabError) as caught:
        prepare(prepare_cfg(*args[:-2], "data.synthetic_size=65", args[-1]))
    message = str(caught.value)
    assert message.startswith(f"out={out}: cannot write ") and "No space left" in message
    assert "train_labels.npy" in message and "\n" not in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing else there


# ------------------------------------------------------------------------------- data=hf


def hf_dataset(n: int = 24, seed: int = 0):
    """A datasets.Dataset with an Image column of PNGs and a ClassLabel column."""
    import datasets

    images = random_images(n, size=12, seed=seed)
    features = datasets.Features(
        {"img": datasets.Image(), "cls": datasets.ClassLabel(names=["cat", "dog", "emu"])}
    )
    data = {
        "img": [{"bytes": png(p), "path": None} for p in images],
        "cls": [i % 3 for i in range(n)],
    }
    return datasets.Dataset.from_dict(data, features=features), images


def hf_dm(path, **kw) -> ImageDataModule:
    args = dict(source="hf", path=str(path), image_size=12, channels=3, batch_size=4,
                image_column="img", label_column="cls")  # fmt: skip
    return ImageDataModule(**{**args, **kw})


def test_hf_save_to_disk_and_parquet_read_the_same(tmp_path, monkeypatch):
    import datasets

    # parquet goes through datasets' builder, which keeps an Arrow copy in its cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")

    train, images = hf_dataset(24)
    test, test_images = hf_dataset(6, seed=1)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dict")
    train.save_to_disk(tmp_path / "single")
    (tmp_path / "pq").mkdir()
    train.to_parquet(tmp_path / "pq" / "a.parquet")
    for spec in ("dict", "single", "pq", "pq/a.parquet", "pq/*.parquet"):
        dm = hf_dm(tmp_path / spec, val_fraction=0.0, batch_size=8)
        assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "emu"], spec
        batch = fetch(dm.load("train"), list(range(24)))
        assert np.array_equal(as_uint8(batch.images), images), spec
        assert batch.labels.tolist() == [i % 3 for i in range(24)], spec
        assert dm.has_test_split == (spec == "dict"), spec
    dm = hf_dm(tmp_path / "dict")
    assert np.array_equal(as_uint8(fetch(dm.dataset("test"), list(range(6))).images), test_images)
    # DataLoader workers get a pickled copy
    copy = pickle.loads(pickle.dumps(dm.load("train")))
    assert torch.equal(copy[3][0], dm.load("train")[3][0])
    images_, labels = next(iter(hf_dm(tmp_path / "dict", num_workers=1).train_dataloader()))
    assert images_.shape == (4, 3, 12, 12) and labels.dtype == torch.long
    # unlabelled, and a split other than train (then no official test split)
    assert hf_dm(tmp_path / "dict", label_column=None).num_classes == 0
    other = hf_dm(tmp_path / "dict", split="test", val_fraction=0.0, batch_size=2)
    assert len(other.load("train")) == 6 and not other.has_test_split


def test_hf_bad_inputs_are_one_line(tmp_path):
    train, _ = hf_dataset(6)
    train.save_to_disk(tmp_path / "single")
    cases = [
        (dict(image_column="image"), "data.image_column=image: .* no such column "
         r"\(columns: img, cls\)"),
        (dict(label_column="label"), r"data.label_column=label: .*\(columns: img, cls\)"),
        (dict(image_column="cls"), "data.image_column=cls: .* stores ClassLabel"),
    ]  # fmt: skip
    for kw, says in cases:
        with pytest.raises(GenlabError, match=says):
            hf_dm(tmp_path / "single", **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenlabError, match="neither a save_to_disk directory nor parquet"):
        hf_dm(tmp_path / "empty")
    # a Hub id that is not in the local cache: refused offline, nothing downloaded
    with pytest.raises(GenlabError, match="data.path=nobody-here/no-such-set: cannot load") as e:
        hf_dm("nobody-here/no-such-set")
    assert "\n" not in str(e.value)


def cache_as_hub_download(tmp_path: Path, data, repo: str) -> Path:
    """A datasets cache holding ``repo`` as ``load_dataset(repo)`` leaves it after a download.

    The layout ``datasets`` 5's offline Cache builder looks up
    (``datasets/packaged_modules/cache/cache.py``): CACHE/owner___name/CONFIG/VERSION/HASH/
    with dataset_info.json (config_name = CONFIG) and NAME-SPLIT.arrow. Built here from a
    local parquet file by the parquet builder, then moved into place.
    """
    import shutil

    import datasets

    owner, name = repo.split("/")
    data.to_parquet(tmp_path / "hub.parquet")
    builder = datasets.load_dataset_builder(
        "parquet", data_files={"train": str(tmp_path / "hub.parquet")}, cache_dir=str(tmp_path)
    )
    builder.download_and_prepare()
    cache = tmp_path / "hf-cache"
    dest = cache / f"{owner}___{name}" / "default" / "0.0.0" / "0123abcd"
    shutil.copytree(builder.cache_dir, dest)
    for arrow in dest.glob("parquet-*.arrow"):
        arrow.rename(dest / arrow.name.replace("parquet-", f"{name}-"))
    info = json.loads((dest / "dataset_info.json").read_text())
    info.update(config_name="default", dataset_name=name)
    (dest / "dataset_info.json").write_text(json.dumps(info))
    return cache


def test_hf_hub_id_is_read_from_the_local_cache_offline(tmp_path, monkeypatch):
    import socket

    import datasets
    import huggingface_hub.constants as hub

    tried = []  # datasets falls back to the cache when the Hub fails: count tries, not failures

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("network access attempted")

    train, images = hf_dataset(12)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache_as_hub_download(
        tmp_path, train, "someone/tiny_set"))  # fmt: skip
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)  # as a user's online default
    dm = hf_dm("someone/tiny_set", val_fraction=0.0, batch_size=4)
    assert dm.class_names == ["cat", "dog", "emu"] and dm.num_classes == 3
    assert np.array_equal(as_uint8(fetch(dm.load("train"), list(range(12))).images), images)
    assert hub.HF_HUB_OFFLINE is False  # offline for the load only
    with pytest.raises(GenlabError, match="data.path=someone/other_set: cannot load it"):
        hf_dm("someone/other_set")
    assert tried == []


# ------------------------------------------------------------------- training from the CLI


def labelled_zip(tmp_path: Path, n: int = 80) -> Path:
    path = tmp_path / "train.zip"
    write_zip(path, random_images(n, size=32, channels=1), labels=np.arange(n) % 2)
    return path


def saved_hf(tmp_path: Path, n: int = 80) -> Path:
    import datasets

    train, _ = hf_dataset(n)
    train = train.cast_column("img", datasets.Image())
    train.save_to_disk(tmp_path / "hfset")
    return tmp_path / "hfset"


def data_args(kind: str, tmp_path: Path, n: int = 80, workers: int = 0) -> list[str]:
    if kind == "zip":
        return ["data=zip", f"data.path={labelled_zip(tmp_path, n)}", "data.image_size=32",
                "data.channels=1", f"data.num_workers={workers}"]  # fmt: skip
    return ["data=hf", f"data.path={saved_hf(tmp_path, n)}", "data.image_column=img",
            "data.label_column=cls", "data.image_size=32", "data.channels=1",
            f"data.num_workers={workers}"]  # fmt: skip


@pytest.mark.parametrize("kind", ["zip", "hf"])
def test_cli_trains_the_default_gan(kind, run_cli, tmp_path):
    proc = run_cli("genlab-train", "model=gan", *TINY, *data_args(kind, tmp_path),
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    ok(proc)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_cli_bad_zip_is_one_line_exit_2(run_cli, tmp_path):
    (tmp_path / "not.zip").write_text("hello")
    proc = run_cli("genlab-train", *TINY, "data=zip", f"data.path={tmp_path / 'not.zip'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"genlab-train: error: data.path={tmp_path / 'not.zip'}: not a readable "
                     "zip file (File is not a zip file)"]  # fmt: skip


def test_cli_corrupt_member_in_a_worker_is_one_line_exit_2(run_cli, tmp_path):
    """Found only when a DataLoader worker reads it, mid-training: still one line, exit 2."""
    path = labelled_zip(tmp_path)
    with zipfile.ZipFile(path) as zf:
        name = sorted(zf.namelist())[7]
    corrupt_member(path, name)
    proc = run_cli("genlab-train", "model=gan", *TINY, "data=zip", f"data.path={path}",
                   "data.image_size=32", "data.channels=1", "data.num_workers=1",
                   "data.val_fraction=0", "trainer.max_epochs=1", "trainer.limit_train_batches=5",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"genlab-train: error: data.path={path}: member {name} is corrupt")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["zip", "hf"])  # three tiny in-process runs: 6-8 s each
def test_sigterm_mid_epoch_then_auto_resume_is_bit_exact(kind, tmp_path, caplog):
    """As tests/test_reliability.py's test of the same name, over data=zip and data=hf."""
    from tests.test_reliability import sigterm_resume_cycle

    overrides = [*TINY, "model=gan", *data_args(kind, tmp_path), "seed=7",
                 "trainer.limit_train_batches=4", "trainer.max_epochs=2",
                 "callbacks.progress_bar=null"]  # fmt: skip
    sigterm_resume_cycle(overrides, tmp_path)


@pytest.mark.slow  # three CLI runs each: ~15 s
@pytest.mark.parametrize("kind", ["zip", "hf"])
def test_sigkill_mid_epoch_then_resume_is_bit_exact(kind, tmp_path):
    """As tests/test_reliability.py's SIGKILL test, over data=zip and data=hf read by a
    DataLoader worker: killed in epoch 1 after the mid-epoch checkpoint of batch 4, the run
    resumed from that last.ckpt ends as the uninterrupted one, bit for bit."""
    from tests.test_reliability import sigkill_resume_cycle

    args = [*TINY, "model=gan", *data_args(kind, tmp_path, 200, 1), "seed=7",
            "trainer.deterministic=true", "trainer.limit_train_batches=10",
            "trainer.val_check_interval=5", "trainer.max_epochs=2"]  # fmt: skip
    sigkill_resume_cycle(args, tmp_path, 7, (1, 4))  # last.ckpt: after batch 4's validation
