"""Pure-torch reference of the native row ops: the test oracle, the benchmark baseline, and the
fallback where ``phasenets._C`` is absent.

Each function has the semantics of the ``torch.ops.phasenets`` op of the same name and fails the
same way, with the same message (``csrc/checks.cpp`` holds the native twins of the checks below):
``IndexError`` for an index out of range, ``RuntimeError`` for every other bad argument. The one
exception is shared with the CUDA kernels: a gather from a table on a GPU never reads its indices
back to the host (that would be a sync per call), so an out-of-range index there gives a NaN row
instead of an ``IndexError``.
Storage tables are 2-D ``[rows, row_elems]``; int8 rows carry a per-channel float32 ``scale`` of
shape ``[C]`` where ``row_elems = C * spatial`` (channels-first features, flattened).
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence

import torch

__all__ = ["gather_rows", "gather_rows_out", "scatter_rows", "compute_int8_scale", "Prefetcher"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STORAGE_DTYPES = FLOAT_DTYPES + (torch.int8,)

GATHER = "phasenets.gather_rows"
GATHER_OUT = "phasenets.gather_rows_out"
SCATTER = "phasenets.scatter_rows"
SCALE = "phasenets.compute_int8_scale"
PREFETCH = "phasenets.Prefetcher"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- checks (twins of csrc/checks.cpp) --------------------------------------------------------


def _check_storage(storage: torch.Tensor, op: str, name: str) -> None:
    if storage.dim() != 2:
        raise RuntimeError(f"{op}: {name} must be a 2-D tensor [rows, row_elems], got shape {list(storage.shape)}")
    if storage.dtype not in STORAGE_DTYPES:
        raise RuntimeError(f"{op}: {name} dtype must be one of float32, float16, bfloat16, int8, "
                           f"got {_name(storage.dtype)}")
    if storage.shape[1] > 1 and storage.stride(1) != 1:
        raise RuntimeError(f"{op}: {name} must have contiguous rows (stride 1 along dim 1), got strides "
                           f"{list(storage.stride())}; call .contiguous() first")


def _check_index(index: torch.Tensor, storage: torch.Tensor, op: str, name: str) -> None:
    if index.dim() != 1 or index.dtype != torch.int64:
        raise RuntimeError(f"{op}: index must be a 1-D int64 tensor, got a {index.dim()}-D "
                           f"{_name(index.dtype)} tensor")
    if index.device != storage.device:
        raise RuntimeError(f"{op}: index is on {index.device} but {name} is on {storage.device}")


def _check_scale(scale: torch.Tensor | None, storage: torch.Tensor, op: str, name: str) -> None:
    if storage.dtype != torch.int8:
        if scale is not None:
            raise RuntimeError(f"{op}: scale is only used with int8 {name}, but {name} is {_name(storage.dtype)}")
        return
    if scale is None:
        raise RuntimeError(f"{op}: int8 {name} needs a per-channel float32 scale")
    if scale.dim() != 1 or scale.dtype != torch.float32:
        raise RuntimeError(f"{op}: scale must be a 1-D float32 tensor [channels], got a {scale.dim()}-D "
                           f"{_name(scale.dtype)} tensor")
    if scale.device != storage.device:
        raise RuntimeError(f"{op}: scale is on {scale.device} but {name} is on {storage.device}")
    channels, row_elems = scale.shape[0], storage.shape[1]
    if channels == 0 or row_elems % channels != 0:
        raise RuntimeError(f"{op}: scale has {channels} channels, which does not divide the {row_elems} "
                           "elements of a row")


def _check_output_dtype(dtype: torch.dtype, op: str) -> None:
    if dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"{op}: out dtype must be one of float32, float16, bfloat16, got {_name(dtype)}")


def _check_gather_output(out: torch.Tensor, src: torch.Tensor, rows: int, op: str) -> None:
    _check_output_dtype(out.dtype, op)
    if out.dim() != 2 or tuple(out.shape) != (rows, src.shape[1]) or not out.is_contiguous():
        raise RuntimeError(f"{op}: out must be a contiguous tensor of shape [{rows}, {src.shape[1]}], got shape "
                           f"{list(out.shape)} with strides {list(out.stride())}")
    if out.device != src.device:
        raise RuntimeError(f"{op}: out is on {out.device} but src is on {src.device}")


def _check_scatter_rows(rows: torch.Tensor, dst: torch.Tensor, num_index: int, op: str) -> None:
    if rows.dim() != 2 or tuple(rows.shape) != (num_index, dst.shape[1]):
        raise RuntimeError(f"{op}: rows must have shape [{num_index}, {dst.shape[1]}] (one row per index), "
                           f"got shape {list(rows.shape)}")
    if rows.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"{op}: rows dtype must be one of float32, float16, bfloat16, got {_name(rows.dtype)}")
    if rows.device != dst.device:
        raise RuntimeError(f"{op}: rows is on {rows.device} but dst is on {dst.device}")


def _check_bounds(index: torch.Tensor, num_rows: int, op: str, name: str) -> None:
    outside = (index < 0) | (index >= num_rows)
    if bool(outside.any()):
        position = int(outside.nonzero()[0, 0])
        raise IndexError(f"{op}: index[{position}] = {int(index[position])} is out of range for {name} with "
                         f"{num_rows} rows (valid: 0 <= index < {num_rows})")


def _check_unique(index: torch.Tensor, op: str) -> None:
    if torch.unique(index).numel() == index.numel():
        return
    first_position: dict[int, int] = {}
    for position, row in enumerate(index.tolist()):
        first = first_position.setdefault(row, position)
        if first != position:
            raise RuntimeError(f"{op}: index holds row {row} twice (positions {first} and {position}); each row "
                               "may be written once per call")


# --- ops --------------------------------------------------------------------------------------


def _gather(src: torch.Tensor, index: torch.Tensor, scale: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    rows = src.index_select(0, index)
    if src.dtype != torch.int8:
        return rows.to(out_dtype)
    channels = scale.shape[0]
    spatial = src.shape[1] // channels
    dequantized = rows.view(rows.shape[0], channels, spatial).float() * scale.view(1, channels, 1)
    return dequantized.view(rows.shape).to(out_dtype)


def _gather_guarded(src: torch.Tensor, index: torch.Tensor, scale: torch.Tensor | None,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """The CUDA kernels' guard, without reading ``index`` on the host: rows of out-of-range
    indices are NaN and read nothing (``index_select`` would fault on them)."""
    if src.shape[0] == 0:
        return torch.full((index.shape[0], src.shape[1]), float("nan"), dtype=out_dtype, device=src.device)
    valid = (index >= 0) & (index < src.shape[0])
    rows = _gather(src, torch.where(valid, index, torch.zeros_like(index)), scale, out_dtype)
    return rows.masked_fill_(~valid.unsqueeze(1), float("nan"))


def _checked_gather(src: torch.Tensor, index: torch.Tensor, scale: torch.Tensor | None, out_dtype: torch.dtype,
                    op: str) -> torch.Tensor:
    """Bounds checked with an ``IndexError`` on the CPU, guarded on a GPU (see the module doc)."""
    if src.device.type != "cpu":
        return _gather_guarded(src, index, scale, out_dtype)
    _check_bounds(index, src.shape[0], op, "src")
    return _gather(src, index, scale, out_dtype)


def gather_rows(src: torch.Tensor, index: torch.Tensor, scale: torch.Tensor | None,
                out_dtype: torch.dtype) -> torch.Tensor:
    """Rows ``src[index]`` as a new ``[len(index), row_elems]`` tensor of ``out_dtype``."""
    _check_storage(src, GATHER, "src")
    _check_index(index, src, GATHER, "src")
    _check_scale(scale, src, GATHER, "src")
    _check_output_dtype(out_dtype, GATHER)
    return _checked_gather(src, index, scale, out_dtype, GATHER)


def gather_rows_out(src: torch.Tensor, index: torch.Tensor, scale: torch.Tensor | None, out: torch.Tensor) -> None:
    """Rows ``src[index]`` written into the preallocated contiguous ``out``."""
    _check_storage(src, GATHER_OUT, "src")
    _check_index(index, src, GATHER_OUT, "src")
    _check_scale(scale, src, GATHER_OUT, "src")
    _check_gather_output(out, src, index.shape[0], GATHER_OUT)
    out.copy_(_checked_gather(src, index, scale, out.dtype, GATHER_OUT))


def scatter_rows(dst: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor | None) -> None:
    """``dst[index] = rows``, converted to ``dst``'s dtype; int8 rows are quantized as
    ``clamp(round(x / scale[channel]), -127, 127)`` (round half to even). Indices must be unique."""
    _check_storage(dst, SCATTER, "dst")
    _check_index(index, dst, SCATTER, "dst")
    _check_scatter_rows(rows, dst, index.shape[0], SCATTER)
    _check_scale(scale, dst, SCATTER, "dst")
    _check_bounds(index, dst.shape[0], SCATTER, "dst")
    _check_unique(index, SCATTER)
    if dst.dtype == torch.int8:
        channels = scale.shape[0]
        spatial = dst.shape[1] // channels
        scaled = rows.float().view(rows.shape[0], channels, spatial) / scale.view(1, channels, 1)
        rows = scaled.round().clamp(-127, 127).to(torch.int8).view(rows.shape)
    dst.index_copy_(0, index, rows.to(dst.dtype))


def compute_int8_scale(rows: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-channel int8 scale ``absmax / 127`` over rows ``[B, channels * spatial]`` (float32
    ``[channels]``); an all-zero channel gets scale 1, a channel holding NaN or an infinity a
    non-finite scale (refusing it would need a sync on a GPU: ``ops.compute_int8_scale`` refuses
    it on the CPU)."""
    if rows.dim() != 2:
        raise RuntimeError(f"{SCALE}: rows must be a 2-D tensor [rows, row_elems], got shape {list(rows.shape)}")
    if rows.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"{SCALE}: rows dtype must be one of float32, float16, bfloat16, got {_name(rows.dtype)}")
    if channels <= 0 or rows.shape[1] % channels != 0:
        raise RuntimeError(f"{SCALE}: channels = {channels} does not divide the {rows.shape[1]} elements of a row")
    if rows.shape[0] == 0:
        raise RuntimeError(f"{SCALE}: rows is empty; the scale needs at least one row")
    absmax = rows.detach().reshape(rows.shape[0], channels, -1).abs().amax(dim=(0, 2)).float()
    return (absmax / 127.0).masked_fill(absmax == 0, 1.0)


