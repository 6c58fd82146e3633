"""data=streaming: train from the chunks genlab-prepare format=litdata wrote
(``genlab.data.chunks``), in a directory or on S3.

``StreamingDataModule`` trains from them with LitData's StreamingDataset and StreamingDataLoader
(sharded across DDP ranks and workers, shuffled by the run's seed, resumable mid-epoch: Lightning
checkpoints the loader's ``state_dict``). Each chunk is hashed when this process first reads it
(after LitData downloaded it) and compared with the manifest: a flipped or truncated chunk stops
the run in one line naming the file. LitData chunks carry no checksum of their own.

Validation: the first ``round(val_fraction * count)`` items, a uniform sample (the chunks hold a
seeded permutation of the source), the same on every rank; training streams the rest.
"""

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import litdata.streaming.downloader as litdata_downloader
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from genlab.data.chunks import STREAM_MANIFEST, is_remote, read_stream_manifest
from genlab.data.datamodule import ImageDataModule, Split
from genlab.data.datasets import collate
from genlab.data.prepared import file_sha256, manifest_hash
from genlab.data.transforms import to_float
from genlab.errors import GenlabError

# LitData GETs chunks through obstore, whose client refuses http:// endpoints unless told (a
# loopback or on-premises S3 such as MinIO); https endpoints are unaffected by the flag.
litdata_downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True
# LitData logs its prefetch depth at INFO at every epoch's start: noise in genlab's run log
logging.getLogger("litdata.streaming.async_prefetch").setLevel(logging.WARNING)
# how long a reader waits for a chunk LitData's prefetch thread is downloading
CHUNK_WAIT_S = 600.0


