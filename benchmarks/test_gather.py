"""T4: the native row gather vs the pure-torch reference (phasenets/cache/reference.py).

Run: ``python -m pytest benchmarks/test_gather.py --benchmark-only -q -s`` (on an otherwise idle
machine). A storage table of 50,000 rows x 4,096 elements (``PHASENETS_BENCH_ROWS`` overrides the
row count), batches of 256 random rows, as the trainer reads a host-tier cache. Each case checks
that both implementations return the same batch before timing either; the module prints the
ratios at the end (targets: >= 1.0x for fp16 rows, >= 1.5x for int8 with dequantize).
"""
import os

import pytest
import torch

from phasenets import _extension
from phasenets.cache import reference

pytestmark = pytest.mark.skipif(not _extension.native_available(), reason="phasenets._C is not built")

NUM_ROWS = int(os.environ.get("PHASENETS_BENCH_ROWS", "50000"))
ROW_ELEMS = 4096  # e.g. 256 channels x 4 x 4
CHANNELS = 256
BATCH = 256
NUM_BATCHES = 16  # distinct random batches, cycled through the rounds
# case -> (storage dtype, output dtype, target ratio)
CASES = {
    "fp16": (torch.float16, torch.float16, 1.0),
    "fp16_to_fp32": (torch.float16, torch.float32, 1.0),
    "int8_dequant_fp32": (torch.int8, torch.float32, 1.5),
    "int8_dequant_fp16": (torch.int8, torch.float16, 1.5),
}
IMPLEMENTATIONS = {"native": lambda *args: torch.ops.phasenets.gather_rows(*args), "reference": reference.gather_rows}
_median_seconds = {}


@pytest.fixture(scope="module")
def tables():
    """One fp16 and one int8 table (+ scale), filled chunk by chunk to keep peak memory low."""
    generator = torch.Generator().manual_seed(0)
    half = torch.empty(NUM_ROWS, ROW_ELEMS, dtype=torch.float16)
    for start in range(0, NUM_ROWS, 4096):
        chunk = half[start:start + 4096]
        chunk.copy_(torch.randn(chunk.shape, generator=generator))
    quantized = torch.randint(-127, 128, (NUM_ROWS, ROW_ELEMS), dtype=torch.int8, generator=generator)
    scale = torch.rand(CHANNELS, generator=generator) / 100
    batches = [torch.randint(0, NUM_ROWS, (BATCH,), generator=generator) for _ in range(NUM_BATCHES)]
    return {torch.float16: (half, None), torch.int8: (quantized, scale)}, batches


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_gather_batch(benchmark, tables, case, implementation):
    storage_dtype, out_dtype, _ = CASES[case]
    by_dtype, batches = tables
    table, scale = by_dtype[storage_dtype]
    gather = IMPLEMENTATIONS[implementation]
    for index in batches[:2]:
        expected = reference.gather_rows(table, index, scale, out_dtype)
        assert torch.equal(torch.ops.phasenets.gather_rows(table, index, scale, out_dtype), expected)

    cycle = iter(range(10**9))
    batch = benchmark.pedantic(lambda: gather(table, batches[next(cycle) % NUM_BATCHES], scale, out_dtype),
                               rounds=200, warmup_rounds=10)
    assert batch.shape == (BATCH, ROW_ELEMS) and batch.dtype == out_dtype
    _median_seconds[case, implementation] = benchmark.stats.stats.median
    benchmark.extra_info["GB_per_second_out"] = round(batch.nbytes / benchmark.stats.stats.median / 1e9, 2)


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request):
    """After the timed cases, prints reference time / native time per case (shown even under
    ``--benchmark-only -q``, which skips tests without a benchmark)."""
    yield
    if len(_median_seconds) < 2 * len(CASES):
        return
    lines = [f"T4 gather, {NUM_ROWS} x {ROW_ELEMS} table, batch {BATCH}, {torch.get_num_threads()} threads "
             "(median per batch):"]
    for case, (_, _, target) in CASES.items():
        native, ref = _median_seconds[case, "native"], _median_seconds[case, "reference"]
        verdict = "meets" if ref / native >= target else "MISSES"
        lines.append(f"  {case:>18}: native {native * 1e6:8.1f} us, reference {ref * 1e6:8.1f} us, "
                     f"speed-up {ref / native:5.2f}x ({verdict} the {target:.1f}x target)")
    # Teardown output is captured; write past the capture so the table shows under -q too.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        terminal.write_line("\n" + "\n".join(lines))