# --- prefetcher -------------------------------------------------------------------------------

_END = object()


def read_file_rows(file: tuple[int, int], index: torch.Tensor, row_elems: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``index`` of a table stored row after row in a file from byte ``file[1]`` on, read
    with positioned reads into ``[len(index), row_elems]`` of ``dtype``."""
    descriptor, offset = file
    row_bytes = row_elems * dtype.itemsize
    out = bytearray(len(index) * row_bytes)
    view = memoryview(out)
    for i, row in enumerate(index.tolist()):
        done = 0
        while done < row_bytes:
            got = os.preadv(descriptor, [view[i * row_bytes + done:(i + 1) * row_bytes]], offset + row * row_bytes + done)
            if got == 0:
                raise RuntimeError(f"{PREFETCH}: reading row {row} of the cache file failed: the file ends early")
            done += got
    return torch.frombuffer(out, dtype=dtype).view(len(index), row_elems) if out else torch.empty(0, row_elems, dtype=dtype)


class Prefetcher:
    """Thread-based twin of the native prefetcher: gathers the next ``depth`` batches of
    ``storage`` rows on one background thread and hands them out in order with :meth:`next`.

    ``num_workers`` is accepted for parity with the native class; this fallback uses one thread
    (torch ops drop the GIL while they copy, so one thread already overlaps with the trainer).
    ``file``: ``(descriptor, offset of row 0)`` to read the rows from with positioned reads, the
    storage then giving only the table's shape and dtype (as the native class).
    """

    def __init__(self, storage: torch.Tensor, batches: Sequence[torch.Tensor], scale: torch.Tensor | None,
                 out_dtype: torch.dtype, depth: int, num_workers: int, device: torch.device | None,
                 file: tuple[int, int] | None = None) -> None:
        _check_storage(storage, PREFETCH, "storage")
        if storage.device.type != "cpu":
            raise RuntimeError(f"{PREFETCH}: storage must be on the CPU, got {storage.device} "
                               "(a table already on the device is read with gather_rows)")
        _check_scale(scale, storage, PREFETCH, "storage")
        _check_output_dtype(out_dtype, PREFETCH)
        if depth < 1:
            raise RuntimeError(f"{PREFETCH}: depth must be at least 1, got {depth}")
        if num_workers < 1:
            raise RuntimeError(f"{PREFETCH}: num_workers must be at least 1, got {num_workers}")
        for i, index in enumerate(batches):
            _check_index(index, storage, f"{PREFETCH} (batch {i})", "storage")
            _check_bounds(index, storage.shape[0], f"{PREFETCH} (batch {i})", "storage")
        self.num_batches = len(batches)
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            # snapshots, as the native class takes: later in-place edits by the caller do not count
            target=self._work, args=(storage, [index.clone() for index in batches], scale, out_dtype, device, file),
            name="phasenets-prefetch", daemon=True)
        self._thread.start()

    def _work(self, storage, batches, scale, out_dtype, device, file) -> None:
        try:
            for index in batches:
                if file is None:
                    batch = _gather(storage, index, scale, out_dtype)
                else:
                    rows = read_file_rows(file, index, storage.shape[1], storage.dtype)
                    batch = _gather(rows, torch.arange(len(index)), scale, out_dtype)
                if device is not None and device.type != "cpu":
                    batch = batch.to(device)
                if not self._put(batch):
                    return
        except BaseException as error:  # handed to the consumer, raised by next()
            self._put(error)
            return
        self._put(_END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> torch.Tensor | None:
        """The next batch, or None once every batch was handed out or after :meth:`close`.
        Raises the worker's error, here and on every later call."""
        if self._error is not None:
            raise self._error
        if self._finished or self._stop.is_set():
            return None
        item = self._take()
        if item is None:  # closed while waiting
            return None
        if isinstance(item, BaseException):
            self._error = item
            raise item
        if item is _END:
            self._finished = True
            return None
        return item

    def _take(self):
        while True:
            try:
                return self._ready.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return None

    def close(self) -> None:
        """Stops and joins the worker thread; pending batches are dropped. Idempotent."""
        self._stop.set()
        self._thread.join()
