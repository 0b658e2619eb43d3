"""Level caches: the frozen prefix of a phase-wise run computed once, not once per epoch.

Level 0 is the loader's images; level ``k`` is the output of blocks ``1..k``. When phase ``k+1``
starts (block ``k`` frozen, its best weights restored), :class:`FeatureLevels` builds the level-k
cache of every split with one streaming pass of block ``k`` over the level ``k-1`` cache (for
level 1, over the images), then frees level ``k-1``. Phase ``k+1`` then reads its inputs from
level ``k`` through a :class:`CachedFeatureSource`, a drop-in for ``FrozenPrefixSource``.

Training samples are cached as ``V`` views: view ``v`` of sample ``i`` is the loader's
reproducible augmentation view ``v`` (``loader.set_view(v)``). Epoch ``e`` draws one view per
sample from ``(seed, e)`` and visits the samples in the order the loader itself would use
(``ShardedBatchSampler``), so with one view and no augmentation a cached epoch sees the same
batches as a recomputed one. Validation and test are cached un-augmented, one view.

Each cache is identified by a fingerprint over the frozen blocks' exact weights, the model, the
preprocessing and augmentation, the dataset files, the storage dtype and the view count, so a
resumed run (or another run sharing ``cache_dir``) reuses a committed disk cache and anything
stale is rebuilt.

With several processes, each rank caches its own fixed shard of every split (the trainer's
``_samples``): its caches are named, and fingerprinted, as that rank's part of the split
(``level2-train-rank1of2``), so ranks sharing ``cache_dir`` never share a file or a build lock,
and no file is served to another rank or to a run with another number of processes. Every rank
builds at the same phase start, on its own: a build runs no collective, so a rank slower to
build only delays the phase's first collective, and a rank whose build raises exits like any
failing rank.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch
from tqdm import tqdm

from phasenets.cache import FORMAT_VERSION, CacheFormatError, CacheTierError, FeatureCache, cache_fingerprint, choose_tier
from phasenets.config import ConfigError, TrainConfig
from phasenets.data.torch_loader import ShardedBatchSampler
from phasenets.train.plan import Phase

__all__ = ["CacheSettings", "CachedFeatureSource", "FeatureLevels", "SplitFeed", "default_cache_views"]

log = logging.getLogger("phasenets")

DEFAULT_AUGMENTED_VIEWS = 4
PREFETCH_BATCHES = 2
_VIEW_STREAM = 1  # keeps the per-epoch view draw independent of the loader's (seed, epoch) shuffle


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
class CacheSettings:
    """The cache options of a run, resolved: ``mode`` is ``off``, ``auto`` or a forced tier."""

    mode: str
    views: int
    dtype: str
    cache_dir: Path
    budget_bytes: int | None

    @classmethod
    def from_config(cls, config: TrainConfig, run_dir: Path, augmenting: bool) -> CacheSettings:
        views = config.cache_views or default_cache_views(augmenting, config.max_epochs)
        budget = None if config.cache_budget_gb is None else int(config.cache_budget_gb * 2**30)
        cache_dir = Path(config.cache_dir) if config.cache_dir is not None else run_dir / "cache"
        return cls(config.cache, views, config.cache_dtype, cache_dir, budget)


@dataclass
class SplitFeed:
    """What the level caches of one split are built from and read back with.

    ``make_loader()`` returns a loader over every sample of this process's shard of the split
    (no dropped batch) for the build; ``manifest`` lists that shard's files in order (padding
    included); ``batching`` holds the ``ShardedBatchSampler`` options of the training
    loop's own loader, so that cached epochs visit the samples in the same order;
    ``preprocessing`` describes how the images are made (it goes into the fingerprint).
    """

    labels: torch.Tensor
    manifest: list[tuple[str, int, int]]
    make_loader: Callable[[], Any]
    batching: dict[str, Any]
    preprocessing: dict[str, Any]
    augmented: bool


class CachedFeatureSource:
    """A feature source reading the frozen prefix's outputs from a level cache.

    Yields ``(features, labels, indices)`` like ``FrozenPrefixSource``. ``wait_seconds`` is the
    time the last epoch's consumer spent blocked on the next batch (the gather the prefetcher did
    not hide), ``epoch_seconds`` that epoch's wall time from the first request to the last batch.
    """

    def __init__(self, cache: FeatureCache, labels: torch.Tensor, batching: dict[str, Any],
                 device: torch.device, *, seed: int, augmented: bool,
                 report: Callable[[float, float], None] | None = None):
        self.cache = cache
        self.labels = labels.to(device)
        self.sampler = ShardedBatchSampler(cache.num_samples, **batching)
        self.device = device
        self.seed = seed
        self.augmented = augmented
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
    """The level caches of one run; :meth:`source` hands out a cached source for a phase.

    Args:
        model: the ``BlockwiseNet`` being trained (its blocks are read, never changed).
        feeds: one :class:`SplitFeed` per split (``train``, ``validation``, ``test``).
        settings: the resolved cache options.
        plan: the run's phases; with none that has a frozen prefix there is nothing to cache.
        device: where features are delivered (and where the frozen blocks run).
        autocast: the trainer's mixed-precision context: the cache holds what the prefix
            would compute under it.
        seed: the run's seed (view draws and build order).
        rank_tag: ``""`` in one process, else this rank's part of a split (``"-rank1of2"``,
            ``DistributedContext.rank_tag``): it goes into every cache's name and fingerprint.
        local_world_size: the processes on this machine, each with caches of its own: ``auto``
            gives each of them that share of the RAM (a GPU is one process's own).
        info: rank 0's progress logger (``trainer._info``); ``show_progress`` turns on the bars.
    """

    def __init__(self, model: torch.nn.Module, feeds: dict[str, SplitFeed], settings: CacheSettings,
                 plan: list[Phase], device: torch.device, *,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext, seed: int = 0,
                 rank_tag: str = "", local_world_size: int = 1, info: Callable[..., None] = log.info,
                 show_progress: bool = False):
        self.model = model
        self.feeds = feeds
        self.settings = settings
        self.device = device
        self.autocast = autocast
        self.seed = seed
        self.rank_tag = rank_tag
        self.local_world_size = local_world_size
        self.info = info
        self.show_progress = show_progress
        self.level = 0  # the level held in self.caches (0: none)
        self.caches: dict[str, FeatureCache] = {}
        self.builds = 0  # caches built (a reused committed file does not count)
        self.reuses = 0
        self.waits: dict[str, list[float]] = {}  # phase name -> [seconds waiting, seconds of its epochs]
        self._logged_waits: set[str] = set()
        self.enabled = self._decide(plan)

    def _decide(self, plan: list[Phase]) -> bool:
        mode = self.settings.mode
        if mode == "off":
            return False
        if any(phase.frozen_prefix > 0 for phase in plan):
            return True
        reason = "no phase has a frozen prefix (standard and progressive schedules train every block)"
        if mode != "auto":
            raise ConfigError(f"cache={mode!r} cannot be used: {reason}; use --cache off or auto")
        self.info("feature cache off: %s", reason)
        return False

    # ------------------------------------------------------------------ reading

    def source(self, split: str, phase: Phase) -> CachedFeatureSource | None:
        """A cached source of phase ``phase``'s inputs, or None where the phase recomputes them
        (no frozen prefix, or caching off)."""
        level = phase.frozen_prefix
        if not self.enabled or level == 0:
            return None
        self._advance_to(level)
        feed = self.feeds[split]
        report = self._report_wait(phase.name) if split == "train" else None
        return CachedFeatureSource(self.caches[split], feed.labels, feed.batching, self.device, seed=self.seed,
                                   augmented=feed.augmented, report=report)

    def _report_wait(self, name: str) -> Callable[[float, float], None]:
        def report(wait: float, seconds: float) -> None:
            log.debug("%s: waited %.4fs of a %.3fs epoch on cached batches", name, wait, seconds)
            totals = self.waits.setdefault(name, [0.0, 0.0])
            totals[0] += wait
            totals[1] += seconds
        return report

    def wait_fraction(self, phase_name: str) -> float | None:
        """The share of phase ``phase_name``'s training epochs spent waiting on cached batches."""
        if phase_name not in self.waits:
            return None
        wait, seconds = self.waits[phase_name]
        return wait / seconds if seconds > 0 else 0.0

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
        feed = self.feeds[split]
        settings = self.settings
        views = settings.views if feed.augmented else 1
        feature_shape = self.model.block_output_shapes[level - 1]
        fingerprint = self._fingerprint(level, split, views)
        name = f"level{level}-{self._part(split)}"
        shape = dict(num_samples=len(feed.labels), feature_shape=feature_shape, views=views, dtype=settings.dtype)
        nbytes = _cache_nbytes(feature_shape, len(feed.labels), views, settings.dtype)
        started = time.perf_counter()
        tier = self._tier(nbytes)
        cache = self._open_committed(name, fingerprint, tier)
        reused = cache is not None
        if reused:
            self.reuses += 1
        elif tier == "disk":
            cache = FeatureCache.open_or_build(lambda new: self._fill(new, level, split), cache_dir=settings.cache_dir,
                                               fingerprint=fingerprint, name=name, **shape)
        else:
            cache = FeatureCache.create(fingerprint=fingerprint, tier=tier, budget_bytes=settings.budget_bytes, **shape)
            self._fill(cache, level, split)
            cache.commit()
        self.info("level %d cache (%s): %s tier, %d samples x %d view(s) in %s, %.1f MiB, %s in %.1fs", level,
                  self._part(split), cache.tier, len(feed.labels), views, settings.dtype, cache.nbytes / 2**20,
                  "reused" if reused else "built", time.perf_counter() - started)
        return cache

    def _open_committed(self, name: str, fingerprint: str, tier: str) -> FeatureCache | None:
        """The committed file of this fingerprint under cache_dir (a resumed run's, or another
        run's sharing the directory), loaded into ``tier``; None when there is none to trust."""
        if not (self.settings.cache_dir / f"{name}.pncache").is_file():
            return None
        try:
            return FeatureCache.open(self.settings.cache_dir, fingerprint, name, tier=tier)
        except CacheFormatError as error:
            self.info("rebuilding the %s cache: %s", name, error)
            return None

    def _tier(self, nbytes: int) -> str:
        mode = self.settings.mode
        try:
            return choose_tier(nbytes, mode, budget_bytes=self.settings.budget_bytes,
                               cache_dir=self.settings.cache_dir, device=self.device if self.device.type == "cuda" else None,
                               local_processes=self.local_world_size, gpu=self.device.type == "cuda")
        except CacheTierError as error:
            raise CacheTierError(f"--cache {mode}: {error}") from None

    @torch.no_grad()
    def _fill(self, cache: FeatureCache, level: int, split: str) -> None:
        """One streaming pass of block ``level`` over every view of level ``level - 1``.

        One block at a time, whatever level the run starts from (a resumed run, a reused frozen
        prefix): each level is rounded to the storage dtype before the next block reads it, so a
        fingerprint names the same values however the run got there.
        """
        self.builds += 1
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
        """What block ``level`` reads to build its level: None for the images (level 1), the
        level held now, or else level ``level - 1`` opened or built for the purpose and released
        once read."""
        if level == 1:
            yield None
        elif self.level == level - 1:
            yield self.caches[split]
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
        batch_size = self.feeds[split].batching["batch_size"]
        for view in range(views):
            for features, indices in previous.batches(order, batch_size, views=view, device=self.device,
                                                      prefetch=PREFETCH_BATCHES):
                yield features, indices, view

    def _part(self, split: str) -> str:
        """The part of ``split`` this process caches: all of it in one process, else its shard."""
        return f"{split}{self.rank_tag}"

    def _fingerprint(self, level: int, split: str, views: int) -> str:
        feed = self.feeds[split]
        frozen = [self.model.blocks[k] for k in range(level)]
        model_config = {
            "name": getattr(self.model, "name", "custom"), "config": getattr(self.model, "config", None),
            "input_shape": list(self.model.input_shape), "blocks": [repr(block) for block in frozen],
        }
        return cache_fingerprint([block.state_dict() for block in frozen], model_config,
                                 {**feed.preprocessing, "split": self._part(split)}, feed.manifest, self.settings.dtype,
                                 views, FORMAT_VERSION)

    def close(self) -> None:
        """Release every cache held (disk files stay for reuse); log how long the phases that
        read them waited on cached batches."""
        for name in self.waits.keys() - self._logged_waits:  # the phases that read these caches are over
            self.info("%s waited %.1f%% of its training time on cached batches", name, 100 * self.wait_fraction(name))
            self._logged_waits.add(name)
        for cache in self.caches.values():
            cache.close()
        self.caches, self.level = {}, 0


def _cache_nbytes(feature_shape: tuple[int, ...], num_samples: int, views: int, dtype: str) -> int:
    itemsize = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[dtype]
    return num_samples * views * int(np.prod(feature_shape)) * itemsize + (4 * feature_shape[0] if dtype == "int8" else 0)
