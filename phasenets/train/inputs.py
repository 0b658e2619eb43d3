"""What a phase reads: images from the loaders, or its frozen prefix's outputs from a level cache.

:class:`ImageFeed` says how this process reads each split's images (its shard, the model's input
size and channels, normalization, augmentation, batching) and makes the loaders; :class:`PhaseInputs`
hands each phase a feature source: level ``k`` of the feature cache for a phase whose first ``k``
blocks are frozen (``phasenets.cache.FeatureLevels`` builds it; level 0, the decoded images, where
they are not augmented and fit in memory), or the images run through the frozen blocks every epoch
where there is no cache (``FrozenPrefixSource``). The loop sees only
sources: iterables of ``(inputs, labels, indices)`` with ``len()`` and ``set_epoch``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from phasenets.cache import (
    FeatureLevels, LevelRecord, LevelSettings, Placement, SplitFeed, dataset_manifest, default_cache_views,
)
from phasenets.data import AugmentConfig, DatasetSplits, Normalization, build_loader
from phasenets.data.torch_loader import ShardedBatchSampler
from phasenets.errors import ConfigError
from phasenets.train.distributed import DistributedContext
from phasenets.train.plan import Phase
from phasenets.train.precision import Precision
from phasenets.train.sources import FrozenPrefixSource

if TYPE_CHECKING:
    from phasenets.config import TrainConfig
    from phasenets.train.rundir import RunDirectory

__all__ = ["CacheReport", "ImageFeed", "PhaseInputs", "SPLITS"]

log = logging.getLogger("phasenets")

SPLITS = ("train", "validation", "test")
# the version of data/transforms.py's pixel arithmetic: a cache built by another one is rebuilt
PIXEL_PATH_VERSION = 2


@dataclass(frozen=True)
class ImageFeed:
    """How this process reads the images of each split."""

    config: TrainConfig
    data: DatasetSplits
    dist: DistributedContext
    image_size: int
    in_channels: int
    normalization: Normalization
    num_workers: int

    def samples(self, split: str) -> list:
        """This process's fixed shard of ``split`` (all of it in one process), the same every epoch
        so that a rank can cache its own shard; a training shard is padded to equal length so
        that every rank takes the same number of steps (distributed.py)."""
        return self.dist.shard(self.data.split(split), pad=split == "train")

    def augment(self, split: str) -> AugmentConfig | None:
        """The training augmentation (the preset and its overrides); None for the other splits."""
        if split != "train":
            return None
        augment = AugmentConfig.preset(self.config.augment)
        options = self.config.augment_options
        if options:
            valid = {item.name for item in dataclasses.fields(augment)}
            unknown = sorted(set(options) - valid)
            if unknown:
                raise ConfigError(f"unknown augmentation option(s) {', '.join(unknown)}; "
                                  f"valid: {', '.join(sorted(valid))}")
            augment = dataclasses.replace(augment, **options)
        return augment

    def batching(self, split: str) -> dict[str, Any]:
        """How the training loop batches ``split`` (a cached source batches the same way)."""
        training = split == "train"
        return dict(
            batch_size=self.config.batch_size, shuffle=training, seed=self.dist.rank_seed(self.config.seed),
            # a last batch of one image would break batch norm in training mode
            drop_last=training and len(self.samples(split)) % self.config.batch_size == 1,
            rank=0, world_size=1,  # the samples are this rank's shard already
        )

    def loader(self, split: str, every_sample: bool = False):
        """The loader of ``split``; ``every_sample``: one pass over the whole split in one process
        (building a cache), shuffled so that an int8 cache sets its scale from a typical batch."""
        batching = self.batching(split)
        if every_sample:
            batching.update(shuffle=True, drop_last=False)
        return build_loader(
            self.samples(split), kind=self.config.loader, image_size=self.image_size, in_channels=self.in_channels,
            augment=self.augment(split), normalization=self.normalization, num_workers=self.num_workers,
            **batching,
        )

    def split_feed(self, split: str, loader_name: str) -> SplitFeed:
        """What the level caches of ``split`` are built from and fingerprinted with."""
        augment = self.augment(split)
        augmented = augment is not None and augment.enabled
        preprocessing = {  # everything that makes the images (the augmentation seed only where it matters)
            "image_size": self.image_size, "in_channels": self.in_channels, "normalization": self.normalization,
            "augment": augment, "seed": self.config.seed if augmented else None, "amp": self.config.amp,
            "loader": loader_name,
            "pixels": PIXEL_PATH_VERSION,
        }
        samples = self.samples(split)  # what this rank caches: its shard, padded as it trains on it
        batching = self.batching(split)
        return SplitFeed(labels=torch.tensor([sample.label for sample in samples]),
                         manifest=dataset_manifest(sample.path for sample in samples),
                         make_loader=functools.partial(self.loader, split, True),
                         make_sampler=functools.partial(ShardedBatchSampler, len(samples), **batching),
                         preprocessing=preprocessing, augmented=augmented)


@dataclass
class CacheReport:
    """What the feature cache did in a run: whether it was used, how many level caches were built
    and how many reused from disk, every level cache it held (``levels``: level 0 is the images),
    and per phase the share of training time spent waiting on it."""

    enabled: bool
    builds: int = 0
    reuses: int = 0
    levels: list[LevelRecord] = field(default_factory=list)
    wait_fractions: dict[str, float] = field(default_factory=dict)


class PhaseInputs:
    """Hands each phase the source of its inputs (see the module docstring).

    ``loaders``: one image loader per split; ``levels``: the run's level caches, None where
    phases recompute their frozen prefix.
    """

    def __init__(self, loaders: dict[str, Any], model: torch.nn.Module, levels: FeatureLevels | None,
                 precision: Precision):
        self.loaders = loaders
        self.model = model
        self.levels = levels
        self.precision = precision
        self._waits: dict[str, list[float]] = {}  # phase name -> [seconds waiting, seconds of its epochs]

    @classmethod
    def build(cls, images: ImageFeed, model: torch.nn.Module, plan: list[Phase], run_dir: RunDirectory,
              precision: Precision, info: Callable[..., None]) -> PhaseInputs:
        config, dist = images.config, images.dist
        loaders = {split: images.loader(split) for split in SPLITS if images.data.split(split)}
        levels = None
        if config.cache != "off":
            # the test split is read through the cache only by the per-phase test passes of --use-test
            feeds = {split: images.split_feed(split, type(loader).__name__) for split, loader in loaders.items()
                     if split != "test" or config.use_test}
            augmenting = feeds["train"].augmented
            placement = Placement(
                "auto" if config.cache == "auto" else config.cache,
                budget_bytes=None if config.cache_budget_gb is None else int(config.cache_budget_gb * 2**30),
                cache_dir=config.cache_dir if config.cache_dir is not None else run_dir.cache_dir,
                device=dist.device if dist.device.type == "cuda" else None,
                local_processes=dist.local_world_size, gpu=dist.device.type == "cuda",
            )
            # the most epochs a phase reading the cache takes: a view per epoch at most
            cached_epochs = max((phase.max_epochs for phase in plan if phase.frozen_prefix > 0), default=1)
            settings = LevelSettings(views=config.cache_views or default_cache_views(augmenting, cached_epochs),
                                     dtype=config.cache_dtype, placement=placement,
                                     shared=config.cache_dir is not None, images=not augmenting)
            levels = FeatureLevels(model, feeds, settings, dist.device, autocast=precision.autocast, seed=config.seed,
                                   rank_tag=dist.rank_tag, info=info,
                                   show_progress=dist.is_main and sys.stdout.isatty())
            if not any(phase.frozen_prefix > 0 for phase in plan) and not levels.keeps_images:
                why = ("augmented" if augmenting else "kept in memory only, never on disk" if config.cache == "disk"
                       else "too large for memory")
                _no_cache(config.cache, why, info)
                levels = None
        return cls(loaders, model, levels, precision)

    def source(self, split: str, phase: Phase):
        """Phase ``phase``'s inputs from ``split``: its frozen prefix's outputs read from a level
        cache where there is one, else computed from the images every epoch."""
        level = phase.frozen_prefix
        if self.levels is None or (level == 0 and not self.levels.keeps_images):
            return FrozenPrefixSource(self.loaders[split], self.model, level, self.precision.device,
                                      self.precision.autocast)
        report = functools.partial(self._record_wait, phase.name) if split == "train" else None
        return self.levels.features(split, level, report=report)

    def images(self, split: str) -> FrozenPrefixSource:
        """The images of ``split`` as the whole network takes them (the final evaluation)."""
        return FrozenPrefixSource(self.loaders[split], self.model, 0, self.precision.device, self.precision.autocast)

    def _record_wait(self, phase_name: str, wait: float, seconds: float) -> None:
        log.debug("%s: waited %.4fs of a %.3fs epoch on cached batches", phase_name, wait, seconds)
        totals = self._waits.setdefault(phase_name, [0.0, 0.0])
        totals[0] += wait
        totals[1] += seconds

    def wait_fraction(self, phase_name: str) -> float | None:
        """The share of phase ``phase_name``'s training epochs spent waiting on cached batches."""
        if phase_name not in self._waits:
            return None
        wait, seconds = self._waits[phase_name]
        return wait / seconds if seconds > 0 else 0.0

    def report(self) -> CacheReport:
        if self.levels is None:
            return CacheReport(enabled=False)
        fractions = {name: self.wait_fraction(name) for name in self._waits}
        return CacheReport(enabled=True, builds=self.levels.builds, reuses=self.levels.reuses,
                           levels=list(self.levels.records), wait_fractions=fractions)

    def close(self) -> None:
        """Release the level caches (disk files stay for reuse)."""
        if self.levels is not None:
            self.levels.close()


def _no_cache(mode: str, images: str, info: Callable[..., None]) -> None:
    """Say why a run keeps no cache at all: no phase has a frozen prefix and its images are not
    kept either (``images``: why); ``auto`` then says so, a forced tier is an error."""
    reason = (f"no phase has a frozen prefix (standard and progressive schedules train every block) and the "
              f"training images are {images}")
    if mode != "auto":
        raise ConfigError(f"cache={mode!r} cannot be used: {reason}; use --cache off or auto")
    info("feature cache off: %s", reason)
