"""G1, G3 and T1 on a GPU: the cache's device-side reads against what the hardware gives.

Run: ``python -m pytest benchmarks/test_gpu.py -q -s`` on a machine with a CUDA GPU and
``phasenets._C`` built with its CUDA kernels; ``bash scripts/gpu_checks.sh`` builds the extension,
runs the cuda tests and this module, and writes RESULTS.md. The whole module is skipped without a
GPU or without the CUDA kernels. About a minute on an H100. Every comparison is measured side by
side in one run, checked for correctness before it is timed, and stashed (ratio, target, verdict,
a note naming the GPU) in ``benchmark.extra_info`` for ``benchmarks/report.py``.

- G1: ``torch.ops.phasenets.gather_rows`` (what a cuda-tier ``FeatureCache`` reads with) on a
  200,000 x 4,096 table in GPU memory (1.6 GB of fp16, far past the L2), 100 back-to-back calls
  of 256 random rows, vs as many ``dst.copy_(src)`` of one batch's bytes from consecutive slices
  of the fp16 table. Both are timed with CUDA events, so a call's fixed costs count (the launch;
  the indices are not read back: the kernel guards its bounds on the device). Bandwidth
  is bytes read + bytes written on both sides: the gathered bytes' ratio for fp16; an int8 table
  dequantized to fp16 reads 1 byte and writes 2 per element. The 16,384-row batches show the
  kernel with the per-call costs amortized.
- G3: a host-tier (pinned) fp16 cache read through ``cache.batches(..., device=cuda)``: the native
  prefetcher gathers on worker threads and copies to the GPU on a side stream, while the consumer
  runs one fp16 matrix product per batch, sized to take 90% of a batch's copy. Bytes delivered /
  wall time of the epoch vs a plain ``copy_(non_blocking=True)`` loop from one pinned batch of the same size
  with nothing else running; beside it, the same epoch without the products. At the trainer's
  prefetch depth (2) and at 4 (the cache's most prefetch workers).
- T1 on the GPU: one epoch of phase 3 of ``alexnet`` (blocks 1-2 frozen), inputs read from a
  cuda-tier fp16 level-2 cache vs recomputed, as test_phase_cache.py's T1 on the CPU, with the
  images already in GPU memory; at 64 and 227 px, batch 256.

The measuring functions take the device, so they also run on the CPU at small sizes (a dry run).
"""
from __future__ import annotations

import functools
import statistics
import time

import pytest
import torch
from torch import nn

from phasenets import _extension
from phasenets.cache import FeatureCache, reference
from phasenets.cache.levels import PREFETCH_BATCHES
from test_phase_cache import T1_PHASE, _train_epoch, _verdict, late_phase_on, synchronize


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    if not _extension.native_has_cuda():
        why = _extension.native_load_error() or "it was built without its CUDA kernels"
        return (f"needs phasenets._C with CUDA kernels ({why}); build it on this machine with "
                "`FORCE_CUDA=1 python setup.py build_ext --inplace` (or bash scripts/gpu_checks.sh)")
    return None


SKIP_REASON = _skip_reason()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]

ROW_ELEMS, CHANNELS = 4096, 256  # as test_gather.py: e.g. 256 channels x 4 x 4
BATCH = 256
G1_ROWS, G1_CALLS, G1_ROUNDS = 200_000, 100, 20
G1_CASES = {  # case -> (storage dtype, rows per batch); every case gathers to fp16
    "fp16, 256 rows": (torch.float16, 256),
    "int8 to fp16, 256 rows": (torch.int8, 256),
    "fp16, 16384 rows": (torch.float16, 16384),
    "int8 to fp16, 16384 rows": (torch.int8, 16384),
}
G3_ROWS, G3_ROUNDS = 131_072, 5  # 1 GiB of pinned fp16 rows: 512 batches an epoch
G3_PREFETCH = [PREFETCH_BATCHES, 4]
PRODUCT_WIDTH, COMPUTE_SHARE = 4096, 0.9  # G3's consumer: [m, 4096] @ [4096, 4096] in 90% of a batch's copy
T1_IMAGES = {64: 8192, 227: 4096}  # image size -> images (0.4 and 2.5 GB of fp32 on the GPU)
T1_BATCH, T1_ROUNDS = 256, 3
TARGET_RATIO = 0.8


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"


