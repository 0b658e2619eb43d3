"""The row ops of the feature cache: the Python face of ``torch.ops.phasenets``.

Each function runs the native kernel where ``phasenets._C`` has one for the tensors' device (CPU
always; CUDA when the extension was built with CUDA) and the pure-torch reference in
:mod:`phasenets.cache.reference` otherwise. Both behave the same and fail the same way:
``IndexError`` for an index out of range, ``RuntimeError`` for any other bad argument, raised
before any memory is touched.

On a GPU the reads never synchronize with the host, so nothing that needs a tensor's values
there is checked there: a gather from a CUDA table returns NaN rows for out-of-range indices
(nothing outside the table is read), and :func:`compute_int8_scale` returns a non-finite scale
for rows holding NaN or infinities. Check indices on the host before they go to the device (as
``FeatureCache`` does) where an ``IndexError`` is wanted. Writes (:func:`scatter_rows`, the cache
build) still check their targets on the host, on every device.

Layout: a storage table is 2-D ``[rows, row_elems]`` in float32, float16, bfloat16 or int8; each
row must be contiguous (any row stride, so slices of a table work). int8 tables carry a float32
per-channel ``scale`` of shape ``[C]``, with ``row_elems = C * spatial`` (channels-first features,
flattened): an element of channel ``c`` stores ``clamp(round(x / scale[c]), -127, 127)`` and
reads back as ``q * scale[c]``. Indices are int64; any layout is accepted for ``index``, ``rows``
and ``scale`` (they are made contiguous), while ``out`` must be contiguous.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from phasenets import _extension
from phasenets.cache import reference

__all__ = ["gather_rows", "scatter_rows", "compute_int8_scale", "Prefetcher", "uses_native"]


def uses_native(tensor: torch.Tensor) -> bool:
    """Whether the ops run the native kernels for tensors on ``tensor``'s device."""
    if not _extension.native_available():
        return False
    return tensor.device.type == "cpu" or (tensor.device.type == "cuda" and _extension.native_has_cuda())


