"""Cache fingerprints: one digest over everything that determines a cached feature.

A cache is reused only when its fingerprint matches the one the caller computes now, so the digest
must change whenever any input to the cached features changes: the frozen weights (to the last bit),
the model and preprocessing configs, the dataset files, what the cache holds (its ``CacheSpec``:
shape, storage dtype, number of views) and the file format version, which the digest takes itself. Every section is length-prefixed and tagged so that no two different setups can
produce the same byte stream by shifting bytes from one section into the next.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import torch

from phasenets.cache.fileformat import FORMAT_VERSION
from phasenets.cache.spec import CacheSpec

__all__ = ["cache_fingerprint", "dataset_manifest", "canonical_json"]

ManifestEntry = tuple[str, int, int]  # (path, size in bytes, mtime in ns)


def dataset_manifest(paths: Iterable[str | os.PathLike]) -> list[ManifestEntry]:
    """Return ``(path, size, mtime_ns)`` for each file, in the given order.

    The order is kept because cache rows are keyed by a sample's position in its split.
    """
    manifest = []
    for path in paths:
        stat = os.stat(path)
        manifest.append((os.fspath(path), stat.st_size, stat.st_mtime_ns))
    return manifest


def canonical_json(value: Any) -> str:
    """Serialize a config deterministically: sorted keys, dataclasses as dicts, tuples as lists.

    Floats are written with ``repr`` precision, so configs that differ in any bit of a float
    serialize differently. Values JSON cannot express raise ``TypeError`` naming the type.
    """
    return json.dumps(_to_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": type(value).__qualname__, **_to_plain(dataclasses.asdict(value))}
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"config keys must be strings, got {key!r} ({type(key).__name__})")
            plain[key] = _to_plain(item)
        return plain
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return _to_plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # JSON has no inf/nan literal
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot fingerprint a value of type {type(value).__name__}: use dicts, lists, tuples, "
        "dataclasses, strings, numbers, booleans, None, enums or paths"
    )


def _update_section(digest: "hashlib._Hash", tag: str, payload: bytes | memoryview) -> None:
    digest.update(tag.encode())
    digest.update(memoryview(payload).nbytes.to_bytes(8, "little"))
    digest.update(payload)


def _update_tensor(digest: "hashlib._Hash", name: str, tensor: torch.Tensor) -> None:
    # Hash the exact bytes (viewed as uint8: works for bf16, which numpy cannot hold) plus dtype
    # and shape, so a one-ulp change or a reinterpretation of the same bytes changes the digest.
    tensor = tensor.detach().to("cpu").contiguous()
    meta = json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode()
    _update_section(digest, "tensor-meta", meta)
    _update_section(digest, "tensor-data", memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))


def _as_state_dict_list(
    frozen_state_dicts: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> list[Mapping[str, Any]]:
    if isinstance(frozen_state_dicts, Mapping):
        return [frozen_state_dicts]
    return list(frozen_state_dicts)


def cache_fingerprint(
    frozen_state_dicts: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    model_config: Any,
    preprocessing_config: Any,
    dataset_manifest: Sequence[ManifestEntry],
    spec: CacheSpec,
) -> str:
    """Return the hex SHA-256 digest identifying one cache's contents.

    Args:
        frozen_state_dicts: the state dict of every frozen module that produced the features
            (one mapping, or a sequence in forward order). Tensors are hashed by their exact bytes,
            dtype and shape; other entries (e.g. ``_extra_state``) by their canonical JSON.
        model_config: the model's config (dataclass, dict, ...), serialized canonically.
        preprocessing_config: decoding, normalization and augmentation settings, and the seed
            the augmented views are drawn from.
        dataset_manifest: ``(path, size, mtime_ns)`` per sample in split order, e.g. from
            :func:`dataset_manifest`. Touching, replacing or reordering a file changes the digest.
        spec: what the cache holds (samples, feature shape, views, storage dtype): the same
            ``CacheSpec`` the cache is created with. The file format version is added here.
    """
    digest = hashlib.sha256()
    _update_section(digest, "phasenets-cache-fingerprint", b"1")
    for position, state_dict in enumerate(_as_state_dict_list(frozen_state_dicts)):
        _update_section(digest, "state-dict", str(position).encode())
        for key in sorted(state_dict):
            value = state_dict[key]
            if isinstance(value, torch.Tensor):
                _update_tensor(digest, key, value)
            else:
                _update_section(digest, "state-extra", canonical_json([key, value]).encode())
    _update_section(digest, "model-config", canonical_json(model_config).encode())
    _update_section(digest, "preprocessing-config", canonical_json(preprocessing_config).encode())
    manifest = [[os.fspath(path), int(size), int(mtime)] for path, size, mtime in dataset_manifest]
    _update_section(digest, "dataset-manifest", canonical_json(manifest).encode())
    _update_section(digest, "storage", canonical_json([spec, FORMAT_VERSION]).encode())
    return digest.hexdigest()
