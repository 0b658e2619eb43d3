"""The feature cache: frozen blocks' outputs stored once and gathered back every epoch.

:class:`FeatureCache` is the public face; :class:`CacheSpec` says what a cache holds and how big it
is; :class:`Placement` decides its :class:`Tier`; :func:`cache_fingerprint` decides when a cache is
stale; :class:`FeatureLevels` builds a phase-wise run's level caches one frozen block at a time;
:mod:`phasenets.cache.ops` holds the native gather/scatter ops and their pure-torch references.
"""
from phasenets.cache.feature_cache import CacheLockTimeout, FeatureCache
from phasenets.cache.fileformat import FORMAT_VERSION, CacheFormatError
from phasenets.cache.fingerprint import cache_fingerprint, dataset_manifest
from phasenets.cache.levels import (
    CachedFeatures, FeatureLevels, LevelRecord, LevelSettings, SplitFeed, default_cache_views,
)
from phasenets.cache.spec import STORAGE_DTYPES, CacheSpec
from phasenets.cache.tiers import CACHE_MODES, TIERS, CacheTierError, Placement, Tier, choose_tier, format_bytes

__all__ = [
    "CACHE_MODES",
    "CacheFormatError",
    "CacheLockTimeout",
    "CacheSpec",
    "CacheTierError",
    "CachedFeatures",
    "FORMAT_VERSION",
    "FeatureCache",
    "FeatureLevels",
    "LevelRecord",
    "LevelSettings",
    "Placement",
    "STORAGE_DTYPES",
    "SplitFeed",
    "TIERS",
    "Tier",
    "cache_fingerprint",
    "choose_tier",
    "dataset_manifest",
    "default_cache_views",
    "format_bytes",
]