def _measure_once(benchmark, measure, *args) -> dict[str, float]:
    """Run a measurement that times itself (its own rounds and medians) once under pytest-benchmark,
    and keep the numbers it returns in ``extra_info``."""
    result = benchmark.pedantic(measure, args=args, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update({key: round(value, 3) for key, value in result.items()})
    return result



def _event_seconds(work, device: torch.device) -> float:
    """Seconds ``work()`` keeps the device busy, CUDA events around it: the gaps the host leaves
    between launches count. A host clock on the CPU (the dry run)."""
    if device.type != "cuda":
        started = time.perf_counter()
        work()
        return time.perf_counter() - started
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _wall_seconds(work, device: torch.device) -> float:
    """Wall time of ``work()`` and of all the device work it queued."""
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def _warm_up(work, device: torch.device, seconds: float = 0.25) -> None:
    """Runs ``work`` over and over for about ``seconds``: a GPU's clocks rise only under load."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _wall_seconds(work, device)


def _random_batches(num_rows: int, batch_rows: int, count: int, device: torch.device) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(batch_rows)
    return [torch.randint(0, num_rows, (batch_rows,), generator=generator).to(device) for _ in range(count)]


# ----------------------------------------------------------------------------------------------
# G1: the cuda-tier gather vs a device-to-device copy


def make_tables(num_rows: int, device: torch.device) -> dict[torch.dtype, tuple[torch.Tensor, torch.Tensor | None]]:
    """An fp16 table and an int8 table with its per-channel scale, random, made on ``device``."""
    generator = torch.Generator(device=device).manual_seed(0)
    half = torch.randn(num_rows, ROW_ELEMS, dtype=torch.float16, device=device, generator=generator)
    quantized = torch.randint(-127, 128, (num_rows, ROW_ELEMS), dtype=torch.int8, device=device, generator=generator)
    scale = torch.rand(CHANNELS, device=device, generator=generator) / 100
    return {torch.float16: (half, None), torch.int8: (quantized, scale)}


def check_gather(table: torch.Tensor, scale: torch.Tensor | None, batches: list[torch.Tensor]) -> None:
    """The op's batches equal the reference's (``table[index]`` for fp16; ``q * scale`` for int8)."""
    for index in batches[:2]:
        gathered = torch.ops.phasenets.gather_rows(table, index, scale, torch.float16)
        expected = table[index] if scale is None else reference.gather_rows(table, index, scale, torch.float16)
        assert gathered.device == table.device and torch.equal(gathered, expected)


def measure_gather(table: torch.Tensor, scale: torch.Tensor | None, batches: list[torch.Tensor],
                   copy_source: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds of gathering ``batches`` of ``table`` to fp16, and of as many copies of one
    batch's bytes from consecutive slices of ``copy_source`` (fp16, on the same device), the two
    alternated ``rounds`` times after a warm-up; bandwidths count bytes read + written."""
    device = table.device
    batch_elems = batches[0].numel() * table.shape[1]
    slices = copy_source.reshape(-1)[: copy_source.numel() // batch_elems * batch_elems].view(-1, batch_elems)
    destination = torch.empty(batch_elems, dtype=torch.float16, device=device)

    def gathers():
        for index in batches:
            torch.ops.phasenets.gather_rows(table, index, scale, torch.float16)

    def copies():
        for call in range(len(batches)):
            destination.copy_(slices[call % len(slices)])

    _warm_up(gathers, device)  # first launches, the allocator's blocks, the clocks
    _warm_up(copies, device)
    gather_seconds, copy_seconds = [], []
    for _ in range(rounds):
        gather_seconds.append(_event_seconds(gathers, device))
        copy_seconds.append(_event_seconds(copies, device))
    gather_seconds, copy_seconds = statistics.median(gather_seconds), statistics.median(copy_seconds)
    gathered_bytes = len(batches) * batch_elems * (table.element_size() + 2)  # read + fp16 written
    copied_bytes = len(batches) * batch_elems * 2 * 2  # fp16 read + written
    gather_rate, copy_rate = gathered_bytes / gather_seconds / 1e9, copied_bytes / copy_seconds / 1e9
    return {"gather_GB_per_s": gather_rate, "copy_GB_per_s": copy_rate, "ratio": gather_rate / copy_rate,
            "gather_us_per_call": 1e6 * gather_seconds / len(batches),
            "copy_us_per_call": 1e6 * copy_seconds / len(batches)}


@pytest.fixture(scope="module")
def g1_tables(device):
    return make_tables(G1_ROWS, device)


@pytest.mark.parametrize("case", list(G1_CASES))
def test_g1_gather_bandwidth(benchmark, g1_tables, case):
    storage_dtype, batch_rows = G1_CASES[case]
    table, scale = g1_tables[storage_dtype]
    batches = _random_batches(len(table), batch_rows, G1_CALLS, table.device)
    check_gather(table, scale, batches)
    result = _measure_once(benchmark, measure_gather, table, scale, batches, g1_tables[torch.float16][0], G1_ROUNDS)
    ratio = result["ratio"]
    note = (f"{_device_name(table.device)}: gather {result['gather_GB_per_s']:.0f} GB/s "
            f"({result['gather_us_per_call']:.1f} us a call) vs device-to-device copy_ "
            f"{result['copy_GB_per_s']:.0f} GB/s ({result['copy_us_per_call']:.1f} us), bytes read + written "
            f"(int8: 1 read + 2 written per element); {G1_CALLS} calls of {batch_rows} random rows of a "
            f"{G1_ROWS} x {ROW_ELEMS} table, median of {G1_ROUNDS}")
    _verdict(benchmark.extra_info, f"G1 {case}", ratio, f">= {TARGET_RATIO}x", ratio >= TARGET_RATIO, note)


# ----------------------------------------------------------------------------------------------
# G3: host-tier reads to the GPU, overlapped with compute, vs pinned host-to-device bandwidth


def make_host_cache(num_rows: int, device: torch.device) -> FeatureCache:
    """A committed host-tier fp16 cache (pinned where CUDA is) of random rows, made on ``device``."""
    torch.manual_seed(0)
    cache = FeatureCache.create(num_samples=num_rows, feature_shape=(CHANNELS, ROW_ELEMS // CHANNELS),
                                fingerprint="g3", dtype="fp16", tier="host")
    for start in range(0, num_rows, 4096):
        count = min(4096, num_rows - start)
        cache.write(torch.arange(start, start + count),
                    torch.randn(count, *cache.feature_shape, dtype=torch.float16, device=device))
    cache.commit()
    return cache


def _epoch_batches(cache: FeatureCache, order: torch.Tensor, device: torch.device, prefetch: int):
    return cache.batches(order, BATCH, device=device, prefetch=prefetch, drop_last=True, out_dtype=torch.float16)


def check_first_batches(cache: FeatureCache, order: torch.Tensor, device: torch.device, prefetch: int) -> None:
    """The first prefetched batches hold the cache's rows of ``order``, on ``device``."""
    batches = _epoch_batches(cache, order, device, prefetch)
    for k, (features, indices) in zip(range(3), batches):
        expected = order[k * BATCH:(k + 1) * BATCH]
        assert features.device == device and torch.equal(indices.cpu(), expected)
        assert torch.equal(features.cpu(), cache.read(expected, out_dtype=torch.float16))
    batches.close()  # stops the prefetcher


def _sized_product(seconds: float, device: torch.device, width: int):
    """An fp16 product ``[m, width] @ [width, width]`` that takes about ``seconds``, and its m: the
    time grows linearly in m, so m is scaled from a timed probe, twice."""
    weight = torch.randn(width, width, dtype=torch.float16, device=device)

    def timed(rows: int):
        inputs = torch.randn(rows, width, dtype=torch.float16, device=device)
        out = torch.empty(rows, width, dtype=torch.float16, device=device)

        def product():
            torch.mm(inputs, weight, out=out)

        _warm_up(product, device)
        return product, _wall_seconds(lambda: [product() for _ in range(20)], device) / 20

    rows = 256
    product, taken = timed(rows)
    for _ in range(2):
        rows = max(64, round(rows * seconds / taken / 64) * 64)
        product, taken = timed(rows)
    return product, rows, taken


def measure_overlap(cache: FeatureCache, order: torch.Tensor, device: torch.device, prefetch: int, rounds: int,
                    product_width: int) -> dict[str, float]:
    """Wall seconds (median of ``rounds``, after a warm-up) of: a pinned ``copy_`` loop of one
    batch, as many times as an epoch has batches; the epoch read through ``cache.batches`` with a
    matrix product after each batch, sized to COMPUTE_SHARE of a batch's copy; the epoch read
    alone. Bandwidths are of the bytes delivered."""
    num_batches = order.numel() // BATCH
    staged = torch.empty(BATCH, ROW_ELEMS, dtype=torch.float16, pin_memory=device.type == "cuda")
    staged.copy_(cache.read(order[:BATCH], out_dtype=torch.float16).view(BATCH, ROW_ELEMS))
    on_device = torch.empty(BATCH, ROW_ELEMS, dtype=torch.float16, device=device)

    def copies():
        for _ in range(num_batches):
            on_device.copy_(staged, non_blocking=True)

    _warm_up(copies, device)
    copy_seconds = statistics.median(_wall_seconds(copies, device) for _ in range(rounds))
    product, product_rows, product_seconds = _sized_product(COMPUTE_SHARE * copy_seconds / num_batches, device,
                                                            product_width)

    def epoch(with_product: bool):
        for _features, _indices in _epoch_batches(cache, order, device, prefetch):
            if with_product:
                product()

    epoch_seconds = {}
    for name, with_product in (("overlapped", True), ("read_alone", False)):
        epoch(with_product)  # warm-up
        epoch_seconds[name] = statistics.median(_wall_seconds(functools.partial(epoch, with_product), device)
                                                for _ in range(rounds))
    delivered = num_batches * BATCH * ROW_ELEMS * 2
    return {"ratio": copy_seconds / epoch_seconds["overlapped"], "pinned_copy_GB_per_s": delivered / copy_seconds / 1e9,
            "overlapped_GB_per_s": delivered / epoch_seconds["overlapped"] / 1e9,
            "read_alone_GB_per_s": delivered / epoch_seconds["read_alone"] / 1e9,
            "product_rows": product_rows, "product_share_of_copy": product_seconds * num_batches / copy_seconds}


@pytest.fixture(scope="module")
def host_cache(device):
    cache = make_host_cache(G3_ROWS, device)
    yield cache
    cache.close()


@pytest.mark.parametrize("prefetch", G3_PREFETCH)
def test_g3_host_reads_overlapped(benchmark, host_cache, prefetch, device):
    order = torch.randperm(host_cache.num_samples, generator=torch.Generator().manual_seed(prefetch))
    check_first_batches(host_cache, order, device, prefetch)
    result = _measure_once(benchmark, measure_overlap, host_cache, order, device, prefetch, G3_ROUNDS, PRODUCT_WIDTH)
    ratio = result["ratio"]
    note = (f"{_device_name(device)}: host tier (pinned) read to the GPU while the consumer ran an fp16 "
            f"[{result['product_rows']}, {PRODUCT_WIDTH}] @ [{PRODUCT_WIDTH}, {PRODUCT_WIDTH}] product per batch "
            f"({100 * result['product_share_of_copy']:.0f}% of a batch's copy time): "
            f"{result['overlapped_GB_per_s']:.1f} GB/s vs pinned copy_ {result['pinned_copy_GB_per_s']:.1f} GB/s; "
            f"read alone {result['read_alone_GB_per_s']:.1f} GB/s; {host_cache.num_samples // BATCH} batches of "
            f"{BATCH} x {ROW_ELEMS} fp16, median of {G3_ROUNDS} epochs")
    _verdict(benchmark.extra_info, f"G3 prefetch {prefetch}", ratio, f">= {TARGET_RATIO}x", ratio >= TARGET_RATIO, note)


# ----------------------------------------------------------------------------------------------
# T1 on the GPU: one epoch of a late phase, cache vs recompute


def _first_batch(source):
    batches = iter(source)
    first = next(batches)
    batches.close()
    return first


def check_same_inputs(sources: dict) -> None:
    """Epoch 0's first batch: the same indices and labels, features equal within fp16 storage."""
    for source in sources.values():
        source.set_epoch(0)
    cached, labels, indices = _first_batch(sources["cache"])
    exact, exact_labels, exact_indices = _first_batch(sources["recompute"])
    assert torch.equal(indices.cpu(), exact_indices.cpu()) and torch.equal(labels.cpu(), exact_labels.cpu())
    error = (cached.float() - exact.float()).norm() / exact.float().norm()
    assert error < 1e-2, f"cached features differ from the recomputed ones by {error:.2e} (relative)"


def measure_t1(stage: nn.Module, sources: dict, device: torch.device, rounds: int) -> dict[str, float]:
    """Median wall seconds of one training epoch of ``stage`` per source, the sources alternated
    ``rounds`` times after one warm-up epoch each (cuDNN's algorithm choice, the allocator)."""
    optimizer = torch.optim.SGD([p for p in stage.parameters() if p.requires_grad], lr=1e-3)
    epochs = iter(range(10**6))
    seconds = {path: [] for path in sources}
    for round_ in range(rounds + 1):
        for path, source in sources.items():
            taken = _wall_seconds(lambda: _train_epoch(stage, source, optimizer, next(epochs)), device)
            if round_ > 0:
                seconds[path].append(taken)
    return {path: statistics.median(taken) for path, taken in seconds.items()}


@pytest.fixture(scope="module", params=list(T1_IMAGES), ids=lambda size: f"{size}px")
def gpu_late_phase(request, device, tmp_path_factory):
    size = request.param
    stage, sources, build_seconds, levels = late_phase_on(device, size, T1_IMAGES[size], T1_BATCH, "cuda",
                                                          tmp_path_factory.mktemp("cache"))
    yield size, stage, sources, build_seconds
    levels.close()


def test_t1_phase_epoch_gpu(benchmark, gpu_late_phase, device):
    size, stage, sources, build_seconds = gpu_late_phase
    check_same_inputs(sources)
    seconds = benchmark.pedantic(measure_t1, args=(stage, sources, device, T1_ROUNDS), rounds=1, warmup_rounds=0)
    ratio = seconds["recompute"] / seconds["cache"]
    benchmark.extra_info.update(recompute_seconds=round(seconds["recompute"], 4),
                                cache_seconds=round(seconds["cache"], 4), build_seconds=round(build_seconds, 3))
    note = (f"{_device_name(device)}: alexnet {size} px, phase {T1_PHASE} epoch, {T1_IMAGES[size]} images in GPU "
            f"memory, batch {T1_BATCH}, fp32: recompute {seconds['recompute'] * 1e3:.1f} ms vs cuda-tier fp16 cache "
            f"{seconds['cache'] * 1e3:.1f} ms; level-{T1_PHASE - 1} build {build_seconds:.2f}s (once per run)")
    _verdict(benchmark.extra_info, f"T1 GPU {size} px", ratio, ">= 3.0x", ratio >= 3.0, note)
