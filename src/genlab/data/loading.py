"""Resumable sampling and loading: an epoch's order is a function of (seed, epoch), and a loader
restored mid-epoch skips the batches it already handed out."""

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and worker seeds: a function of the run seed and epoch."""
    return (seed * 1_000_003 + epoch) % 2**63


class EpochShuffle(Sampler[int]):
    """Indices 0..n-1 in an order fixed by (seed, epoch); Lightning calls ``set_epoch``.

    Torch's RandomSampler draws its seed from the global RNG at each epoch, so the order depends
    on when the iterator is built; this draws from its own generator, so a resumed run sees
    the same order and takes the same noise.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


class Skipping(Sampler[int]):
    """``sampler``'s indices without the first ``skip`` of the next pass; forwards ``set_epoch``.

    Skipping indices reads no data and draws no random numbers.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler, self.skip, self.epoch = sampler, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)


class ResumableLoader(DataLoader):
    """A training DataLoader that resumes mid-epoch: Lightning checkpoints its ``state_dict``.

    The state is the epoch and the batches handed out in it. Restored, the loader skips those
    batches of that epoch (indices only) and goes on in the same order. Worker seeds come from
    ``generator`` reseeded per epoch, not from the global RNG, which a mid-epoch restart would
    otherwise draw from once more. Under DDP Lightning rebuilds it around a DistributedSampler;
    the skip then applies to this rank's batches.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, seed: int, **kwargs) -> None:
        if not isinstance(sampler, Skipping):
            sampler = Skipping(sampler)
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.position = {"epoch": 0, "batches": 0}
        self.restored: dict | None = None

    def state_dict(self) -> dict[str, int]:
        return dict(self.position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.restored = dict(state)

    def __iter__(self) -> Iterator:
        return self._batches()  # a generator: starts at the first batch, after set_epoch

    def _batches(self) -> Iterator:
        epoch = self.sampler.epoch
        restored, self.restored = self.restored, None
        done = restored["batches"] if restored and restored["epoch"] == epoch else 0
        self.sampler.skip = done * self.batch_size
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        self.position = {"epoch": epoch, "batches": done}
        for batch in super().__iter__():
            self.position["batches"] += 1  # before the yield: counts the batch being trained
            yield batch
