"""``FeatureCache``: the outputs of frozen blocks, computed once and read back every epoch.

A cache holds ``num_samples x views`` rows of one feature shape in a storage dtype (fp32, fp16,
bf16, or int8 with a per-channel scale). Row ``index * views + view`` holds view ``view`` of
sample ``index``. The rows live in one of three tiers (see :mod:`phasenets.cache.tiers`): device
memory, host RAM (pinned where CUDA exists) or a memory-mapped file under ``cache_dir``.

Disk caches are crash-safe: a build writes a partial file under a lock and :meth:`FeatureCache.commit`
renames it only once the payload is checksummed and on disk; :meth:`FeatureCache.open` re-checks
the header and checksum before it serves anything (see :mod:`phasenets.cache.storage`).

Typical use (one process builds, any number reuse)::

    def fill(cache):
        for images, _labels, indices in loader:
            cache.write(indices, backbone(images))

    cache = FeatureCache.open_or_build(fill, cache_dir="runs/cache", fingerprint=fp,
                                       num_samples=len(dataset), feature_shape=(256, 6, 6))
    for features, indices in cache.batches(torch.randperm(len(dataset)), batch_size=128):
        ...
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import torch

from phasenets.cache import ops
from phasenets.cache.fileformat import CacheFormatError, CacheHeader, encode_header
from phasenets.cache.spec import CacheSpec
from phasenets.cache.storage import (BuildLock, CacheLockTimeout, DiskBuild, MappedFile, allocate_rows,
                                     cache_file_paths, copy_to_device, read_committed)
from phasenets.cache.tiers import Placement, Tier

__all__ = ["FeatureCache", "CacheLockTimeout"]

log = logging.getLogger("phasenets")

WRITABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the scatter op takes as input
REQUANTIZE_ROWS = 4096  # rows requantized at a time when an int8 scale grows (bounds the float copy)
PREFETCH_WORKERS = min(4, os.cpu_count() or 1)


class FeatureCache:
    """Rows of cached features in one tier. Create with :meth:`create`, :meth:`open` or
    :meth:`open_or_build`; do not call the constructor directly."""

    def __init__(self, header: CacheHeader, storage: torch.Tensor, tier: Tier, *, committed: bool,
                 file: MappedFile | None = None, build: DiskBuild | None = None):
        self._header = header
        self._storage = storage  # [num_samples * views, row_elems] in the storage dtype
        self._scale = None if header.scale is None else header.scale.to(storage.device)
        self._fixed_scale = header.scale is not None  # given at creation, or read from a committed file
        self._tier = tier
        self._committed = committed
        self._file = file  # the disk tier's file: `storage` maps it, reads go through it
        self._build = build  # an uncommitted disk build (its partial file and lock)
        self._closed = False
        # which rows a build has written (1 byte per row, on the host, freed at commit), so that
        # commit can refuse a cache with holes instead of serving zeros as features
        self._written = None if committed else torch.zeros(storage.shape[0], dtype=torch.bool)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        *,
        fingerprint: str,
        spec: CacheSpec | None = None,
        num_samples: int | None = None,
        feature_shape: Sequence[int] | None = None,
        views: int = 1,
        dtype: str | torch.dtype = "fp16",
        tier: str | Tier = "auto",
        cache_dir: str | os.PathLike | None = None,
        budget_bytes: int | None = None,
        name: str = "features",
        scale: torch.Tensor | None = None,
        lock_timeout: float | None = None,
    ) -> FeatureCache:
        """Allocate an empty cache to be filled with :meth:`write` and sealed with :meth:`commit`.

        Args:
            fingerprint: the digest from :func:`~phasenets.cache.fingerprint.cache_fingerprint`;
                a disk file is reused only by a caller presenting the same one.
            spec: what the cache holds (:class:`~phasenets.cache.spec.CacheSpec`); or give its
                fields instead:
            num_samples: rows per view (samples in the split).
            feature_shape: one sample's feature shape, e.g. ``(C, H, W)`` or ``(F,)``; its first
                dimension is the channel dimension int8 scales are kept per.
            views: augmented views kept per sample.
            dtype: storage dtype, ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"``.
            tier: ``"auto"``, ``"cuda"``, ``"host"`` or ``"disk"`` (see
                :class:`~phasenets.cache.tiers.Placement`).
            cache_dir: directory of the disk tier's file (required for ``"disk"``).
            budget_bytes: the most ``auto`` may put in device or host memory.
            name: the file's base name, unique per cache within ``cache_dir``.
            scale: int8 only: a fixed per-channel dequantization scale (``[C]`` float32); values
                beyond ``127 * scale`` then saturate. Without it, the first write sets the scale
                to its batch's ``absmax / 127`` per channel, and a later batch that exceeds it
                grows it (at least doubling it) and requantizes the rows already written: nothing
                saturates, and every value is within one quantization step of what was written
                (half a step in channels whose scale never grew).
            lock_timeout: seconds a disk build waits for another builder of the same file
                (``None``: as long as it takes).
        """
        spec = _spec_of(spec, num_samples, feature_shape, views, dtype)
        if spec.num_samples < 1 or spec.views < 1:
            raise ValueError(f"need num_samples >= 1 and views >= 1, got {spec.num_samples} and {spec.views}")
        header = _header(fingerprint, spec, scale)
        tier = Placement(tier, budget_bytes=budget_bytes, cache_dir=cache_dir).tier_for(spec.nbytes)
        if tier is Tier.DISK:
            lock = BuildLock(cache_file_paths(cache_dir, name)[2], lock_timeout)
            return cls._create_on_disk(header, cache_dir, name, lock)
        return cls(header, allocate_rows(spec, tier), tier, committed=False)

    @classmethod
    def open(
        cls,
        cache_dir: str | os.PathLike,
        fingerprint: str,
        name: str = "features",
        *,
        tier: str | Tier = "disk",
        verify: bool = True,
    ) -> FeatureCache | None:
        """Open the committed cache file ``<cache_dir>/<name>.pncache``, read-only.

        Returns None when there is no committed file or it was built for another fingerprint
        (stale: the caller rebuilds). Raises :class:`~phasenets.cache.fileformat.CacheFormatError`
        when the file exists but is torn, corrupt, foreign or of another format version.

        Args:
            tier: ``"disk"`` maps the file (pages load on first touch); ``"host"`` or ``"cuda"``
                copies it into memory.
            verify: recompute the payload checksum (one sequential read of the file, about
                4 GB/s) before trusting it; the header is always checked.
        """
        tier = _fixed_tier(tier)
        committed = read_committed(cache_dir, name, fingerprint, verify)
        if committed is None:
            return None
        header, file = committed
        return cls(header, file.rows(header.spec), Tier.DISK, committed=True, file=file)._moved_to(tier)

    @classmethod
    def open_or_build(
        cls,
        build: Callable[[FeatureCache], None],
        *,
        cache_dir: str | os.PathLike,
        fingerprint: str,
        name: str = "features",
        tier: str | Tier = "disk",
        lock_timeout: float | None = None,
        **create_options,
    ) -> FeatureCache:
        """Open the committed cache for ``fingerprint``, or build it on disk exactly once.

        ``build(cache)`` must :meth:`write` every (index, view) row; this method commits it.
        When several processes call this at once, one builds and the others wait for its lock,
        then open the file it committed. A stale file (other fingerprint) is rebuilt; a torn or
        corrupt one is reported with a warning and rebuilt. ``create_options`` are those of
        :meth:`create` (``spec``, or ``num_samples``, ``feature_shape``, ``views``, ``dtype``; ``scale``).
        ``tier`` is where the returned cache lives (the file is always on disk).
        """
        reopened = cls._open_or_warn(cache_dir, fingerprint, name, tier)
        if reopened is not None:
            return reopened
        os.makedirs(cache_dir, exist_ok=True)
        lock = BuildLock(cache_file_paths(cache_dir, name)[2], lock_timeout)
        try:
            # another process may have built it while this one waited for the lock
            reopened = cls._open_or_warn(cache_dir, fingerprint, name, tier, quiet=True)
            if reopened is not None:
                lock.release()
                return reopened
            header = cls._header_from_options(fingerprint, create_options)
            Placement(Tier.DISK, cache_dir=cache_dir).check(header.spec.nbytes, Tier.DISK)
            cache = cls._create_on_disk(header, cache_dir, name, lock)
        except BaseException:
            lock.release()
            raise
        try:
            build(cache)
            cache.commit()
        except BaseException:
            cache.close()
            raise
        return cache._moved_to(tier)

    def _moved_to(self, tier: str | Tier) -> FeatureCache:
        """This committed cache in ``tier``: itself for ``disk``, else an in-memory copy (and
        this one is closed)."""
        tier = _fixed_tier(tier)
        if tier is Tier.DISK:
            return self
        try:
            Placement(tier).check(self.nbytes, tier)  # a clear error if it does not fit
            memory = allocate_rows(self.spec, tier, zero=False)
            staging = memory if tier is Tier.HOST else allocate_rows(self.spec, Tier.HOST, zero=False)
            self._file.read_into(staging)  # read, not copied from the mapping: no page stays mapped
            if staging is not memory:
                memory.copy_(staging)
        finally:
            self.close()
        return FeatureCache(self._header, memory, tier, committed=True)

    @classmethod
    def _open_or_warn(cls, cache_dir, fingerprint, name, tier, quiet: bool = False) -> FeatureCache | None:
        """The committed cache, or None; a damaged file is reported (unless ``quiet``: a second
        look at the file already reported) and left for the build to replace."""
        try:
            return cls.open(cache_dir, fingerprint, name, tier=tier)
        except CacheFormatError as error:
            if not quiet:
                log.warning("rebuilding the feature cache: %s", error)
            return None

    @staticmethod
    def _header_from_options(fingerprint: str, options: dict) -> CacheHeader:
        unknown = set(options) - {"spec", "num_samples", "feature_shape", "views", "dtype", "scale"}
        if unknown:
            raise TypeError(f"open_or_build got unexpected options {sorted(unknown)}")
        spec = _spec_of(options.get("spec"), options.get("num_samples"), options.get("feature_shape"),
                        options.get("views", 1), options.get("dtype", "fp16"))
        return _header(fingerprint, spec, options.get("scale"))

    @classmethod
    def _create_on_disk(cls, header: CacheHeader, cache_dir, name: str, lock: BuildLock) -> FeatureCache:
        build = DiskBuild.start(cache_dir, name, header, lock)
        return cls(header, build.file.rows(header.spec), Tier.DISK, committed=False, file=build.file, build=build)

    # ------------------------------------------------------------------ properties

    @property
    def tier(self) -> Tier:
        """``Tier.CUDA``, ``Tier.HOST`` or ``Tier.DISK`` (equal to ``"cuda"``, ``"host"``, ``"disk"``)."""
        return self._tier

    @property
    def spec(self) -> CacheSpec:
        """What the cache holds: samples, feature shape, views and storage dtype."""
        return self._header.spec

    @property
    def dtype(self) -> str:
        """The storage dtype name."""
        return self._header.dtype

    @property
    def views(self) -> int:
        return self._header.views

    @property
    def num_samples(self) -> int:
        return self._header.num_samples

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self._header.feature_shape

    @property
    def fingerprint(self) -> str:
        return self._header.fingerprint

    @property
    def nbytes(self) -> int:
        """Bytes of cached data: rows in the storage dtype plus the int8 scale."""
        return self._header.spec.nbytes

    @property
    def device(self) -> torch.device:
        """Where the rows live (CUDA for the ``cuda`` tier, else CPU)."""
        return self._storage.device

    @property
    def scale(self) -> torch.Tensor | None:
        """The int8 per-channel scale (None for float storage, or before the first write)."""
        return self._scale

    @property
    def committed(self) -> bool:
        return self._committed

    def __repr__(self) -> str:
        return (f"FeatureCache(num_samples={self.num_samples}, views={self.views}, "
                f"feature_shape={self.feature_shape}, dtype={self.dtype!r}, tier={self.tier.value!r}, "
                f"nbytes={self.nbytes}, committed={self.committed})")

    # ------------------------------------------------------------------ data

    def write(self, indices: torch.Tensor, features: torch.Tensor, view: int | torch.Tensor = 0) -> None:
        """Store ``features[i]`` as view ``view`` of sample ``indices[i]``.

        ``features`` is ``[B, *feature_shape]`` in any float dtype, on any device; int8 storage
        quantizes on the way in (round half to even, saturating at +-127). Each (index, view)
        may appear once per call.
        """
        self._check_open()
        if self._committed:
            raise RuntimeError("this cache is committed and read-only; build a new one to change it")
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(f"features must be [B, {', '.join(map(str, self.feature_shape))}], "
                             f"got {list(features.shape)}")
        if not features.is_floating_point():
            raise TypeError(f"features must be floating point, got {features.dtype}")
        rows = self._row_ids(indices, view, "view")
        if rows.numel() != features.shape[0]:
            raise ValueError(f"got {rows.numel()} indices for {features.shape[0]} feature rows")
        flat = features.detach().reshape(features.shape[0], -1).to(self.device)
        if flat.dtype not in WRITABLE_DTYPES:
            flat = flat.float()
        flat = flat.contiguous()
        if self.dtype == "int8" and not self._fixed_scale:
            self._grow_scale(flat)
        ops.scatter_rows(self._storage, copy_to_device(rows, self.device), flat, self._scale)
        self._written[rows] = True
        self._release_pages()

    def _grow_scale(self, flat: torch.Tensor) -> None:
        """Widen the int8 scale where this batch exceeds it, requantizing the rows already written
        (in row chunks, on the storage's device).

        A grown channel's scale at least doubles: each requantization rounds once more, and with
        scales that double the roundings add up to less than one final step (1/2 + 1/4 + ...),
        where growing to the exact new maximum could add half a step per growth without bound.
        """
        batch = ops.compute_int8_scale(flat.float(), self.feature_shape[0])
        if self._scale is None:
            self._scale = batch
            return
        exceeded = batch > self._scale
        if not bool(exceeded.any()):  # a host read, once per write: builds only, never reads
            return
        grown = torch.where(exceeded, torch.maximum(batch, 2 * self._scale), self._scale)
        ratio = (self._scale / grown)[None, :, None]
        channels = self._storage.view(self._storage.shape[0], self.feature_shape[0], -1)
        for start in range(0, channels.shape[0], REQUANTIZE_ROWS):
            chunk = channels[start:start + REQUANTIZE_ROWS]
            chunk.copy_((chunk.float() * ratio).round_().clamp_(-127, 127))
            self._release_pages()
        self._scale = grown

    def _release_pages(self) -> None:
        """A disk build hands the pages it wrote back to the page cache (see ``MappedFile``)."""
        if self._file is not None:
            self._file.release_pages()

    def read(
        self,
        indices: torch.Tensor,
        views: int | torch.Tensor | None = None,
        out_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Gather the features of ``indices`` into a new ``[B, *feature_shape]`` tensor.

        ``views``: None reads view 0; an int reads that view for every row; a tensor gives each
        row's view. The result is dequantized to ``out_dtype`` and placed on ``device``
        (default: where the cache lives, CPU for the host and disk tiers).
        """
        self._check_open()
        rows = self._row_ids(indices, 0 if views is None else views, "views")
        if self._file is not None:  # through the file, as batches() reads it
            batch = next(self._prefetched([rows], out_dtype, torch.device("cpu"), 1), None)
            batch = ops.gather_rows(self._storage, rows, self._scale, out_dtype) if batch is None else batch
        else:
            batch = ops.gather_rows(self._storage, copy_to_device(rows, self.device), self._scale, out_dtype)
        batch = batch.view(rows.numel(), *self.feature_shape)
        return batch if device is None else batch.to(device, non_blocking=True)

    def batches(
        self,
        order: torch.Tensor,
        batch_size: int,
        views: int | torch.Tensor | None = None,
        device: torch.device | str | None = None,
        prefetch: int = 2,
        drop_last: bool = False,
        out_dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(features, indices)`` batches over ``order``, gathered ahead of use.

        Args:
            order: the epoch's sample indices in visiting order (int64 ``[M]``, on the host).
            batch_size: rows per batch; the last batch may be short unless ``drop_last``.
            views: None (view 0), an int, or an int64 ``[M]`` tensor with the view of ``order[i]``.
            device: where the batches go (default: where the cache lives).
            prefetch: batches gathered ahead on background threads (0: gather on demand).

        The whole epoch's indices are checked on the host once, then copied to a GPU (pinned,
        without waiting) once: reading an epoch from the cuda tier never synchronizes the host.
        """
        self._check_open()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = torch.as_tensor(order, dtype=torch.int64).reshape(-1)
        rows = self._row_ids(order, 0 if views is None else views, "views")
        stop = (rows.numel() // batch_size) * batch_size if drop_last else rows.numel()
        starts = range(0, stop, batch_size)
        target = torch.device(device) if device is not None else self.device
        order = copy_to_device(order.cpu(), target)
        index_batches = [order[start:start + batch_size] for start in starts]
        if self._file is not None or (prefetch > 0 and self._tier is not Tier.CUDA):
            gathered = self._prefetched([rows[start:start + batch_size] for start in starts], out_dtype, target,
                                        max(1, prefetch))
        else:  # a device-resident table is gathered in place: nothing to overlap
            rows = copy_to_device(rows, self.device)
            gathered = (ops.gather_rows(self._storage, rows[start:start + batch_size], self._scale, out_dtype)
                        .to(target, non_blocking=True) for start in starts)
        for features, indices in zip(gathered, index_batches):
            yield features.view(indices.numel(), *self.feature_shape), indices

    def _prefetched(self, row_batches: list[torch.Tensor], out_dtype: torch.dtype, target: torch.device,
                    depth: int) -> Iterator[torch.Tensor]:
        # closed also when the consumer stops early: the workers must not outlive the epoch
        source = None if self._file is None else self._file.source
        with ops.Prefetcher(self._storage, row_batches, self._scale, out_dtype, depth=depth,
                            num_workers=PREFETCH_WORKERS, device=target, file=source) as prefetcher:
            yield from prefetcher

    def _row_ids(self, indices: torch.Tensor, views: int | torch.Tensor, argument: str) -> torch.Tensor:
        """The storage rows of (``indices``, ``views``), computed and range-checked on the host
        (indices on a GPU are copied back, which waits for it: pass host tensors)."""
        indices = torch.as_tensor(indices)
        if indices.dtype not in (torch.int64, torch.int32) or indices.dim() != 1:
            raise TypeError(f"indices must be a 1-D int64 tensor, got {indices.dtype} of shape {list(indices.shape)}")
        indices = indices.to("cpu", torch.int64)
        _check_range(indices, self.num_samples, "indices", "num_samples")
        views = torch.as_tensor(views).cpu()
        if views.dtype not in (torch.int64, torch.int32) or views.dim() > 1 or (
                views.dim() == 1 and views.numel() != indices.numel()):
            raise TypeError(f"{argument} must be an int or a 1-D integer tensor with one view per index")
        _check_range(views, self.views, argument, "views")
        return indices * self.views + views.to(torch.int64)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this FeatureCache is closed")

    # ------------------------------------------------------------------ lifecycle

    def commit(self) -> None:
        """Seal the cache: it becomes read-only. On disk: checksum the payload, write the header,
        fsync, rename the file to its final name and release the build lock.

        An int8 cache needs its scale (at least one :meth:`write`, or ``scale=`` at creation).
        """
        self._check_open()
        if self._committed:
            return
        if self.dtype == "int8":
            if self._scale is None:
                raise RuntimeError("an int8 cache cannot be committed before its scale is set by a write")
            scale = self._scale.cpu()
            if not bool(torch.isfinite(scale).all()):
                raise ValueError("the features held NaN or infinite values, which int8 cannot represent")
            self._header = dataclasses.replace(self._header, scale=scale)
        missing = (~self._written).nonzero().flatten()
        if missing.numel():
            first = int(missing[0])
            raise RuntimeError(
                f"{missing.numel()} of {self._written.numel()} rows were never written (the first is "
                f"index {first // self.views}, view {first % self.views}); write every view of every sample"
            )
        self._written = None
        if self._build is not None:
            self._header = self._build.commit(self._header)
            self._build = None
        self._committed = True

    def close(self) -> None:
        """Release the storage and the build lock. An uncommitted disk build is deleted."""
        if self._closed:
            return
        self._closed = True
        if self._build is not None:
            self._build.discard()
        elif self._file is not None:
            self._file.close()
        self._storage = None
        self._scale = None
        self._written = None

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _spec_of(spec: CacheSpec | None, num_samples: int | None, feature_shape: Sequence[int] | None, views: int,
             dtype: str | torch.dtype) -> CacheSpec:
    """``spec``, or the one its fields describe (given one way or the other, not both)."""
    if spec is not None:
        if num_samples is not None or feature_shape is not None:
            raise TypeError("give a spec or num_samples and feature_shape, not both")
        return spec
    if num_samples is None or feature_shape is None:
        raise TypeError("a cache needs a spec, or num_samples and feature_shape")
    return CacheSpec.of(num_samples, feature_shape, views, dtype)


def _header(fingerprint: str, spec: CacheSpec, scale: torch.Tensor | None) -> CacheHeader:
    """The header a new cache of ``spec`` starts with (its payload checksum is set at commit)."""
    if scale is not None and spec.dtype != "int8":
        raise ValueError(f"scale is only for int8 storage, not {spec.dtype}")
    header = CacheHeader(fingerprint, spec.num_samples, spec.views, spec.feature_shape, spec.dtype, payload_crc32=0,
                         scale=None if scale is None else scale.detach().to("cpu", torch.float32))
    if header.scale is not None:
        encode_header(header)  # validates the scale's shape and values now, not at commit
    return header


def _fixed_tier(tier: str | Tier) -> Tier:
    """A named tier (``auto`` is for :class:`Placement`, which decides)."""
    try:
        return Tier(tier)
    except ValueError:
        raise ValueError(f"tier must be one of {[t.value for t in Tier]}, got {tier!r}") from None


def _check_range(values: torch.Tensor, limit: int, argument: str, bound_name: str) -> None:
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= limit):
        raise IndexError(f"{argument} must be in [0, {bound_name}={limit}), got values in "
                         f"[{int(values.min())}, {int(values.max())}]")