class VerifiedStream(StreamingDataset):
    """A StreamingDataset whose items are ``(image, label)`` in genlab's contract, each chunk
    checked against the manifest's sha256 before the first item is read from it.

    Items: float (C, H, W) in [-1, 1] and a 0-dim long label. Chunks are hashed once per
    process and per file on disk (a chunk LitData evicted and downloaded again is hashed again).
    """

    def __init__(self, *args: Any, chunk_sha256: dict[str, str], where: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.chunk_sha256, self.where = chunk_sha256, where
        self.verified: set[tuple[int, int, int]] = set()

    def __getitem__(self, index: ChunkedIndex | int) -> tuple[Tensor, Tensor]:
        if self.cache is None:
            from litdata.utilities.env import _WorkerEnv

            self.worker_env = _WorkerEnv.detect()
            self.cache = self._create_cache(worker_env=self.worker_env)
            self.shuffler = self._create_shuffler(self.cache)
        if isinstance(index, int):  # random access (validation, reference images)
            index = ChunkedIndex(*self.cache._get_chunk_index_from_index(index))
            self.on_demand_bytes = False  # whole chunks, so each can be hashed
        self.verify(index.chunk_index)
        item = super().__getitem__(index)
        image = torch.from_numpy(np.ascontiguousarray(item["image"]))  # (H, W, C) uint8
        return to_float(image.permute(2, 0, 1)), torch.tensor(item["label"], dtype=torch.long)

    def verify(self, chunk_index: int) -> None:
        """Hash chunk ``chunk_index`` on disk if this process has not yet: a mismatch stops."""
        config = self.cache._reader.config
        path = config[ChunkedIndex(index=-1, chunk_index=chunk_index)][0]
        name = os.path.basename(path)
        if not os.path.exists(path):
            # fetch it now, not in LitData's reader: a truncated chunk would never count as
            # downloaded there, and the read would wait for it instead of failing
            config.download_chunk_from_index(chunk_index, skip_lock=True)
            deadline = time.monotonic() + CHUNK_WAIT_S
            while not os.path.exists(path):  # LitData's prefetch thread holds its lock
                if time.monotonic() > deadline:
                    raise GenlabError(f"data.path={self.where}: {name} did not arrive in "
                                      f"{CHUNK_WAIT_S:.0f} s")  # fmt: skip
                time.sleep(0.01)
        stat = os.stat(path)
        key = (chunk_index, stat.st_ino, stat.st_mtime_ns)
        if key in self.verified:
            return
        expected = self.chunk_sha256.get(name)
        if expected is None:
            raise GenlabError(f"{self.where}/{name}: not in {STREAM_MANIFEST}; prepare it again")
        if file_sha256(Path(path)) != expected:
            if is_remote(self.where):  # a cached copy (never the user's own file): the next
                os.remove(path)  # run downloads it afresh
            raise GenlabError(
                f"{self.where}/{name}: corrupt chunk (sha256 differs from {STREAM_MANIFEST}); "
                "prepare the dataset again"
            )
        self.verified.add(key)


class StreamImages(Dataset):
    """Items ``start .. stop - 1`` of a VerifiedStream in stored order, map-style: validation
    and the metrics' real images, the same on every rank."""

    def __init__(self, stream: VerifiedStream, start: int, stop: int) -> None:
        self.stream, self.start, self.stop = stream, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.stream[self.start + i]


class ResumableStreamingLoader(StreamingDataLoader):
    """LitData's loader, whose restored position applies to one epoch only.

    LitData keeps ``restore`` set until a restored epoch runs to its end, so an epoch cut short
    (``trainer.limit_train_batches``, ``val_check_interval`` stops) would make the next epoch
    resume from the checkpoint's position again instead of starting afresh.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._restored_epoch_begun = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._restored_epoch_begun = False

    def __iter__(self) -> Any:
        if self.restore and self._restored_epoch_begun:
            self.restore = False  # the restored epoch ended early: this one starts afresh
        self._restored_epoch_begun = self.restore
        return super().__iter__()


class StreamingDataModule(ImageDataModule):
    """``data=streaming``: train from LitData chunks (a directory or s3://) genlab-prepare wrote.

    Args:
        path: the split's directory or URL (``genlab-prepare format=litdata out=X`` writes
            ``X/train``); a path holding ``train/`` is read as its ``train`` split.
        storage_options: boto3 client options (endpoint_url, aws_access_key_id,
            aws_secret_access_key, region_name); redacted from every logged config.
        cache_dir: where LitData keeps downloaded chunks, shared by runs; each dataset URL gets
            its own subdirectory. ``max_cache_size`` bounds it: LitData deletes consumed chunks
            beyond it.
        val_fraction: the first ``round(val_fraction * count)`` stored items (a seeded uniform
            sample) are the validation set; training streams the rest. Test is the ``test``
            split beside ``train`` where genlab-prepare wrote one (torchvision sets), else val.
    """

    def __init__(
        self,
        path: str,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str = "~/.cache/genlab/litdata",
        max_cache_size: str = "25GB",
        image_size: int = 64,
        channels: int = 3,
        num_classes: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        limit: int | None = None,
        pin_memory: bool | None = None,
        drop_last: bool = True,
        source: str = "streaming",
        split_seed: int = 0,
    ) -> None:
        if source != "streaming":
            raise GenlabError(f"data.source={source!r}: StreamingDataModule reads streaming")
        if not isinstance(path, str) or not path:
            raise GenlabError("data.path: set it to genlab-prepare format=litdata's split (a "
                              "directory or s3://bucket/prefix/train)")  # fmt: skip
        super().__init__(
            source="streaming", image_size=image_size, channels=channels, batch_size=batch_size,
            num_workers=num_workers, val_fraction=val_fraction, split_seed=split_seed,
            limit=limit, pin_memory=pin_memory, drop_last=drop_last,
        )  # fmt: skip
        if not isinstance(storage_options, (Mapping, type(None))):  # "<redacted>" in a saved config
            raise GenlabError(f"data.storage_options={storage_options!r} must be a mapping (saved "
                              "configs hold it redacted: pass it again)")  # fmt: skip
        self.storage_options = dict(storage_options or {})
        self.cache_dir = str(Path(cache_dir).expanduser())
        self.max_cache_size = max_cache_size
        self.path = self.find_split(path.rstrip("/"))
        self.manifest = read_stream_manifest(self.path, self.storage_options)
        for key in ("image_size", "channels"):
            if self.manifest[key] != getattr(self, key):
                raise GenlabError(
                    f"data.{key}={getattr(self, key)} but {self.path}/{STREAM_MANIFEST} says "
                    f"{self.manifest[key]}; set data.{key}={self.manifest[key]}"
                )
        self.num_classes = self.manifest["num_classes"]
        if num_classes is not None and num_classes != self.num_classes:
            raise GenlabError(f"data.num_classes={num_classes} but {self.path}/{STREAM_MANIFEST} "
                              f"says {self.num_classes}")  # fmt: skip
        self.test_path = (
            f"{self.path[: -len('train')]}test" if self.path.endswith("/train") else None
        )
        self.test_manifest = self.test_path and read_stream_manifest(
            self.test_path, self.storage_options, missing_ok=True
        )
        for key in ("image_size", "channels"):
            if self.test_manifest and self.test_manifest[key] != self.manifest[key]:
                raise GenlabError(
                    f"{self.test_path}/{STREAM_MANIFEST}: {key} {self.test_manifest[key]}, "
                    f"train's {self.manifest[key]}"
                )
        # the reference-statistics cache key: the content (chunk hashes), not where it lives
        self.manifest_sha256 = manifest_hash(self.manifest)
        self.content_sha256 = manifest_hash({"train": self.manifest, "test": self.test_manifest})
        self.root = Path("/")  # data_key resolves it; the content hash above names the data
        count = self.manifest["count"] if limit is None else min(limit, self.manifest["count"])
        self.n_val = max(1, round(val_fraction * count)) if val_fraction > 0 else 0
        self.count = count
        if self.n_val >= count:
            raise GenlabError(f"data.val_fraction={val_fraction} leaves no training images "
                              f"out of {count}")  # fmt: skip
        if drop_last and count - self.n_val < batch_size:
            raise GenlabError(
                f"data.batch_size={batch_size} exceeds the {count - self.n_val} training images; "
                "with data.drop_last=true no batch would remain"
            )

    def find_split(self, path: str) -> str:
        """``path`` when it holds a manifest, else ``path/train`` when that does."""
        try:
            read_stream_manifest(path, self.storage_options)
            return path
        except GenlabError as first:
            try:
                read_stream_manifest(f"{path}/train", self.storage_options)
            except GenlabError:
                raise first from None
            return f"{path}/train"

    def stream(self, shuffle: bool, test: bool = False) -> VerifiedStream:
        """A fresh VerifiedStream of the split (built when needed: after DDP has started, so
        LitData shards it by this process's rank), or of the test split."""
        path = self.test_path if test else self.path
        local = not is_remote(path)
        return VerifiedStream(
            str(Path(path).expanduser()) if local else path,
            cache_dir=None if local else self.cache_dir,
            shuffle=shuffle,
            drop_last=self.drop_last if shuffle else False,
            seed=self.shuffle_seed % 2**32,
            storage_options=self.storage_options,
            max_cache_size=self.max_cache_size,
            # one item deserialised per read: LitData's default deserialises a window of up to
            # 256 items around each one and keeps it for the next read, which shuffled reads
            # mostly miss (10x fewer images/s here: experiments/benchmarks/results.md, 3b); the
            # whole chunk is then shuffled, not blocks of 256 kept together for that window
            batch_decode=0,
            item_shuffle_window="full",
            chunk_sha256=(self.test_manifest if test else self.manifest)["chunks"],
            where=path,
        )

    def setup(self, stage: str | None = None) -> None:
        """Validation reads items 0 .. n_val - 1, training streams the others; test is the test
        split's items, or validation's."""
        if "val" not in self.splits:
            reader = self.stream(shuffle=False)
            self.splits["val"] = StreamImages(reader, 0, self.n_val)
            self.splits["train"] = StreamImages(reader, self.n_val, self.count)
            self.splits["test"] = self.splits["val"]
            if self.test_manifest:
                tests = self.stream(shuffle=False, test=True)
                self.splits["test"] = StreamImages(tests, 0, self.test_manifest["count"])

    def dataset(self, split: Split) -> Dataset:
        """Map-style views (validation, metrics' real images): same items on every rank."""
        self.setup()
        return self.splits[split]

    @property
    def has_test_split(self) -> bool:
        return bool(self.test_manifest)

    def known_factors(self) -> None:
        return None

    def train_dataloader(self) -> DataLoader:
        """LitData's loader over items n_val .. count - 1: sharded by rank and worker, shuffled
        by (run seed, epoch), its state checkpointed by Lightning."""
        train = self.stream(shuffle=True)
        if self.n_val or self.count < self.manifest["count"]:
            train = train.subset(slice(self.n_val, self.count))
        return ResumableStreamingLoader(
            train,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            collate_fn=collate,
            drop_last=self.drop_last,
            # torch's loader draws its base seed from the global RNG at each iter() unless given
            # a generator: a resumed run calls iter() once more than the run it continues
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )
