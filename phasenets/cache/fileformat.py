"""The on-disk layout of a feature cache file, and its validation.

A cache file is a header followed by the payload, which starts on a page boundary so that it can
be memory-mapped and viewed as a tensor in place::

    offset 0   fixed prefix  struct "<8sIIII": magic, format version, meta bytes, scale bytes,
                             CRC32 of (prefix with this field zeroed + meta + scale)
               meta          UTF-8 JSON: fingerprint, num_samples, views, feature_shape, dtype,
                             payload_offset, payload_nbytes, payload_crc32
               scale         float32 little-endian, one per channel (int8 storage only)
               zero padding  up to payload_offset (a multiple of PAGE_SIZE)
    payload    num_samples * views rows of prod(feature_shape) elements of dtype; row = index*views+view

The header is written last, after the payload has been checksummed and flushed, and the file only
gets its final name once everything is on disk (see ``FeatureCache.commit``). Every field is
bounds-checked before use, so any byte string given to :func:`decode_header` either parses into a
consistent :class:`CacheHeader` or raises :class:`CacheFormatError`; nothing is trusted on faith.

Checksum trade-off: the payload CRC32 (zlib, about 4 GB/s on one core) covers every byte, so
verifying a file on open costs one sequential read of it: seconds for a multi-GB cache, which is
small next to the training it saves, and it catches torn writes and bit rot anywhere in the data,
which a sampled hash would miss. CRC32 is not a cryptographic hash: the fingerprint, not the
checksum, is what ties a file to its inputs.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import torch

from phasenets.cache.spec import STORAGE_DTYPES, CacheSpec
from phasenets.errors import UserError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "PAGE_SIZE",
    "STORAGE_DTYPES",
    "CacheFormatError",
    "CacheHeader",
    "encode_header",
    "decode_header",
    "read_header",
    "payload_crc32",
]

MAGIC = b"PHNCACHE"
FORMAT_VERSION = 1
PAGE_SIZE = 4096

_PREFIX = struct.Struct("<8sIIII")
_MAX_META_BYTES = 1 << 16  # a real header's JSON is a few hundred bytes
_MAX_SCALE_BYTES = 1 << 24  # 4 Mi channels
_CHECKSUM_CHUNK = 16 << 20
_META_FIELDS = {
    "fingerprint": str,
    "num_samples": int,
    "views": int,
    "feature_shape": list,
    "dtype": str,
    "payload_offset": int,
    "payload_nbytes": int,
    "payload_crc32": int,
}


class CacheFormatError(UserError, ValueError):
    """A cache file is torn, corrupt, foreign or from another format version."""


@dataclass(frozen=True)
class CacheHeader:
    """Everything needed to interpret (and trust) a cache file's payload."""

    fingerprint: str
    num_samples: int
    views: int
    feature_shape: tuple[int, ...]
    dtype: str
    payload_crc32: int
    scale: torch.Tensor | None = None  # float32 [channels], int8 storage only

    @property
    def spec(self) -> CacheSpec:
        """What the payload holds: its shape, view count and storage dtype."""
        return CacheSpec(self.num_samples, self.feature_shape, self.views, self.dtype)

    @property
    def row_elems(self) -> int:
        return self.spec.row_elems

    @property
    def num_channels(self) -> int:
        return self.feature_shape[0]

    @property
    def payload_nbytes(self) -> int:
        return self.spec.payload_nbytes

    @property
    def payload_offset(self) -> int:
        scale_nbytes = 0 if self.scale is None else 4 * self.scale.numel()
        # the meta JSON holds payload_offset and the CRC: size it with their widest values, so the
        # offset is known before the payload is written and stays put when the CRC is filled in
        widest_meta = self._meta_json(payload_offset=10**18, payload_crc32=2**32 - 1)
        meta_bound = _PREFIX.size + len(widest_meta) + scale_nbytes
        return -(-meta_bound // PAGE_SIZE) * PAGE_SIZE

    def _meta_json(self, payload_offset: int, payload_crc32: int) -> bytes:
        meta = {
            "fingerprint": self.fingerprint,
            "num_samples": self.num_samples,
            "views": self.views,
            "feature_shape": list(self.feature_shape),
            "dtype": self.dtype,
            "payload_offset": payload_offset,
            "payload_nbytes": self.payload_nbytes,
            "payload_crc32": payload_crc32,
        }
        return json.dumps(meta, sort_keys=True).encode()


def encode_header(header: CacheHeader) -> bytes:
    """Serialize ``header`` into exactly ``header.payload_offset`` bytes."""
    _validate_fields(header)
    meta = header._meta_json(header.payload_offset, header.payload_crc32)
    scale = b"" if header.scale is None else _scale_bytes(header.scale)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(meta), len(scale), 0)
    crc = zlib.crc32(scale, zlib.crc32(meta, zlib.crc32(prefix)))
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(meta), len(scale), crc) + meta + scale
    return body.ljust(header.payload_offset, b"\0")


