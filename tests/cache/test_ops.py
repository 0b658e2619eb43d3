"""The native row ops against their pure-torch reference (phasenets/cache/reference.py).

Native results must equal the reference bit for bit: both compute in float32 and round the same
way. Bad arguments must fail identically in both (same exception type, same message). Tests that
need the extension are skipped when it is not built.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import pytest
import torch

from phasenets import _extension
from phasenets.cache import ops, reference

needs_native = pytest.mark.skipif(not _extension.native_available(), reason="phasenets._C is not built")

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
STORAGE_DTYPES = FLOAT_DTYPES + [torch.int8]
# (rows, channels, spatial): feature maps with channel runs longer and shorter than a vector of 8,
# flat features (spatial 1), a tiny table
SHAPES = [(16, 3, 20), (40, 4, 6), (25, 9, 1), (3, 2, 3)]


def native_op(name):
    return getattr(torch.ops.phasenets, name)


def make_table(rows, channels, spatial, dtype, seed=0):
    """A random storage table and its scale (None unless int8)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, channels * spatial, generator=generator) * 3
    if dtype != torch.int8:
        return values.to(dtype), None
    scale = reference.compute_int8_scale(values, channels)
    table = torch.zeros(rows, channels * spatial, dtype=torch.int8)
    reference.scatter_rows(table, torch.arange(rows), values, scale)
    return table, scale


def random_index(rows, count, seed=1):
    return torch.randint(0, rows, (count,), generator=torch.Generator().manual_seed(seed))


# --- gather ---------------------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("src_dtype", STORAGE_DTYPES)
def test_gather_matches_reference(src_dtype, out_dtype, shape):
    src, scale = make_table(*shape, src_dtype)
    index = random_index(shape[0], 2 * shape[0])  # repeats included
    expected = reference.gather_rows(src, index, scale, out_dtype)
    assert torch.equal(native_op("gather_rows")(src, index, scale, out_dtype), expected)
    out = torch.full_like(expected, float("nan"))
    native_op("gather_rows_out")(src, index, scale, out)
    assert torch.equal(out, expected)


@needs_native
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_gather_rounds_like_torch_on_edge_values(out_dtype):
    """Ties, overflow, subnormals, infinities and NaN convert as torch's .to() does (the vectorized
    CPU path rounds on the bits, so check it where rounding is delicate)."""
    tie_bf16 = 1 + 2.0**-8  # halfway between two bfloat16 values
    tie_fp16 = 1 + 2.0**-11
    edge = torch.tensor([tie_bf16, -tie_bf16, 1 + 3 * 2.0**-8, tie_fp16, 1 + 3 * 2.0**-11, 65520.0, 1e-8, 3e-39,
                         -0.0, float("inf"), float("-inf"), float("nan"), 1e38, 2.0**-24, 2.0**-25, 0.1])
    table = edge.repeat(3, 2)  # 32 elements per row: vector body and no tail
    table = torch.cat([table, table[:, :13]], dim=1)  # and a 13-element scalar tail
    gathered = torch.ops.phasenets.gather_rows(table, torch.tensor([2, 0]), None, out_dtype)
    expected = table[[2, 0]].to(out_dtype)
    nan = expected.isnan()
    assert torch.equal(gathered.isnan(), nan)
    assert torch.equal(gathered[~nan], expected[~nan])


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("src_dtype", FLOAT_DTYPES)
def test_reference_gather_is_indexing(src_dtype, out_dtype):
    src, _ = make_table(30, 5, 2, src_dtype)
    index = random_index(30, 12)
    assert torch.equal(reference.gather_rows(src, index, None, out_dtype), src[index].to(out_dtype))


def test_gather_default_dtype_and_out():
    src, scale = make_table(10, 2, 2, torch.int8)
    index = torch.tensor([4, 0, 9])
    assert ops.gather_rows(src, index, scale).dtype == torch.float32
    half = torch.randn(10, 4).half()
    assert ops.gather_rows(half, index).dtype == torch.float16
    out = torch.empty(3, 4, dtype=torch.bfloat16)
    assert ops.gather_rows(src, index, scale, out=out) is out
    assert torch.equal(out, reference.gather_rows(src, index, scale, torch.bfloat16))
    with pytest.raises(RuntimeError, match="disagrees with out.dtype"):
        ops.gather_rows(src, index, scale, out_dtype=torch.float32, out=out)


# --- scatter and int8 -----------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rows_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("dst_dtype", STORAGE_DTYPES)
def test_scatter_matches_reference(dst_dtype, rows_dtype, shape):
    num_rows, channels, spatial = shape
    generator = torch.Generator().manual_seed(2)
    index = torch.randperm(num_rows, generator=generator)[: max(1, num_rows // 2)]
    values = (torch.randn(index.numel(), channels * spatial, generator=generator) * 4).to(rows_dtype)
    scale = reference.compute_int8_scale(values, channels) if dst_dtype == torch.int8 else None
    expected = torch.zeros(num_rows, channels * spatial, dtype=dst_dtype)
    reference.scatter_rows(expected, index, values, scale)
    actual = torch.zeros_like(expected)
    native_op("scatter_rows")(actual, index, values, scale)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("spatial", [1, 7])
def test_int8_round_trip_within_half_a_step(spatial):
    channels = 5
    values = torch.randn(64, channels * spatial) * torch.logspace(-3, 2, channels).repeat_interleave(spatial)
    scale = ops.compute_int8_scale(values, channels)
    table = torch.empty(64, channels * spatial, dtype=torch.int8)
    ops.scatter_rows(table, torch.arange(64), values, scale)
    restored = ops.gather_rows(table, torch.arange(64), scale, torch.float32)
    step = scale.repeat_interleave(spatial)
    assert bool(((restored - values).abs() <= step / 2 * (1 + 1e-5)).all())
    # the largest magnitude of each channel lands exactly on +-127
    assert torch.equal(table.view(64, channels, spatial).abs().amax(dim=(0, 2)), torch.full((channels,), 127, dtype=torch.int8))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_compute_int8_scale(dtype):
    rows = torch.tensor([[1.0, -2.0, 0.0, 0.0], [-4.0, 0.5, 0.0, 0.0]]).to(dtype)
    expected = torch.tensor([4.0 / 127, 1.0])  # channels: {1, -2, -4, 0.5}, {0, 0, 0, 0}
    assert torch.equal(ops.compute_int8_scale(rows, 2), expected)
    assert torch.equal(reference.compute_int8_scale(rows, 2), expected)


# --- layouts ----------------------------------------------------------------------------------------


@pytest.fixture(params=["native", "reference"])
def ops_module(request):
    """The op namespace under test: ``torch.ops.phasenets`` or the reference module."""
    if request.param == "reference":
        return reference
    if not _extension.native_available():
        pytest.skip("phasenets._C is not built")
    return torch.ops.phasenets


@pytest.mark.parametrize("dtype", STORAGE_DTYPES)
def test_strided_inputs_are_handled(ops_module, dtype):
    """Row-strided tables, strided indices and strided rows work; only rows must be contiguous."""
    table, scale = make_table(40, 3, 4, dtype)
    every_other_row = table[::2]  # row stride 2 * row_elems
    index = torch.arange(20).flip(0)[::3]  # non-contiguous
    gathered = ops_module.gather_rows(every_other_row, index, scale, torch.float32)
    assert torch.equal(gathered, reference.gather_rows(every_other_row.contiguous(), index.contiguous(), scale, torch.float32))

    values = torch.randn(12, 4).t()  # [4, 12], column-major
    target = torch.zeros(10, 12, dtype=dtype)[::2]  # a row-strided view written in place
    row_scale = reference.compute_int8_scale(values.contiguous(), 3) if dtype == torch.int8 else None
    ops_module.scatter_rows(target, torch.tensor([4, 0, 2, 1]), values, row_scale)
    expected = torch.zeros(5, 12, dtype=dtype)
    reference.scatter_rows(expected, torch.tensor([4, 0, 2, 1]), values.contiguous(), row_scale)
    assert torch.equal(target, expected)


@pytest.mark.parametrize("dtype", STORAGE_DTYPES)
def test_empty_index(ops_module, dtype):
    table, scale = make_table(6, 2, 2, dtype)
    before = table.clone()
    empty = torch.empty(0, dtype=torch.int64)
    gathered = ops_module.gather_rows(table, empty, scale, torch.float16)
    assert gathered.shape == (0, 4) and gathered.dtype == torch.float16
    ops_module.scatter_rows(table, empty, torch.empty(0, 4), scale)
    assert torch.equal(table, before)


def test_memory_mapped_storage(tmp_path):
    """The disk tier's storage: a file mapped with torch.from_file(shared=True)."""
    path = tmp_path / "table.bin"
    table = torch.from_file(str(path), shared=True, size=50 * 8, dtype=torch.float16).view(50, 8)
    values = torch.randn(50, 8)
    ops.scatter_rows(table, torch.arange(50), values)
    reopened = torch.from_file(str(path), shared=True, size=50 * 8, dtype=torch.float16).view(50, 8)
    index = torch.tensor([49, 3, 3])
    assert torch.equal(ops.gather_rows(reopened, index, out_dtype=torch.float32), values.half()[index].float())


# --- errors: the same exception and message from both backends -------------------------------------------


def _args(**overrides):
    """gather/scatter arguments: a valid int8 call unless overridden."""
    table, scale = make_table(10, 2, 3, torch.int8)
    args = dict(table=table, index=torch.tensor([0, 9, 4]), scale=scale, rows=torch.randn(3, 6),
                out_dtype=torch.float32, out=torch.empty(3, 6))
    args.update(overrides)
    return args


ERROR_CASES = [
    # (case, op, overrides, exception, message)
    ("index past the end", "gather", dict(index=torch.tensor([0, 10, 4])), IndexError,
     "phasenets.gather_rows: index[1] = 10 is out of range for src with 10 rows (valid: 0 <= index < 10)"),
    ("negative index", "gather", dict(index=torch.tensor([0, 1, -1])), IndexError, "index[2] = -1 is out of range"),
    ("huge index", "gather_out", dict(index=torch.tensor([2**62, 0, 0])), IndexError, "index[0] = 4611686018427387904"),
    ("scatter past the end", "scatter", dict(index=torch.tensor([0, 1, 12])), IndexError,
     "phasenets.scatter_rows: index[2] = 12 is out of range for dst with 10 rows"),
    ("scatter duplicate", "scatter", dict(index=torch.tensor([3, 5, 3])), RuntimeError,
     "index holds row 3 twice (positions 0 and 2)"),
    ("int32 index", "gather", dict(index=torch.tensor([0, 1, 2], dtype=torch.int32)), RuntimeError,
     "index must be a 1-D int64 tensor, got a 1-D int32 tensor"),
    ("2-D index", "scatter", dict(index=torch.zeros(3, 1, dtype=torch.int64)), RuntimeError,
     "index must be a 1-D int64 tensor, got a 2-D int64 tensor"),
    ("3-D table", "gather", dict(table=torch.zeros(10, 2, 3)), RuntimeError,
     "src must be a 2-D tensor [rows, row_elems], got shape [10, 2, 3]"),
    ("int32 table", "scatter", dict(table=torch.zeros(10, 6, dtype=torch.int32), scale=None), RuntimeError,
     "dst dtype must be one of float32, float16, bfloat16, int8, got int32"),
    ("transposed table", "gather", dict(table=torch.zeros(6, 10).t(), scale=None), RuntimeError,
     "src must have contiguous rows (stride 1 along dim 1), got strides [1, 10]"),
    ("int8 without scale", "gather", dict(scale=None), RuntimeError, "int8 src needs a per-channel float32 scale"),
    ("scale on float table", "scatter", dict(table=torch.zeros(10, 6)), RuntimeError,
     "scale is only used with int8 dst, but dst is float32"),
    ("float64 scale", "gather", dict(scale=torch.ones(2, dtype=torch.float64)), RuntimeError,
     "scale must be a 1-D float32 tensor [channels], got a 1-D float64 tensor"),
    ("scale not dividing", "scatter", dict(scale=torch.ones(4)), RuntimeError,
     "scale has 4 channels, which does not divide the 6 elements of a row"),
    ("int8 output", "gather", dict(out_dtype=torch.int8), RuntimeError,
     "out dtype must be one of float32, float16, bfloat16, got int8"),
    ("wrong out shape", "gather_out", dict(out=torch.empty(3, 5)), RuntimeError,
     "out must be a contiguous tensor of shape [3, 6], got shape [3, 5]"),
    ("strided out", "gather_out", dict(out=torch.empty(6, 3).t()), RuntimeError, "out must be a contiguous tensor"),
    ("rows per index", "scatter", dict(rows=torch.randn(2, 6)), RuntimeError,
     "rows must have shape [3, 6] (one row per index), got shape [2, 6]"),
    ("int rows", "scatter", dict(rows=torch.ones(3, 6, dtype=torch.int64)), RuntimeError,
     "rows dtype must be one of float32, float16, bfloat16, got int64"),
]


def _call(ops_module, op, args):
    if op == "gather":
        return ops_module.gather_rows(args["table"], args["index"], args["scale"], args["out_dtype"])
    if op == "gather_out":
        return ops_module.gather_rows_out(args["table"], args["index"], args["scale"], args["out"])
    return ops_module.scatter_rows(args["table"], args["index"], args["rows"], args["scale"])


@pytest.mark.parametrize("case, op, overrides, error, message", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_arguments_fail_cleanly(case, op, overrides, error, message):
    backends = [reference] + ([torch.ops.phasenets] if _extension.native_available() else [])
    messages = []
    for ops_module in backends:
        args = _args(**overrides)
        before = args["table"].clone()
        with pytest.raises(error, match=re.escape(message)) as raised:
            _call(ops_module, op, args)
        assert torch.equal(args["table"], before), "a failed call must not touch the table"
        messages.append(str(raised.value).splitlines()[0])
    assert len(set(messages)) == 1, messages


@needs_native
def test_compute_int8_scale_errors_match():
    for rows, channels, message in [
        (torch.ones(2, 6), 4, "channels = 4 does not divide the 6 elements of a row"),
        (torch.ones(0, 6), 2, "rows is empty"),
        (torch.ones(2, 6, dtype=torch.int8), 2, "rows dtype must be one of float32, float16, bfloat16, got int8"),
    ]:
        for fn in (reference.compute_int8_scale, torch.ops.phasenets.compute_int8_scale):
            with pytest.raises(RuntimeError, match=re.escape(message)):
                fn(rows, channels)


def test_int8_scale_of_non_finite_rows():
    """The op never looks at the values on the host (on CUDA that is a sync): a channel holding NaN
    or an infinity gets a non-finite scale; the Python wrapper refuses it on the CPU, where
    checking costs nothing."""
    rows = torch.tensor([[1.0, float("inf"), 0.0], [2.0, 0.0, float("nan")]])
    backends = [reference.compute_int8_scale] + (
        [torch.ops.phasenets.compute_int8_scale] if _extension.native_available() else [])
    for compute in backends:
        scale = compute(rows, 3)
        assert scale[0] == 2.0 / 127 and scale[1] == float("inf") and scale[2].isnan()
    with pytest.raises(RuntimeError, match=re.escape("rows hold NaN or infinite values, which int8 cannot represent")):
        ops.compute_int8_scale(rows, 3)


# --- torch.compile support ---------------------------------------------------------------------------


@needs_native
def test_ops_have_fake_implementations():
    table, scale = make_table(10, 2, 3, torch.int8)
    index = torch.tensor([1, 2])
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.phasenets.gather_rows.default, (table, index, scale, torch.float16), test_utils=checks)
    torch.library.opcheck(torch.ops.phasenets.gather_rows_out.default, (table, index, scale, torch.empty(2, 6)),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.phasenets.scatter_rows.default, (table, index, torch.randn(2, 6), scale),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.phasenets.compute_int8_scale.default, (torch.randn(4, 6), 2))
    assert not torch.ops.phasenets.compute_int8_scale(torch.randn(4, 6, requires_grad=True), 2).requires_grad


@needs_native
def test_ops_compile_without_graph_breaks():
    """The read path traces whole (fullgraph): no op reads a value back to the host. aot_eager
    runs dynamo and AOT autograd over the fake implementations without a C++ compile."""

    def quantize_and_read(rows, table, index):
        scale = torch.ops.phasenets.compute_int8_scale(rows, 2)
        return scale * 2, torch.ops.phasenets.gather_rows(table, index, None, torch.float16) + 1

    compiled = torch.compile(quantize_and_read, fullgraph=True, backend="aot_eager")
    rows, (table, _), index = torch.randn(5, 6), make_table(10, 2, 3, torch.float32), torch.tensor([9, 0, 4])
    for got, want in zip(compiled(rows, table, index), quantize_and_read(rows, table, index)):
        assert torch.equal(got, want)


def test_reference_guard_of_device_reads():
    """What a gather from a GPU table gives for out-of-range indices, without a sync: a NaN row,
    and nothing read outside the table (the CUDA kernels do the same; tests/cache/test_cuda_cache.py
    checks both on a GPU)."""
    table, scale = make_table(6, 2, 2, torch.int8)
    index = torch.tensor([5, -1, 6, 2**40, 0])
    for src, src_scale in [(table, scale), (table[:0], scale)]:
        guarded = reference._gather_guarded(src, index, src_scale, torch.bfloat16)
        assert guarded.shape == (5, 4) and guarded.dtype == torch.bfloat16
        valid = (index >= 0) & (index < src.shape[0])
        assert bool(guarded[~valid].isnan().all())
        assert torch.equal(guarded[valid], reference.gather_rows(src, index[valid], src_scale, torch.bfloat16))


# --- prefetcher ----------------------------------------------------------------------------------------


def _batches(rows, sizes, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, rows, (size,), generator=generator) for size in sizes]


def _prefetcher_backends():
    return [False, True] if _extension.native_available() else [False]


@pytest.mark.parametrize("native", _prefetcher_backends(), ids=lambda n: "native" if n else "reference")
@pytest.mark.parametrize("depth, workers", [(1, 1), (3, 2)])
@pytest.mark.parametrize("storage_dtype, out_dtype", [(d, torch.float32) for d in STORAGE_DTYPES]
                         + [(torch.float32, torch.float16), (torch.int8, torch.bfloat16)])
def test_prefetcher_yields_reference_batches_in_order(native, depth, workers, storage_dtype, out_dtype, monkeypatch):
    if not native:
        monkeypatch.setattr(_extension, "native_available", lambda: False)
    table, scale = make_table(30, 3, 2, storage_dtype)
    batches = _batches(30, [7, 7, 0, 7, 3, 7, 7, 1])
    with ops.Prefetcher(table, batches, scale, out_dtype, depth=depth, num_workers=workers) as prefetcher:
        assert prefetcher.native == native and len(prefetcher) == len(batches)
        received = list(prefetcher)  # all kept alive at once: buffers must not be recycled under us
    expected = [reference.gather_rows(table, b, scale, out_dtype) for b in batches]
    assert len(received) == len(expected)
    for got, want in zip(received, expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("native", _prefetcher_backends(), ids=lambda n: "native" if n else "reference")
@pytest.mark.parametrize("storage_dtype, out_dtype", [(torch.float16, torch.float32), (torch.int8, torch.float16)])
def test_a_file_backed_prefetcher_reads_the_same_rows_from_the_file(native, storage_dtype, out_dtype, tmp_path,
                                                                    monkeypatch):
    """The disk tier's source: the table's bytes in a file after a header; the storage given only
    for its shape and dtype (a zeroed stand-in here, so a read from memory would show)."""
    if not native:
        monkeypatch.setattr(_extension, "native_available", lambda: False)
    table, scale = make_table(30, 3, 2, storage_dtype)
    path = tmp_path / "rows.bin"
    header = b"h" * 100
    path.write_bytes(header + table.contiguous().view(torch.uint8).numpy().tobytes())
    batches = _batches(30, [7, 0, 7, 3])
    with open(path, "rb") as file:
        prefetcher = ops.Prefetcher(torch.zeros_like(table), batches, scale, out_dtype, depth=2,
                                    file=(file.fileno(), len(header)))
        received = list(prefetcher)
    assert [torch.equal(got, reference.gather_rows(table, b, scale, out_dtype)) for got, b in zip(received, batches)] \
        == [True] * len(batches)

    path.write_bytes(header + table.view(torch.uint8).numpy().tobytes()[:50])  # torn: rows past its end
    with open(path, "rb") as file, pytest.raises(Exception, match="ends early"):
        list(ops.Prefetcher(torch.zeros_like(table), batches, scale, out_dtype, file=(file.fileno(), len(header))))


@pytest.mark.parametrize("native", _prefetcher_backends(), ids=lambda n: "native" if n else "reference")
def test_prefetcher_closes_mid_iteration(native, monkeypatch):
    if not native:
        monkeypatch.setattr(_extension, "native_available", lambda: False)
    table, _ = make_table(100, 4, 4, torch.float16)
    threads_before = threading.active_count()
    prefetcher = ops.Prefetcher(table, _batches(100, [16] * 50), None, torch.float32, depth=4, num_workers=2)
    first = next(prefetcher)
    next(prefetcher)
    prefetcher.close()
    prefetcher.close()  # idempotent
    with pytest.raises(StopIteration):
        next(prefetcher)
    assert first.shape == (16, 16)
    assert threading.active_count() == threads_before  # the fallback's thread is joined
    del prefetcher  # the native destructor joins an already-closed prefetcher


@pytest.mark.parametrize("native", _prefetcher_backends(), ids=lambda n: "native" if n else "reference")
def test_prefetcher_checks_batches_up_front(native, monkeypatch):
    if not native:
        monkeypatch.setattr(_extension, "native_available", lambda: False)
    table, _ = make_table(10, 2, 2, torch.float32)
    batches = [torch.tensor([0, 1]), torch.tensor([9]), torch.tensor([3, 10])]
    with pytest.raises(IndexError, match=re.escape("phasenets.Prefetcher (batch 2): index[1] = 10 is out of range")):
        ops.Prefetcher(table, batches, None, torch.float32)
    with pytest.raises(RuntimeError, match="depth must be at least 1, got 0"):
        ops.Prefetcher(table, batches[:2], None, torch.float32, depth=0)
    with pytest.raises(RuntimeError, match="int8 storage needs a per-channel float32 scale"):
        ops.Prefetcher(table.to(torch.int8), batches[:2], None, torch.float32)


@pytest.mark.parametrize("native", _prefetcher_backends(), ids=lambda n: "native" if n else "reference")
def test_prefetcher_snapshots_its_batches(native, monkeypatch):
    """Indices edited in place after construction (a reused buffer, say) neither change the
    batches nor get past the bounds check."""
    if not native:
        monkeypatch.setattr(_extension, "native_available", lambda: False)
    table, _ = make_table(10, 2, 2, torch.float32)
    first, second = torch.tensor([0]), torch.tensor([1, 2, 3])
    # depth 1: the native workers cannot start on `second` before `first` is handed out
    prefetcher = ops.Prefetcher(table, [first, second], None, torch.float32, depth=1)
    second.fill_(10**9)
    assert torch.equal(next(prefetcher), table[[0]])
    assert torch.equal(next(prefetcher), table[[1, 2, 3]])
    prefetcher.close()


def test_reference_prefetcher_raises_worker_errors(monkeypatch):
    def broken_gather(*args):
        raise RuntimeError("disk read failed")

    monkeypatch.setattr(_extension, "native_available", lambda: False)
    monkeypatch.setattr(reference, "_gather", broken_gather)
    prefetcher = ops.Prefetcher(torch.zeros(4, 2), [torch.tensor([0])], None, torch.float32)
    for _ in range(2):  # and again on a later call
        with pytest.raises(RuntimeError, match="disk read failed"):
            next(prefetcher)
    prefetcher.close()


@needs_native
def test_native_prefetcher_recycles_released_buffers():
    table, _ = make_table(50, 2, 4, torch.float32)
    batches = _batches(50, [8] * 20)
    seen = set()
    for batch in ops.Prefetcher(table, batches, None, torch.float32, depth=2):
        seen.add(batch.data_ptr())
        del batch
    assert len(seen) <= 4, "released batches should be reused, not reallocated"


# --- fallback -----------------------------------------------------------------------------------------------


def test_import_without_native_warns_once_and_falls_back():
    script = (
        "import warnings; warnings.simplefilter('always')\n"
        "import torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    from phasenets.cache import ops\n"
        "    import phasenets._extension as ext\n"
        "    assert not ext.native_available()\n"
        "    out = ops.gather_rows(torch.arange(6.).view(3, 2), torch.tensor([2, 0]))\n"
        "    assert out.tolist() == [[4.0, 5.0], [0.0, 1.0]]\n"
        "assert sum('native extension' in str(w.message) for w in caught) == 1, [str(w.message) for w in caught]\n"
    )
    env = dict(os.environ, PHASENETS_DISABLE_NATIVE="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- CUDA ---------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("src_dtype", STORAGE_DTYPES)
def test_cuda_kernels_match_reference(src_dtype):
    assert ops.uses_native(torch.empty(0, device="cuda")), "the extension was built without CUDA"
    table, scale = make_table(64, 4, 5, src_dtype)
    index = random_index(64, 100)
    table_gpu, index_gpu = table.cuda(), index.cuda()
    scale_gpu = scale.cuda() if scale is not None else None
    for out_dtype in FLOAT_DTYPES:
        gathered = ops.gather_rows(table_gpu, index_gpu, scale_gpu, out_dtype)
        assert torch.equal(gathered.cpu(), reference.gather_rows(table, index, scale, out_dtype))
    values = torch.randn(20, 20)
    targets = torch.randperm(64)[:20]
    ops.scatter_rows(table_gpu, targets.cuda(), values.cuda(), scale_gpu)
    reference.scatter_rows(table, targets, values, scale)
    assert torch.equal(table_gpu.cpu(), table)
    # writes still check their targets on the host (the build path may sync)
    with pytest.raises(IndexError, match=re.escape("phasenets.scatter_rows: index[1] = 64 is out of range")):
        ops.scatter_rows(table_gpu, torch.tensor([0, 64], device="cuda"), values[:2].cuda(), scale_gpu)
    with pytest.raises(RuntimeError, match=re.escape("index holds row 3 twice")):
        ops.scatter_rows(table_gpu, torch.tensor([3, 3], device="cuda"), values[:2].cuda(), scale_gpu)
    assert torch.equal(table_gpu.cpu(), table)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES + [(8, 2, 8)], ids=str)  # 16-element rows: the 16-byte copy path too
@pytest.mark.parametrize("src_dtype", STORAGE_DTYPES)
def test_cuda_kernels_take_strided_and_empty_input(src_dtype, shape):
    rows, channels, spatial = shape
    table, scale = make_table(2 * rows, channels, spatial, src_dtype)
    scale_gpu = scale.cuda() if scale is not None else None
    every_other_row, every_other_row_gpu = table[::2], table.cuda()[::2]  # row stride 2 * row_elems
    index_gpu = random_index(rows, 3 * rows).cuda()[::3]  # non-contiguous, with repeats
    index = index_gpu.cpu()
    for out_dtype in FLOAT_DTYPES:
        expected = reference.gather_rows(every_other_row, index, scale, out_dtype)
        assert torch.equal(ops.gather_rows(every_other_row_gpu, index_gpu, scale_gpu, out_dtype).cpu(), expected)
        out = torch.full(expected.shape, float("nan"), dtype=out_dtype, device="cuda")
        ops.gather_rows(every_other_row_gpu, index_gpu, scale_gpu, out=out)
        assert torch.equal(out.cpu(), expected)
    empty = torch.empty(0, dtype=torch.int64, device="cuda")
    gathered = ops.gather_rows(every_other_row_gpu, empty, scale_gpu, torch.bfloat16)
    assert gathered.is_cuda and gathered.shape == (0, channels * spatial)
    ops.scatter_rows(every_other_row_gpu, empty, torch.empty(0, channels * spatial, device="cuda"), scale_gpu)
    assert torch.equal(every_other_row_gpu.cpu(), every_other_row)


@pytest.mark.cuda
def test_cuda_prefetcher_delivers_to_device():
    table, scale = make_table(64, 4, 5, torch.int8)
    batches = _batches(64, [16, 16, 5])
    received = list(ops.Prefetcher(table, batches, scale, torch.float16, device="cuda", depth=2))
    for got, index in zip(received, batches):
        assert got.device.type == "cuda"
        assert torch.equal(got.cpu(), reference.gather_rows(table, index, scale, torch.float16))


@needs_native
def test_flush_denormal_reaches_every_intra_op_thread():
    """torch.set_flush_denormal sets only the calling thread; the native call sets the pool's too,
    so an elementwise product computed in chunks across threads gives no denormal anywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tiny = torch.full((1 << 22,), 1e-30)
        assert _extension.set_flush_denormal(False) in (True, False)
        if not _extension.set_flush_denormal(True):
            pytest.skip("this CPU has no flush-to-zero mode")
        assert (tiny * 1e-10 == 0).all()  # 1e-40 is a float32 denormal: flushed in every chunk
        _extension.set_flush_denormal(False)
        assert (tiny * 1e-10 != 0).all()
    finally:
        _extension.set_flush_denormal(False)
        torch.set_num_threads(threads)
