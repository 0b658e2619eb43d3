"""The PIL + torch ``DataLoader`` loader: the fallback where DALI is absent, and the T5 baseline.

Batches are ``(images, labels, indices)``. The sampler, which runs in the main process, decides
the order and the view of every sample and hands ``(index, view)`` pairs to the workers, so
``set_epoch``/``set_view`` take effect at once even with persistent workers.

Sharding (``world_size > 1``): the epoch's order is padded by wrapping around to a multiple of
``world_size`` (``drop_last``: truncated to one instead), then rank ``r`` takes every
``world_size``-th sample starting at ``r``. Shards are disjoint apart from the at most
``world_size - 1`` wrapped samples, cover the split, and give every rank the same number of
batches; an evaluation that must count each sample once can drop repeats by their indices.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from phasenets.data.images import BadImageError, load_image
from phasenets.data.layout import DatasetError, Sample
from phasenets.data.transforms import AugmentConfig, ImageTransform, Normalization


class ImageDataset(Dataset):
    """Map-style dataset over ``(index, view)`` keys returning ``(image, label, index)``."""

    def __init__(self, samples: Sequence[Sample], transform: ImageTransform) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, view = key
        sample = self.samples[index]
        try:
            image = load_image(sample.path, self.transform.in_channels)
        except BadImageError as error:  # one line naming the file (a one-argument error survives the workers)
            raise DatasetError(f"{error}; run `phasenets data check` to list bad files, or train with "
                               "--on-bad-image skip") from None
        return self.transform(image, index, view), sample.label, index


class ShardedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, view)`` for one rank; the order depends only on (seed, epoch)."""

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, seed: int,
                 drop_last: bool, rank: int, world_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if num_samples < world_size:
            raise ValueError(f"{num_samples} samples cannot be sharded over {world_size} ranks")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.view = 0, None

    @property
    def samples_per_rank(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return -(-self.samples_per_rank // self.batch_size)

    def epoch_order(self) -> np.ndarray:
        """This epoch's order of the whole split (before sharding)."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)

    def shard(self) -> np.ndarray:
        """The sample indices of this rank for this epoch, in order."""
        order = self.epoch_order()
        total = self.samples_per_rank * self.world_size
        order = np.resize(order, total)  # wraps around to pad, or truncates with drop_last
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        view = self.epoch if self.view is None else self.view
        indices = self.shard().tolist()
        for batch in range(len(self)):
            chunk = indices[batch * self.batch_size:(batch + 1) * self.batch_size]
            yield [(index, view) for index in chunk]


class SampledLoader:
    """What both loaders share over their ``ShardedBatchSampler`` (``self.sampler``): the epoch,
    the pinned augmentation view and the number of batches."""

    sampler: ShardedBatchSampler

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (deterministic in seed and epoch); unless a view is pinned, the
        augmentation view follows the epoch."""
        self.sampler.epoch = epoch

    def set_view(self, view: int | None) -> None:
        """Pin augmentation view ``view`` for every sample (cache building); None: view = epoch again."""
        if view is not None and view < 0:
            raise ValueError(f"view must be non-negative or None, got {view}")
        self.sampler.view = view

    def __len__(self) -> int:
        return len(self.sampler)


class TorchImageLoader(SampledLoader):
    """Iterable of ``(images, labels, indices)`` with the loader face in docs/internals.md."""

    def __init__(self, dataset: ImageDataset, sampler: ShardedBatchSampler, num_workers: int) -> None:
        self.dataset, self.sampler = dataset, sampler
        self._loader = DataLoader(
            dataset, batch_sampler=sampler, num_workers=num_workers,
            persistent_workers=num_workers > 0,  # keeps worker start-up out of every epoch
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_single_threaded_worker if num_workers > 0 else None,
        )
        self._workers_forked = False

    @property
    def num_samples(self) -> int:
        """Samples in the whole split (all ranks together, before any padding)."""
        return len(self.dataset)

    @property
    def description(self) -> str:
        """What makes the batches, for the trainer's log."""
        workers = self._loader.num_workers
        return f"PIL + DataLoader, {workers} worker process(es)" if workers else "PIL + DataLoader, in this process"

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._loader.num_workers > 0 and not self._workers_forked:
            # The (persistent) workers are forked from this process on the first iteration. Its
            # unreachable garbage goes first: a worker would otherwise finalize it, and some
            # finalizers hang in a forked child (a DALI pipeline's waits on threads that only
            # the parent has), taking the epoch down with them.
            gc.collect()
            self._workers_forked = True
        return iter(self._loader)


def build_torch_loader(samples: Sequence[Sample], *, image_size: int, in_channels: int,
                       augment: AugmentConfig | None, normalization: Normalization, batch_size: int,
                       shuffle: bool, seed: int, num_workers: int = 2, drop_last: bool = False,
                       rank: int = 0, world_size: int = 1) -> TorchImageLoader:
    """A PIL + DataLoader loader over ``samples``; see the module docstring for sharding."""
    if not samples:
        raise ValueError("cannot build a loader over an empty sample list")
    transform = ImageTransform(image_size=image_size, in_channels=in_channels, augment=augment,
                               normalization=normalization, seed=seed)
    sampler = ShardedBatchSampler(len(samples), batch_size, shuffle=shuffle, seed=seed,
                                  drop_last=drop_last, rank=rank, world_size=world_size)
    return TorchImageLoader(ImageDataset(samples, transform), sampler, num_workers)


def _single_threaded_worker(worker_id: int) -> None:
    # Each worker is one decoding process; intra-op threads would only fight over the cores.
    torch.set_num_threads(1)