def gather_rows(src: torch.Tensor, index: torch.Tensor, scale: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gather rows ``src[index]``, converted (and dequantized for int8 ``src``) to ``out_dtype``.

    Args:
        src: the storage table ``[rows, row_elems]``.
        index: int64 ``[B]`` row numbers in ``[0, rows)``; repeats are fine.
        scale: the per-channel float32 scale of an int8 ``src``; must be None otherwise.
        out_dtype: float32, float16 or bfloat16; default ``src.dtype`` (float32 for int8).
        out: a preallocated contiguous ``[B, row_elems]`` float tensor to fill (e.g. pinned);
            ``out_dtype`` must then be None or ``out.dtype``.

    Returns:
        ``out`` if given, else a new ``[B, row_elems]`` tensor on ``src``'s device.
    """
    if out is not None:
        if out_dtype is not None and out_dtype != out.dtype:
            raise RuntimeError(f"gather_rows: out_dtype={out_dtype} disagrees with out.dtype={out.dtype}")
        if uses_native(src):
            torch.ops.phasenets.gather_rows_out(src, index, scale, out)
        else:
            reference.gather_rows_out(src, index, scale, out)
        return out
    if out_dtype is None:
        out_dtype = torch.float32 if src.dtype == torch.int8 else src.dtype
    if uses_native(src):
        return torch.ops.phasenets.gather_rows(src, index, scale, out_dtype)
    return reference.gather_rows(src, index, scale, out_dtype)


def scatter_rows(dst: torch.Tensor, index: torch.Tensor, rows: torch.Tensor,
                 scale: torch.Tensor | None = None) -> None:
    """Write ``rows`` (``[B, row_elems]``, float) into ``dst[index]`` in place, converting to
    ``dst``'s dtype (quantizing with ``scale`` for int8 ``dst``). Indices must be in range and
    unique: a row written twice in one call is refused rather than raced."""
    if uses_native(dst):
        torch.ops.phasenets.scatter_rows(dst, index, rows, scale)
    else:
        reference.scatter_rows(dst, index, rows, scale)


def compute_int8_scale(rows: torch.Tensor, channels: int) -> torch.Tensor:
    """The per-channel int8 scale of a batch of rows ``[B, channels * spatial]``: each channel's
    largest magnitude over the batch divided by 127 (float32 ``[channels]``, on ``rows``'
    device). An all-zero channel gets 1. To calibrate over several batches, take the
    element-wise maximum of their scales.

    Rows holding NaN or infinite values are refused (``RuntimeError``) on the CPU, where the
    check is free. On CUDA it would synchronize with the host, so the scale of such a channel
    comes back non-finite instead: the caller checks the (small) scale when it has to come to the
    host anyway (the feature cache does when it commits)."""
    if uses_native(rows):
        scale = torch.ops.phasenets.compute_int8_scale(rows, channels)
    else:
        scale = reference.compute_int8_scale(rows, channels)
    if scale.device.type == "cpu" and not bool(torch.isfinite(scale).all()):
        raise RuntimeError(f"{reference.SCALE}: rows hold NaN or infinite values, which int8 cannot represent")
    return scale


class Prefetcher:
    """Gathers batches of storage rows ahead of the consumer, on background threads.

    Iterating yields, in order, ``gather_rows(storage, batch, scale, out_dtype)`` for each index
    batch, moved to ``device``. Up to ``depth`` batches are gathered ahead by ``num_workers``
    threads that never hold the GIL (native build). With a CUDA ``device``, batches are staged in
    pinned memory and copied on a side stream; each batch is ready for the consumer's current
    stream when it is handed out.

    CPU batches live in reusable buffers that are recycled only once nothing references them, so
    batches may be kept as long as wanted. All arguments, and every index batch's bounds, are
    checked on construction. A worker's error is raised by the next ``next()``. Use as a context
    manager, or call :meth:`close`, to stop early: the threads are joined and pending batches
    dropped (the destructor does the same).

    Args:
        storage: a CPU storage table ``[rows, row_elems]`` (RAM, pinned RAM, or a memory-mapped
            file from ``torch.from_file(..., shared=True)``).
        batches: int64 index tensors, one per batch.
        scale: the per-channel scale of an int8 ``storage``, else None.
        out_dtype: float32, float16 or bfloat16.
        depth: batches gathered ahead of the consumer (>= 1).
        num_workers: gathering threads (>= 1; more than ``depth`` would idle).
        device: where batches are delivered; None or CPU keeps them on the host.
        file: ``(descriptor, byte offset of row 0)``: read the rows from this file with
            positioned reads (no GIL), ``storage`` (e.g. a mapping of the same file, never
            touched) only giving the table's shape and dtype. A mapped file's pages stay in the
            process's memory once read; reads keep it bounded by the batches in flight.
    """

    def __init__(self, storage: torch.Tensor, batches: Iterable[torch.Tensor], scale: torch.Tensor | None = None,
                 out_dtype: torch.dtype = torch.float32, *, depth: int = 2, num_workers: int = 1,
                 device: torch.device | str | None = None, file: tuple[int, int] | None = None) -> None:
        batches = list(batches)
        device = torch.device(device) if device is not None else None
        if device is not None and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        native = uses_native(storage) and (device is None or device.type == "cpu" or _extension.native_has_cuda())
        backend = _extension.native_module().Prefetcher if native else reference.Prefetcher
        self._source = backend(storage, batches, scale, out_dtype, depth, num_workers, device, file)
        self.native = native

    def __len__(self) -> int:
        return self._source.num_batches

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        batch = self._source.next()
        if batch is None:
            raise StopIteration
        return batch

    def close(self) -> None:
        """Stop the workers and drop pending batches; iteration then ends. Idempotent."""
        self._source.close()

    def __del__(self) -> None:
        if hasattr(self, "_source"):  # construction may have failed
            self.close()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
