"""The feature cache: frozen blocks' outputs stored once and gathered back every epoch.

:class:`FeatureCache` is the public face; :func:`cache_fingerprint` decides when a cache is
stale; :mod:`phasenets.cache.ops` holds the native gather/scatter ops and their pure-torch
references.
"""
from phasenets.cache.feature_cache import CacheLockTimeout, FeatureCache
from phasenets.cache.fileformat import FORMAT_VERSION, STORAGE_DTYPES, CacheFormatError
from phasenets.cache.fingerprint import cache_fingerprint, dataset_manifest
from phasenets.cache.tiers import TIERS, CacheTierError, choose_tier

__all__ = [
    "FeatureCache",
    "CacheFormatError",
    "CacheLockTimeout",
    "CacheTierError",
    "FORMAT_VERSION",
    "STORAGE_DTYPES",
    "TIERS",
    "cache_fingerprint",
    "choose_tier",
    "dataset_manifest",
]
