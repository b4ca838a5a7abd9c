"""Resuming mid-epoch without reading the epoch again: a sampler that can start an epoch part-way, per-sample seeds.

Composer resumes a run stopped mid-epoch by iterating the train loader over every batch already trained in that
epoch (``Trainer(spin_dataloaders=True)``, its default): each image is read, decoded and augmented only to be thrown
away, minutes of a restart at ImageNet scale. ``ResumableSampler`` is the ``DistributedSampler`` Composer builds
(same order, same share per process) with one addition: ``start_epoch_at`` makes the next pass over an epoch begin
after the samples this process has already trained on. ``callbacks.preemption.ExactResume`` sets it from the
checkpoint's timestamp, and train.py turns Composer's spinning off when the loader has this sampler.

Skipping samples would change the augmentations of the rest if they came from a DataLoader worker's random stream,
which depends on every sample that worker drew before (and on the worker count). So each index this sampler yields
is a ``SampleKey``: an ``int`` (any map-style dataset reads it) that carries a seed derived from (seed, epoch,
index), and ``data.samples.LabelledImages`` seeds torch, numpy and ``random`` from it before transforming the
sample. A sample gets the same crop in the same epoch however it is reached (after a skip, with any worker count,
over any number of processes sharing the global batch) and a different crop in every other epoch. Processes hold
different indices in an epoch, so they augment differently; the exception is the handful of samples
DistributedSampler repeats to even out the shares when ``drop_last`` is off, which get the same crop twice.

``repeats`` > 1 is repeated augmentation (Hoffer et al. 2020; DeiT's and torchvision's ``RASampler``, which
torchvision's ResNet-50 V2 recipe trains with at 4): each epoch's shuffled order holds every index ``repeats`` times
in a row, dealt out round-robin over the processes, so the copies of an image land on different processes (or, on
one process, in the same batch), each with its own crop: the repeat number is part of the sample's seed. An epoch
is then as long as torchvision's: the dataset rounded down to a multiple of 256, over the processes
(``epoch_share``), so it visits about 1 / ``repeats`` of the distinct images.

Streamed datasets (``IterableDataset``) have no sampler and cannot skip: Composer spins them as before.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from composer.utils import dist
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

# np.random.seed takes 32 bits (seeding from 64 costs 6x more): about one pair of samples in 4 billion shares
# numpy's draws (RandAugment's choices), on different images with different crops.
NUMPY_SEED_MASK = 2**32 - 1


# torchvision's RASampler rounds each epoch down to a multiple of this many images before sharing it out.
REPEATED_EPOCH_MULTIPLE = 256


def sample_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (its ``repeat``-th copy under repeated augmentation):
    64 bits of BLAKE2b over the numbers.

    A hash, not arithmetic, so nearby keys give unrelated seeds and no two keys share one in practice. The first
    copy hashes the three numbers alone, so seeds do not change when repeats are off.
    """
    numbers = (seed, epoch, index) if repeat == 0 else (seed, epoch, index, repeat)
    digest = hashlib.blake2b(struct.pack(f"<{len(numbers)}q", *numbers), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def epoch_share(dataset_size: int, world_size: int, *, drop_last: bool, repeats: int = 1) -> int:
    """Samples one process reads per epoch: ``DistributedSampler``'s share, or ``RASampler``'s under ``repeats`` > 1.

    The one rule the loaders and the planner both count batches by.
    """
    if repeats > 1:
        return dataset_size // REPEATED_EPOCH_MULTIPLE * REPEATED_EPOCH_MULTIPLE // world_size
    if drop_last and dataset_size % world_size:
        return dataset_size // world_size
    return math.ceil(dataset_size / world_size)


class SampleKey(int):
    """A dataset index that carries its sample's augmentation seed (``int(key)`` is the index)."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SampleKey:
        key = super().__new__(cls, index)
        key.seed = seed
        return key

    def __reduce__(self) -> tuple[type[SampleKey], tuple[int, int]]:
        return (SampleKey, (int(self), self.seed))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run one sample's transform with torch's CPU generator, numpy's global RNG and ``random`` seeded by ``seed``.

    In a DataLoader worker the RNGs are just reseeded: nothing else reads them. In the main process
    (``data.num_workers=0``) they are put back afterwards, so loading data leaves the training RNG (MixUp, CutMix,
    stochastic depth) exactly where it would be with workers, and runs match whatever the worker count.
    """
    if get_worker_info() is not None:
        _seed_all(seed)
        yield
        return
    torch_state = torch.default_generator.get_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    _seed_all(seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _seed_all(seed: int) -> None:
    """Seed the three global CPU RNGs the transforms use (torchvision: torch; Composer's RandAugment: numpy).

    ``torch.default_generator`` rather than ``torch.manual_seed``, which would also reseed every GPU.
    """
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed & NUMPY_SEED_MASK)
    random.seed(seed)


class ResumableSampler(DistributedSampler):
    """Composer's ``DistributedSampler`` whose next pass over an epoch can start after the samples already seen.

    Yields ``SampleKey`` indices. ``len()`` stays the whole epoch's share, which is what Composer counts an epoch's
    batches against (``batch_in_epoch`` continues from the checkpoint's). ``repeats`` > 1 deals the epoch out as
    torchvision's ``RASampler`` does (the module docstring says how).
    """

    def __init__(
        self, dataset: Dataset, *, shuffle: bool, drop_last: bool, seed: int, repeats: int = 1
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size(),
            rank=dist.get_global_rank(),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, not {repeats}")
        self.repeats = repeats
        self._start: tuple[int, int] | None = None

    def __len__(self) -> int:
        size = len(self.dataset)  # type: ignore[arg-type]
        return epoch_share(size, self.num_replicas, drop_last=self.drop_last, repeats=self.repeats)

    def _keys(self) -> list[SampleKey]:
        """This epoch's share, each index with its seed: DistributedSampler's, or RASampler's under repeats."""
        epoch = self.epoch
        if self.repeats == 1:
            return [SampleKey(index, sample_seed(self.seed, epoch, index)) for index in super().__iter__()]
        size = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(size, generator=generator).tolist()
        else:
            order = list(range(size))
        # Each index `repeats` times in a row, padded to an even split, dealt round-robin (RASampler's order).
        copies = [(index, repeat) for index in order for repeat in range(self.repeats)]
        total = math.ceil(len(copies) / self.num_replicas) * self.num_replicas
        copies += copies[: total - len(copies)]
        share = copies[self.rank : total : self.num_replicas][: len(self)]
        return [SampleKey(index, sample_seed(self.seed, epoch, index, repeat)) for index, repeat in share]

    def start_epoch_at(self, epoch: int, samples: int) -> None:
        """Begin the next pass over ``epoch`` after this process's first ``samples`` samples (once)."""
        if samples < 0:
            raise ValueError(f"cannot start an epoch {samples} samples in")
        self._start = (epoch, samples)

    def __iter__(self) -> Iterator[Any]:
        keys = self._keys()
        if self._start is not None:
            start_epoch, samples = self._start
            self._start = None
            if start_epoch == self.epoch:
                keys = keys[samples:]
        return iter(keys)


def skips_seen_batches(dataloader: Any) -> bool:
    """Whether a resumed run can start this loader's epoch part-way (so Composer need not spin through it)."""
    return isinstance(getattr(dataloader, "sampler", None), ResumableSampler)