def decode_header(raw: bytes, file_size: int | None = None) -> CacheHeader:
    """Parse and validate a header from the first bytes of a cache file.

    ``raw`` must hold at least the whole header (``PAGE_SIZE`` bytes suffice for any but very wide
    int8 caches; :func:`read_header` handles that). With ``file_size`` given, the payload must
    end exactly at the end of the file: a shorter file is torn, a longer one is not ours.
    """
    if len(raw) < _PREFIX.size:
        raise CacheFormatError(f"file too short for a cache header ({len(raw)} bytes)")
    magic, version, meta_nbytes, scale_nbytes, stored_crc = _PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise CacheFormatError(f"not a phasenets cache file (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise CacheFormatError(
            f"cache format version {version}, this phasenets reads version {FORMAT_VERSION}: rebuild it"
        )
    if meta_nbytes > _MAX_META_BYTES or scale_nbytes > _MAX_SCALE_BYTES or scale_nbytes % 4:
        raise CacheFormatError(f"implausible header sizes (meta {meta_nbytes}, scale {scale_nbytes} bytes)")
    end = _PREFIX.size + meta_nbytes + scale_nbytes
    if len(raw) < end:
        raise CacheFormatError(f"header truncated: needs {end} bytes, file has {len(raw)}")
    meta_bytes = raw[_PREFIX.size : _PREFIX.size + meta_nbytes]
    scale_bytes = raw[_PREFIX.size + meta_nbytes : end]
    prefix = _PREFIX.pack(magic, version, meta_nbytes, scale_nbytes, 0)
    if zlib.crc32(scale_bytes, zlib.crc32(meta_bytes, zlib.crc32(prefix))) != stored_crc:
        raise CacheFormatError("header checksum mismatch: the header is corrupt")
    header, payload_offset, payload_nbytes = _parse_meta(meta_bytes, scale_bytes)
    if payload_offset != header.payload_offset or payload_nbytes != header.payload_nbytes:
        raise CacheFormatError(
            f"header layout inconsistent: payload at {payload_offset} ({payload_nbytes} bytes), "
            f"expected {header.payload_offset} ({header.payload_nbytes} bytes)"
        )
    if file_size is not None and file_size != payload_offset + payload_nbytes:
        raise CacheFormatError(
            f"file is {file_size} bytes, header says {payload_offset + payload_nbytes}: torn or not ours"
        )
    return header


def read_header(source: str | os.PathLike | BinaryIO) -> CacheHeader:
    """Read and validate the header of a cache file (the payload is not checked).

    ``source`` is a path or a binary file opened for reading (read from its start).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return read_header(file)
    source.seek(0)
    file_size = os.fstat(source.fileno()).st_size
    raw = source.read(PAGE_SIZE)
    if len(raw) >= _PREFIX.size:
        _, _, meta_nbytes, scale_nbytes, _ = _PREFIX.unpack_from(raw)
        needed = _PREFIX.size + min(meta_nbytes, _MAX_META_BYTES) + min(scale_nbytes, _MAX_SCALE_BYTES)
        if needed > len(raw):
            raw += source.read(needed - len(raw))
    try:
        return decode_header(raw, file_size)
    except CacheFormatError as error:
        raise CacheFormatError(f"{getattr(source, 'name', 'cache file')}: {error}") from None


def payload_crc32(payload: torch.Tensor) -> int:
    """CRC32 of a contiguous CPU tensor's bytes, computed in chunks (no full copy)."""
    flat = payload.reshape(-1).view(torch.uint8)
    crc = 0
    for start in range(0, flat.numel(), _CHECKSUM_CHUNK):
        crc = zlib.crc32(memoryview(flat[start : start + _CHECKSUM_CHUNK].numpy()), crc)
    return crc


def _scale_bytes(scale: torch.Tensor) -> bytes:
    return scale.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()


def _parse_meta(meta_bytes: bytes, scale_bytes: bytes) -> tuple[CacheHeader, int, int]:
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, absurd nesting or digits
        raise CacheFormatError(f"header metadata is not valid JSON: {error}") from None
    if not isinstance(meta, dict) or set(meta) != set(_META_FIELDS):
        raise CacheFormatError(f"header metadata must have exactly the fields {sorted(_META_FIELDS)}")
    for field, kind in _META_FIELDS.items():
        if not isinstance(meta[field], kind) or isinstance(meta[field], bool):
            raise CacheFormatError(f"header field {field!r} must be a {kind.__name__}, got {meta[field]!r}")
    scale = None
    if scale_bytes:
        scale = torch.frombuffer(bytearray(scale_bytes), dtype=torch.float32)
    header = CacheHeader(
        fingerprint=meta["fingerprint"],
        num_samples=meta["num_samples"],
        views=meta["views"],
        feature_shape=tuple(meta["feature_shape"]),
        dtype=meta["dtype"],
        payload_crc32=meta["payload_crc32"],
        scale=scale,
    )
    try:
        _validate_fields(header)
    except ValueError as error:
        raise CacheFormatError(str(error)) from None
    return header, meta["payload_offset"], meta["payload_nbytes"]


def _validate_fields(header: CacheHeader) -> None:
    if header.dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype {header.dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
    if not header.feature_shape or not all(
        isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in header.feature_shape
    ):
        raise ValueError(f"feature_shape must be a non-empty tuple of positive ints, got {header.feature_shape}")
    if header.num_samples < 0 or header.views < 1:
        raise ValueError(f"need num_samples >= 0 and views >= 1, got {header.num_samples} and {header.views}")
    if not 0 <= header.payload_crc32 < 2**32:
        raise ValueError(f"payload_crc32 {header.payload_crc32} is not a 32-bit value")
    if header.dtype == "int8":
        if header.scale is None or header.scale.shape != (header.num_channels,):
            raise ValueError(f"int8 storage needs a float32 scale of shape ({header.num_channels},)")
        if not bool(torch.isfinite(header.scale).all()) or bool((header.scale <= 0).any()):
            raise ValueError("int8 scales must be finite and positive")
    elif header.scale is not None:
        raise ValueError(f"{header.dtype} storage takes no scale")
