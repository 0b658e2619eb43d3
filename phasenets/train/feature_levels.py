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

    ``make_loader()`` returns a loader over every sample of the split (unsharded, no dropped
    batch) for the build; ``batching`` holds the ``ShardedBatchSampler`` options of the training
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
        world_size: processes in the run; caching is off with more than one (each rank would
            need its own shard cached: not implemented yet).
        info: rank 0's progress logger (``trainer._info``); ``show_progress`` turns on the bars.
    """

    def __init__(self, model: torch.nn.Module, feeds: dict[str, SplitFeed], settings: CacheSettings,
                 plan: list[Phase], device: torch.device, *,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext, seed: int = 0,
                 world_size: int = 1, info: Callable[..., None] = log.info, show_progress: bool = False):
        self.model = model
        self.feeds = feeds
        self.settings = settings
        self.device = device
        self.autocast = autocast
        self.seed = seed
        self.info = info
        self.show_progress = show_progress
        self.level = 0  # the level held in self.caches (0: none)
        self.caches: dict[str, FeatureCache] = {}
        self.builds = 0  # caches built (a reused committed file does not count)
        self.reuses = 0
        self.waits: dict[str, list[float]] = {}  # phase name -> [seconds waiting, seconds of its epochs]
        self._logged_waits: set[str] = set()
        self.enabled = self._decide(plan, world_size)

    def _decide(self, plan: list[Phase], world_size: int) -> bool:
        mode = self.settings.mode
        if mode == "off":
            return False
        reason = None
        if not any(phase.frozen_prefix > 0 for phase in plan):
            reason = "no phase has a frozen prefix (standard and progressive schedules train every block)"
        elif world_size > 1:
            reason = "several processes: a per-rank cache is not implemented yet"
        if reason is None:
            return True
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
        """Hold level ``level`` for every split, building it from the level held now (or from the
        images, when the held level is not below it), then free the older one."""
        if level == self.level:
            return
        built = {split: self._open_or_build(level, split) for split in self.feeds}
        self.close()
        self.caches, self.level = built, level

    def _open_or_build(self, level: int, split: str) -> FeatureCache:
        feed = self.feeds[split]
        settings = self.settings
        views = settings.views if feed.augmented else 1
        feature_shape = self.model.block_output_shapes[level - 1]
        fingerprint = self._fingerprint(level, split, views)
        name = f"level{level}-{split}"
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
        self.info("level %d cache (%s): %s tier, %d samples x %d view(s) in %s, %.1f MiB, %s in %.1fs", level, split,
                  cache.tier, len(feed.labels), views, settings.dtype, cache.nbytes / 2**20,
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
                               cache_dir=self.settings.cache_dir, device=self.device if self.device.type == "cuda" else None)
        except CacheTierError as error:
            raise CacheTierError(f"--cache {mode}: {error}") from None

    @torch.no_grad()
    def _fill(self, cache: FeatureCache, level: int, split: str) -> None:
        """One streaming pass of blocks ``from..level`` over every view of ``split``."""
        self.builds += 1
        start = self.level if 0 < self.level < level else 0
        blocks = [self.model.blocks[k] for k in range(start, level)]
        modes = [block.training for block in blocks]
        for block in blocks:
            block.eval()  # frozen blocks: batch-norm statistics are used, never updated
        try:
            batches = self._previous_level(split, cache.views) if start else self._images(split, cache.views)
            total = len(self.feeds[split].labels) * cache.views
            with tqdm(total=total, desc=f"caching level {level} ({split})", unit="img", leave=False,
                      disable=not self.show_progress) as bar:
                for inputs, indices, view in batches:
                    with self.autocast():
                        for block in blocks:
                            inputs = block(inputs)
                    cache.write(indices, inputs, view=view)
                    bar.update(len(indices))
        finally:
            for block, mode in zip(blocks, modes):
                block.train(mode)

    def _images(self, split: str, views: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        loader = self.feeds[split].make_loader()
        for view in range(views):
            loader.set_view(view)
            for images, _, indices in loader:
                yield images.to(self.device, non_blocking=True), indices, view

    def _previous_level(self, split: str, views: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        previous = self.caches[split]
        # a shuffled order: an int8 cache fixes its scale from the first batch, which should be typical
        order = torch.from_numpy(np.random.default_rng([self.seed, previous.num_samples]).permutation(previous.num_samples))
        batch_size = self.feeds[split].batching["batch_size"]
        for view in range(views):
            for features, indices in previous.batches(order, batch_size, views=view, device=self.device,
                                                      prefetch=PREFETCH_BATCHES):
                yield features, indices, view

    def _fingerprint(self, level: int, split: str, views: int) -> str:
        feed = self.feeds[split]
        frozen = [self.model.blocks[k] for k in range(level)]
        model_config = {
            "name": getattr(self.model, "name", "custom"), "config": getattr(self.model, "config", None),
            "input_shape": list(self.model.input_shape), "blocks": [repr(block) for block in frozen],
        }
        return cache_fingerprint([block.state_dict() for block in frozen], model_config,
                                 {**feed.preprocessing, "split": split}, feed.manifest, self.settings.dtype, views,
                                 FORMAT_VERSION)

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
