"""The feature cache feeding a GPU (issue 17): an epoch of cuda-tier reads never waits for the
host, every tier delivers to the GPU the rows the reference gives, and a bad index fails with a
clear ``IndexError`` instead of a device-side fault that would kill the process.

Every test needs a CUDA device and ``phasenets._C`` built with its CUDA kernels
(``bash scripts/gpu_checks.sh`` builds it); they are skipped where there is no device.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from phasenets.cache import FeatureCache, ops, reference

from test_feature_cache import make_features

pytestmark = pytest.mark.cuda

REPO_ROOT = Path(__file__).resolve().parents[2]
N, V, SHAPE = 37, 3, (4, 3, 2)  # 37 samples: the last batch of an epoch is short
STORAGE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT8_SCALE = torch.tensor([0.02, 0.05, 0.01, 0.03])  # given, so the expected rows do not depend on a write order


@pytest.fixture(autouse=True)
def _cuda_kernels():
    assert ops.uses_native(torch.empty(0, device="cuda")), (
        "phasenets._C has no CUDA kernels: build it on this machine (bash scripts/gpu_checks.sh)")


@contextlib.contextmanager
def sync_debug_mode(mode: str):
    """``torch.cuda.set_sync_debug_mode``: with ``"error"``, any call that makes the host wait
    for the device (an ``.item()``, a ``.cpu()``, a copy from pageable memory) raises."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def build(tmp_path: Path, tier: str, dtype: str, features: torch.Tensor) -> FeatureCache:
    """A committed cache of ``features`` ``[views, N, *shape]`` in ``tier``, each view written in
    one call through a non-contiguous index (and from a non-contiguous tensor where ``features``
    is one)."""
    cache = FeatureCache.create(num_samples=features.shape[1], feature_shape=features.shape[2:],
                                fingerprint="gpu", views=features.shape[0], dtype=dtype, tier=tier,
                                cache_dir=tmp_path, scale=INT8_SCALE if dtype == "int8" else None)
    every_sample = torch.arange(features.shape[1]).repeat_interleave(2)[::2]
    for view in range(features.shape[0]):
        cache.write(every_sample, features[view], view=view)
    cache.commit()
    return cache


