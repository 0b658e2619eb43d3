"""Level caches: the frozen prefix of a phase-wise run computed once, not once per epoch.

Level 0 is the loader's images; level ``k`` is the output of blocks ``1..k``. When a phase first
asks for level ``k`` (block ``k`` frozen, its best weights restored), :class:`FeatureLevels`
builds the level-k cache of every split with one streaming pass of block ``k`` over the level
``k-1`` cache (for level 1, over the images), then frees level ``k-1``. The phase reads level ``k``
through :class:`CachedFeatures`, which yields batches the way the trainer's image loader would.

Level 0 itself is kept only where :class:`LevelSettings` says so (``images``: no augmentation, and
the images fit in memory): the loader's decoded, normalized images, in float32, so that the phases
that train block 1 (phase 1, every epoch of a ``standard`` run) read exactly what the loader would
give them without decoding every file again each epoch, and level 1 is built from memory.

Training samples are cached as ``V`` views: view ``v`` of sample ``i`` is the loader's
reproducible augmentation view ``v`` (``loader.set_view(v)``). Epoch ``e`` draws one view per
sample from ``(seed, e)`` and visits the samples in the order the training loader itself uses
(the feed's sampler), so with one view and no augmentation a cached epoch sees the same batches
as a recomputed one. Validation and test are cached un-augmented, one view.

Each cache is identified by a fingerprint over the frozen blocks' exact weights, the model, the
preprocessing and augmentation, the dataset files and the cache's :class:`CacheSpec`, so a resumed
run (or another run sharing ``cache_dir``) reuses a committed disk cache and anything stale is
rebuilt.

With several processes, each rank caches its own fixed shard of every split: its caches are named,
and fingerprinted, as that rank's part of the split (``level2-train-rank1of2``), so ranks sharing
``cache_dir`` never share a file or a build lock, and no file is served to another rank or to a
run with another number of processes. A build runs no collective, so a rank slower to build only
delays the phase's first collective, and a rank whose build raises exits like any failing rank.

This module knows torch and the cache; the model is read through the ``BlockwiseNet`` face
(``blocks``, ``block_output_shapes``, ``input_shape``, ``name``, ``config``), the data through
:class:`SplitFeed`.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ContextManager

import numpy as np
import torch
from tqdm import tqdm

from phasenets.cache.feature_cache import FeatureCache
from phasenets.cache.fileformat import CacheFormatError
from phasenets.cache.fingerprint import cache_fingerprint
from phasenets.cache.spec import CacheSpec
from phasenets.cache.storage import copy_to_device
from phasenets.cache.tiers import CacheTierError, Placement, Tier, format_bytes

__all__ = ["CachedFeatures", "FeatureLevels", "LevelRecord", "LevelSettings", "SplitFeed", "default_cache_views"]

log = logging.getLogger("phasenets")

DEFAULT_AUGMENTED_VIEWS = 4
PREFETCH_BATCHES = 2
FINGERPRINT_CHARS = 16  # of the fingerprint's 64 hex digits, in a cache file's name (64 bits)
_VIEW_STREAM = 1  # keeps the per-epoch view draw independent of the sampler's (seed, epoch) shuffle


def default_cache_views(augmenting: bool, max_epochs: int) -> int:
    """One view without augmentation (it is exact); with augmentation, 4 views, or fewer when a
    phase has fewer epochs than that.

    Building V views costs V forward passes of each frozen block, while recomputing costs one per
    epoch per frozen block: 4 views keep the build below the epochs of a typical phase (10-100)
    and give every sample 4 distinct augmentations to draw from. A phase of E < 4 epochs can
    draw at most E views of a sample, so more would be built and never read.
    """
    return min(DEFAULT_AUGMENTED_VIEWS, max_epochs) if augmenting else 1


@dataclass(frozen=True)
class LevelSettings:
    """How a run's level caches are kept: ``views`` per augmented training sample, the storage
    ``dtype``, and where (``placement``: the tier mode, the memory budget, the disk folder).

    ``shared``: every level is also committed to a file in the placement's ``cache_dir``, for
    other runs sharing the folder (a memory-tier level is then built through the file and read
    from memory): a run finding the file reuses it, and one arriving while another process builds
    it waits for that build instead of making its own. Otherwise only the disk tier writes files.
    """

    views: int
    dtype: str
    placement: Placement
    shared: bool = False
    images: bool = False  # keep level 0 (the images) too: only exact (unaugmented), only in memory


IMAGE_DTYPE = "fp32"  # level 0's storage: the loader's own values, so reading it changes no bit of training


@dataclass(frozen=True)
class LevelRecord:
    """One level cache a run held: level ``level`` (0: the images) of ``split``, where it lived,
    in what dtype, how many views and bytes, and whether it was reused from a committed file."""

    level: int
    split: str
    tier: str
    dtype: str
    views: int
    nbytes: int
    reused: bool


@dataclass(frozen=True)
class SplitFeed:
    """What the level caches of one split are built from and read back with.

    ``make_loader()`` returns a loader over every sample of this process's shard of the split
    (no dropped batch, ``set_view`` to pin a view) for the build; ``make_sampler()`` the training
    loop's own batch order over that shard (``epoch``, ``shard()``, ``batch_size``,
    ``drop_last``, ``len()``), so that cached epochs visit the samples in the same order;
    ``manifest`` lists the shard's files in order (padding included); ``preprocessing`` describes
    how the images are made (it goes into the fingerprint).
    """

    labels: torch.Tensor
    manifest: list[tuple[str, int, int]]
    make_loader: Callable[[], Any]
    make_sampler: Callable[[], Any]
    preprocessing: dict[str, Any]
    augmented: bool


class CachedFeatures:
    """One split's level-k features, batched like the training loop's loader.

    Yields ``(features, labels, indices)``. ``wait_seconds`` is the time the last epoch's consumer
    spent blocked on the next batch (the gather the prefetcher did not hide), ``epoch_seconds``
    that epoch's wall time from the first request to the last batch; ``report(wait, seconds)``
    is called at the end of every epoch.
    """

    def __init__(self, cache: FeatureCache, labels: torch.Tensor, sampler, device: torch.device, *, seed: int,
                 report: Callable[[float, float], None] | None = None):
        self.cache = cache
        self.labels = copy_to_device(labels, device)
        self.sampler = sampler
        self.device = device
        self.seed = seed
        self.report = report
        self.wait_seconds = 0.0
        self.epoch_seconds = 0.0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch_views(self) -> torch.Tensor | None:
        """The view each sample is read at this epoch (None: view 0 for all)."""
        if self.cache.views == 1:
            return None
        rng = np.random.default_rng([self.seed, self.sampler.epoch, _VIEW_STREAM])
        return torch.from_numpy(rng.integers(0, self.cache.views, self.cache.num_samples))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.from_numpy(self.sampler.shard())
        views = self.epoch_views()
        batches = self.cache.batches(order, self.sampler.batch_size, views=None if views is None else views[order],
                                     device=self.device, prefetch=PREFETCH_BATCHES, drop_last=self.sampler.drop_last)
        self.wait_seconds = 0.0
        started = time.perf_counter()
        while True:
            waiting = time.perf_counter()
            batch = next(batches, None)
            self.wait_seconds += time.perf_counter() - waiting
            if batch is None:
                break
            features, indices = batch
            yield features, self.labels[indices], indices
        self.epoch_seconds = time.perf_counter() - started
        if self.report is not None:
            self.report(self.wait_seconds, self.epoch_seconds)

    @property
    def wait_fraction(self) -> float:
        """The share of the last epoch spent waiting on cached batches."""
        return self.wait_seconds / self.epoch_seconds if self.epoch_seconds > 0 else 0.0


class FeatureLevels:
    """The level caches of one run: :meth:`features` hands out a split's level-k features.

    Args:
        model: the ``BlockwiseNet`` being trained (its blocks are read, never changed).
        feeds: one :class:`SplitFeed` per split (``train``, ``validation``, ``test``).
        settings: views, storage dtype and placement of the caches.
        device: where features are delivered (and where the frozen blocks run).
        autocast: the trainer's mixed-precision context: the cache holds what the prefix
            would compute under it.
        seed: the run's seed (view draws and build order).
        rank_tag: ``""`` in one process, else this rank's part of a split (``"-rank1of2"``):
            it goes into every cache's name and fingerprint.
        info: the progress logger (rank 0's); ``show_progress`` turns on the build's bars.
    """

    def __init__(self, model: torch.nn.Module, feeds: dict[str, SplitFeed], settings: LevelSettings,
                 device: torch.device, *, autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 seed: int = 0, rank_tag: str = "", info: Callable[..., None] = log.info,
                 show_progress: bool = False):
        self.model = model
        self.feeds = feeds
        self.settings = settings
        self.device = device
        self.autocast = autocast
        self.seed = seed
        self.rank_tag = rank_tag
        self.info = info
        self.show_progress = show_progress
        self.level: int | None = None  # the level held in self.caches (None: none)
        self.caches: dict[str, FeatureCache] = {}
        self.builds = 0  # caches built (a reused committed file does not count)
        self.reuses = 0
        self.records: list[LevelRecord] = []  # every level cache held, in the order they were made

    # ------------------------------------------------------------------ reading

    @functools.cached_property
    def keeps_images(self) -> bool:
        """Whether level 0 is cached: ``settings.images`` asks for it, and the images of every
        split fit in memory (device or host, within the placement's budget and headroom). Where
        they do not, the phases that train block 1 read the loader, as without a cache."""
        if not self.settings.images:
            return False
        nbytes = sum(self._spec(0, split).nbytes for split in self.feeds)
        try:
            return self.settings.placement.tier_for(nbytes) in (Tier.CUDA, Tier.HOST)
        except CacheTierError:
            return False

    def features(self, split: str, level: int,
                 report: Callable[[float, float], None] | None = None) -> CachedFeatures:
        """The output of blocks ``1..level`` for every sample of ``split``, batched as the
        training loop batches it; the level is built (or reused) on first request."""
        if level < 0 or (level == 0 and not self.keeps_images):
            raise ValueError(f"level {level} is not cached: levels start at 1, or at 0 (the images) where "
                             "keeps_images says so")
        self._advance_to(level)
        feed = self.feeds[split]
        return CachedFeatures(self.caches[split], feed.labels, feed.make_sampler(), self.device, seed=self.seed,
                              report=report)

    # ------------------------------------------------------------------ building

    def _advance_to(self, level: int) -> None:
        """Hold level ``level`` for every split, then free the level held before."""
        if level == self.level:
            return
        held = {split: self._level_cache(level, split) for split in self.feeds}
        self.close()
        self.caches, self.level = held, level

    def _level_cache(self, level: int, split: str) -> FeatureCache:
        """Level ``level`` of ``split``: the committed file of its fingerprint where there is one,
        else built by block ``level`` from level ``level - 1`` (``_fill``)."""
        spec = self._spec(level, split)
        fingerprint = self._fingerprint(level, split, spec)
        # named by its fingerprint: runs that differ (a seed, a weight) keep files of their own in a
        # shared folder, and identical runs find each other's
        name = f"level{level}-{self._part(split)}-{fingerprint[:FINGERPRINT_CHARS]}"
        started = time.perf_counter()
        tier = self.settings.placement.tier_for(spec.nbytes)
        builds = self.builds
        if level == 0:  # only ever in memory (keeps_images): decoded pixels on disk would outweigh the files
            cache = self._build_in_memory(spec, fingerprint, tier, level, split)
        elif tier is Tier.DISK or self.settings.shared:
            cache = FeatureCache.open_or_build(lambda new: self._fill(new, level, split),
                                               cache_dir=self.settings.placement.cache_dir, fingerprint=fingerprint,
                                               name=name, spec=spec, tier=tier)
        else:
            cache = self._open_committed(name, fingerprint, tier) or self._build_in_memory(spec, fingerprint,
                                                                                           tier, level, split)
        reused = self.builds == builds
        self.reuses += reused
        self.records.append(LevelRecord(level, split, cache.tier.value, spec.dtype, spec.views, cache.nbytes, reused))
        self.info("level %d cache (%s%s): %s tier, %d samples x %d view(s) in %s, %s, %s in %.1fs", level,
                  "the images, " if level == 0 else "", self._part(split), cache.tier.value, spec.num_samples,
                  spec.views, spec.dtype, format_bytes(cache.nbytes), "reused" if reused else "built",
                  time.perf_counter() - started)
        return cache

    def _spec(self, level: int, split: str) -> CacheSpec:
        """What level ``level`` of ``split`` holds: the images in float32 (level 0), else block
        ``level``'s output in the storage dtype, ``views`` of each sample where the split is augmented."""
        feed = self.feeds[split]
        if level == 0:
            return CacheSpec(len(feed.labels), self.model.input_shape, 1, IMAGE_DTYPE)
        return CacheSpec(len(feed.labels), self.model.block_output_shapes[level - 1],
                         self.settings.views if feed.augmented else 1, self.settings.dtype)

    def _open_committed(self, name: str, fingerprint: str, tier: Tier) -> FeatureCache | None:
        """The committed file of this fingerprint under cache_dir (a resumed run's, or another
        run's sharing the folder), loaded into ``tier``; None when there is none to trust."""
        cache_dir = self.settings.placement.cache_dir
        if cache_dir is None:
            return None
        try:
            return FeatureCache.open(cache_dir, fingerprint, name, tier=tier)
        except CacheFormatError as error:
            log.warning("rebuilding the feature cache: %s", error)
            return None

    def _build_in_memory(self, spec: CacheSpec, fingerprint: str, tier: Tier, level: int,
                         split: str) -> FeatureCache:
        cache = FeatureCache.create(spec=spec, fingerprint=fingerprint, tier=tier,
                                    budget_bytes=self.settings.placement.budget_bytes)
        self._fill(cache, level, split)
        cache.commit()
        return cache

    @torch.no_grad()
    def _fill(self, cache: FeatureCache, level: int, split: str) -> None:
        """One streaming pass of block ``level`` over every view of level ``level - 1``; level 0:
        the images, as the loader makes them.

        One block at a time, whatever level the run starts from (a resumed run, a reused frozen
        prefix): each level is rounded to the storage dtype before the next block reads it, so a
        fingerprint names the same values however the run got there.
        """
        self.builds += 1
        if level == 0:
            with tqdm(total=len(self.feeds[split].labels), desc=f"caching the images ({split})", unit="img",
                      leave=False, disable=not self.show_progress) as bar:
                for images, indices, view in self._images(split, cache.views):
                    cache.write(indices, images, view=view)
                    bar.update(len(indices))
            return
        block = self.model.blocks[level - 1]
        mode = block.training
        block.eval()  # a frozen block: batch-norm statistics are used, never updated
        try:
            with self._inputs_of(level, split) as previous:
                batches = (self._images(split, cache.views) if previous is None
                           else self._batches_of(previous, split, cache.views))
                total = len(self.feeds[split].labels) * cache.views
                with tqdm(total=total, desc=f"caching level {level} ({split})", unit="img", leave=False,
                          disable=not self.show_progress) as bar:
                    for inputs, indices, view in batches:
                        with self.autocast():
                            inputs = block(inputs)
                        cache.write(indices, inputs, view=view)
                        bar.update(len(indices))
        finally:
            block.train(mode)

    @contextlib.contextmanager
    def _inputs_of(self, level: int, split: str) -> Iterator[FeatureCache | None]:
        """What block ``level`` reads to build its level: the level held now where it is level
        ``level - 1`` (the images, for level 1, where they are kept), None for the images read
        from the loader, or else level ``level - 1`` opened or built for the purpose and released
        once read."""
        if self.level == level - 1:
            yield self.caches[split]
        elif level == 1:
            yield None
        else:
            previous = self._level_cache(level - 1, split)
            try:
                yield previous
            finally:
                previous.close()

    def _images(self, split: str, views: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        loader = self.feeds[split].make_loader()
        for view in range(views):
            loader.set_view(view)
            for images, _, indices in loader:
                yield images.to(self.device, non_blocking=True), indices, view

    def _batches_of(self, previous: FeatureCache, split: str,
                    views: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        # a shuffled order: an int8 cache fixes its scale from the first batch, which should be typical
        order = torch.from_numpy(np.random.default_rng([self.seed, previous.num_samples]).permutation(previous.num_samples))
        batch_size = self.feeds[split].make_sampler().batch_size
        for view in range(views):
            for features, indices in previous.batches(order, batch_size, views=view, device=self.device,
                                                      prefetch=PREFETCH_BATCHES):
                yield features, indices, view

    def _part(self, split: str) -> str:
        """The part of ``split`` this process caches: all of it in one process, else its shard."""
        return f"{split}{self.rank_tag}"

    def _fingerprint(self, level: int, split: str, spec: CacheSpec) -> str:
        feed = self.feeds[split]
        frozen = [self.model.blocks[k] for k in range(level)]
        model_config = {
            "name": getattr(self.model, "name", "custom"), "config": getattr(self.model, "config", None),
            "input_shape": list(self.model.input_shape), "blocks": [repr(block) for block in frozen],
        }
        return cache_fingerprint([block.state_dict() for block in frozen], model_config,
                                 {**feed.preprocessing, "split": self._part(split)}, feed.manifest, spec)

    def close(self) -> None:
        """Release every cache held (disk files stay for reuse)."""
        for cache in self.caches.values():
            cache.close()
        self.caches, self.level = {}, None