def stored_table(features: torch.Tensor, dtype: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows a cache holds, computed by the reference: row ``index * views + view`` holds view
    ``view`` of sample ``index`` (FeatureCache's layout), in the storage dtype."""
    views, num_samples = features.shape[:2]
    rows = features.transpose(0, 1).reshape(num_samples * views, -1)
    scale = INT8_SCALE if dtype == "int8" else None
    table = torch.zeros(rows.shape, dtype=STORAGE[dtype])
    reference.scatter_rows(table, torch.arange(rows.shape[0]), rows, scale)
    return table, scale


def expected_rows(features, dtype, indices, views, out_dtype) -> torch.Tensor:
    table, scale = stored_table(features, dtype)
    rows = indices * features.shape[0] + views
    return reference.gather_rows(table, rows, scale, out_dtype).view(len(indices), *features.shape[2:])


# ---------------------------------------------------------------- no host synchronisation


@pytest.mark.parametrize("dtype, views", [("fp16", 1), ("int8", V), ("fp32", V)])
def test_an_epoch_of_cuda_tier_reads_never_waits_for_the_host(tmp_path, dtype, views):
    """The trainer's cached epoch: a shuffled order (and a view per sample) on the host, batches
    delivered to the GPU. Nothing in it may synchronise: the host must run ahead of the device."""
    features = make_features(views=views)
    cache = build(tmp_path, "cuda", dtype, features)
    generator = torch.Generator().manual_seed(5)
    order = torch.randperm(N, generator=generator)
    epoch_views = None if views == 1 else torch.randint(views, (N,), generator=generator)
    torch.cuda.synchronize()
    with sync_debug_mode("error"):
        batches = list(cache.batches(order, batch_size=8, views=epoch_views, device="cuda"))
        for features_batch, indices in batches:  # what a training step does with them: device work only
            features_batch.mul_(2).add_(indices.view(-1, 1, 1, 1))
    assert [len(indices) for _, indices in batches] == [8, 8, 8, 8, 5]
    got = torch.cat([batch for batch, _ in batches]).cpu()
    got_order = torch.cat([indices for _, indices in batches]).cpu()
    assert torch.equal(got_order, order)
    want = expected_rows(features, dtype, order, 0 if epoch_views is None else epoch_views, torch.float32)
    assert torch.equal(got, want * 2 + order.view(-1, 1, 1, 1))


# ---------------------------------------------------------------- the same rows as the reference


@pytest.mark.parametrize("dtype", list(STORAGE))
@pytest.mark.parametrize("tier", ["cuda", "host", "disk"])
def test_every_tier_delivers_the_reference_rows_to_the_gpu(tmp_path, tier, dtype):
    features = make_features()
    # written from a non-contiguous tensor on the GPU (channels-last, the way a conv may leave it)
    channels_last = features.cuda().permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert not channels_last[0].is_contiguous()
    cache = build(tmp_path, tier, dtype, channels_last)
    every_third = (torch.arange(3 * N).flip(0) % N)[::3]  # a non-contiguous index, with repeats
    views = (torch.arange(2 * N) % V)[::2][: len(every_third)]
    assert not every_third.is_contiguous() and not views.is_contiguous()
    for out_dtype in OUT_DTYPES:
        got = cache.read(every_third, views=views, out_dtype=out_dtype, device="cuda")
        assert got.is_cuda and got.dtype == out_dtype
        assert torch.equal(got.cpu(), expected_rows(features, dtype, every_third, views, out_dtype))
        batches = list(cache.batches(every_third, batch_size=5, views=views, out_dtype=out_dtype, device="cuda"))
        assert all(batch.is_cuda and indices.is_cuda for batch, indices in batches)
        assert torch.equal(torch.cat([batch for batch, _ in batches]).cpu(),
                           expected_rows(features, dtype, every_third, views, out_dtype))
    empty = torch.empty(0, dtype=torch.int64)
    nothing = cache.read(empty, device="cuda")
    assert nothing.is_cuda and nothing.shape == (0, *SHAPE)
    assert list(cache.batches(empty, batch_size=4, device="cuda")) == []


def test_an_int8_cuda_cache_of_non_finite_features_is_refused():
    """On the GPU the int8 scale of NaN or infinite features comes back non-finite instead of
    raising (raising would need a sync per write); the cache refuses it by its commit at the latest,
    so such a cache is never served."""
    cache = FeatureCache.create(num_samples=4, feature_shape=(2, 3), fingerprint="nan", dtype="int8", tier="cuda")
    features = torch.randn(4, 2, 3, device="cuda")
    features[1, 1, 2] = float("nan")
    with pytest.raises((RuntimeError, ValueError), match="NaN|infinite|finite"):
        cache.write(torch.arange(4), features)
        cache.commit()
    assert not cache.committed


# ---------------------------------------------------------------- bad indices: a clear error, not a fault

# Run in a fresh process: had an out-of-range index reached memory, the fault (an illegal address
# or a device-side assert) would poison the CUDA context, so it must fail this script, not the
# test session. CUDA_LAUNCH_BLOCKING makes a kernel fault surface at the call that caused it.
BAD_READS = textwrap.dedent("""
    import json, sys, tempfile
    import torch
    from phasenets.cache import FeatureCache, ops, reference

    N, V, SHAPE = {N}, {V}, {SHAPE}
    results = {{}}

    def outcome(call):
        try:
            call()
            torch.cuda.synchronize()
            return "no error"
        except Exception as error:  # any kind: the test reports what it was
            return f"{{type(error).__name__}}: {{error}}"

    # the kernels alone: every path (16-byte copy, conversion, int8 dequantization) guards its rows
    values = torch.randn(N, 16)
    index = torch.tensor([0, N, -1, 2**40, N - 1])
    for name, dtype, out_dtype in [("copy", torch.float16, torch.float16), ("convert", torch.bfloat16, torch.float32),
                                   ("dequantize", torch.int8, torch.float16)]:
        scale = reference.compute_int8_scale(values, 4) if dtype == torch.int8 else None
        table = torch.zeros(N, 16, dtype=dtype)
        reference.scatter_rows(table, torch.arange(N), values, scale)
        on_gpu = (table.cuda(), index.cuda(), None if scale is None else scale.cuda())
        got = {{}}
        results[f"gather {{name}}"] = outcome(lambda: got.update(native=ops.gather_rows(*on_gpu, out_dtype).cpu()))
        if "native" in got:
            want = reference.gather_rows(table, index[[0, 4]], scale, out_dtype)
            rows = got["native"]
            results[f"gather {{name}} rows"] = [bool(rows[1:4].isnan().all()), torch.equal(rows[[0, 4]], want)]
            guarded = reference.gather_rows(*on_gpu, out_dtype).cpu()  # the reference's GPU path
            results[f"gather {{name}} reference"] = [bool(guarded[1:4].isnan().all()), torch.equal(guarded[[0, 4]], want)]

    # through the cache, from every tier to the GPU: the host checks before the device reads
    with tempfile.TemporaryDirectory() as cache_dir:
        for tier in ("cuda", "host", "disk"):
            cache = FeatureCache.create(num_samples=N, feature_shape=SHAPE, fingerprint="bad", views=V, dtype="fp16",
                                        tier=tier, cache_dir=cache_dir, name=tier)
            for view in range(V):
                cache.write(torch.arange(N), torch.randn(N, *SHAPE), view=view)
            cache.commit()
            past_the_end = torch.tensor([3, N + 13, 1])
            results[f"{{tier}} read"] = outcome(lambda: cache.read(past_the_end, device="cuda"))
            results[f"{{tier}} batches"] = outcome(lambda: list(cache.batches(past_the_end, 2, device="cuda")))
            results[f"{{tier}} negative"] = outcome(lambda: list(cache.batches(torch.tensor([0, -2]), 2, device="cuda")))
            results[f"{{tier}} view"] = outcome(
                lambda: cache.read(torch.tensor([0, 1]), views=torch.tensor([0, V + 6]), device="cuda"))
            results[f"{{tier}} still reads"] = outcome(lambda: cache.read(torch.tensor([N - 1]), device="cuda"))
            cache.close()
    print("RESULTS " + json.dumps(results))
""").format(N=N, V=V, SHAPE=SHAPE)


@pytest.fixture(scope="module")
def bad_reads() -> dict:
    environment = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run([sys.executable, "-c", BAD_READS], cwd=REPO_ROOT, env=environment, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, f"the bad reads killed their process:\n{run.stdout}\n{run.stderr}"
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.parametrize("path", ["copy", "convert", "dequantize"])
def test_the_kernels_guard_out_of_range_rows(bad_reads, path):
    """ops.gather_rows on a GPU table never reads an index on the host: an index outside the table
    reads nothing, its row comes back NaN, the other rows are right, and the process lives on."""
    assert bad_reads[f"gather {path}"] == "no error"
    assert bad_reads[f"gather {path} rows"] == [True, True], "[out-of-range rows NaN, in-range rows right]"
    assert bad_reads[f"gather {path} reference"] == [True, True], "the reference's GPU path must agree"


@pytest.mark.parametrize("tier", ["cuda", "host", "disk"])
def test_a_bad_index_is_an_index_error_naming_the_bound(bad_reads, tier):
    for case in ("read", "batches", "negative"):
        outcome = bad_reads[f"{tier} {case}"]
        assert outcome.startswith("IndexError: ") and str(N) in outcome, f"{case}: {outcome}"
    outcome = bad_reads[f"{tier} view"]
    assert outcome.startswith("IndexError: ") and str(V) in outcome, f"view: {outcome}"
    assert bad_reads[f"{tier} still reads"] == "no error"
