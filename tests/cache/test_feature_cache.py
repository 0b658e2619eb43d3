import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from phasenets.cache import CacheFormatError, CacheLockTimeout, CacheTierError, FeatureCache
from phasenets.cache.fileformat import read_header
from phasenets.cache.storage import BuildLock

REPO_ROOT = Path(__file__).resolve().parents[2]
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.cuda
FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TIER_PARAMS = ["host", "disk", pytest.param("cuda", marks=[cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")])]

N, V, SHAPE = 37, 3, (4, 3, 2)


def make_features(seed=0, n=N, views=V, shape=SHAPE):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(views, n, *shape, generator=generator)


def fill(cache, features, batch_size=8):
    """Write every view of every sample in shuffled batches, as a loader would."""
    order = torch.randperm(features.shape[1], generator=torch.Generator().manual_seed(1))
    for view in range(features.shape[0]):
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            cache.write(indices, features[view, indices], view=view)


def build(tmp_path, tier, dtype="fp16", features=None, fingerprint="fp-1", **options):
    features = make_features() if features is None else features
    cache = FeatureCache.create(num_samples=features.shape[1], feature_shape=features.shape[2:],
                                fingerprint=fingerprint, views=features.shape[0], dtype=dtype, tier=tier,
                                cache_dir=tmp_path, **options)
    fill(cache, features)
    cache.commit()
    return cache, features


def expected(features, dtype):
    return features.to(FLOAT_DTYPES[dtype]).float()


# ---------------------------------------------------------------- data round trips


@pytest.mark.parametrize("tier", TIER_PARAMS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_every_tier_returns_the_stored_rows(tmp_path, tier, dtype):
    cache, features = build(tmp_path, tier, dtype)
    assert cache.tier == tier and cache.committed
    indices = torch.tensor([5, 0, 36, 5, 17])
    for view in range(V):
        got = cache.read(indices, views=view, device="cpu")
        assert got.dtype == torch.float32 and got.shape == (5, *SHAPE)
        assert torch.equal(got, expected(features[view, indices], dtype))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
def test_all_tiers_hold_identical_bytes(tmp_path, dtype):
    tiers = ["host", "disk"] + (["cuda"] if HAS_CUDA else [])
    reads = []
    for tier in tiers:
        cache, _ = build(tmp_path / tier, tier, dtype)
        reads.append(cache.read(torch.arange(N), views=torch.arange(N) % V, device="cpu"))
        cache.close()
    for other in reads[1:]:
        assert torch.equal(reads[0], other)


@pytest.mark.parametrize("tier", TIER_PARAMS)
def test_int8_scale_is_the_whole_cache_absmax_and_a_later_batch_never_saturates(tmp_path, tier):
    features = make_features()
    features[2, 30:] *= 10  # the largest values arrive in the last view's batches
    cache, _ = build(tmp_path, tier, "int8", features=features)
    scale = cache.scale.cpu()
    absmax = features.abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(127 * scale >= absmax) and torch.all(127 * scale <= 2 * absmax + 1e-6)
    step = scale.view(1, -1, 1, 1)
    for view in range(V):
        got = cache.read(torch.arange(N), views=view, device="cpu")
        # within one step (two roundings for rows requantized when the scale grew); none saturates
        assert torch.all((got - features[view]).abs() <= step + 1e-6)


def test_int8_requantizes_earlier_rows_when_the_scale_grows(tmp_path):
    cache = FeatureCache.create(num_samples=2, feature_shape=(1, 2), fingerprint="f", dtype="int8", tier="host")
    cache.write(torch.tensor([0]), torch.tensor([[[1.0, -0.5]]]))
    cache.write(torch.tensor([1]), torch.tensor([[[4.0, 2.0]]]))  # 4x the first batch's magnitude
    assert cache.scale.item() == pytest.approx(4.0 / 127)
    cache.write(torch.tensor([0]), torch.tensor([[[5.0, 1.0]]]))  # exceeded again: at least doubled
    cache.commit()
    assert cache.scale.item() == pytest.approx(8.0 / 127)
    torch.testing.assert_close(cache.read(torch.tensor([0, 1])),
                               torch.tensor([[[5.0, 1.0]], [[4.0, 2.0]]]), atol=8.0 / 127, rtol=0)


def test_int8_with_a_given_scale_saturates_beyond_it(tmp_path):
    scale = torch.tensor([0.01, 0.02, 0.03, 0.04])
    features = make_features()
    cache, _ = build(tmp_path, "host", "int8", features=features, scale=scale)
    assert torch.equal(cache.scale, scale)
    got = cache.read(torch.arange(N), views=2)
    limit = 127 * scale.view(1, -1, 1, 1)
    assert torch.all(got.abs() <= limit + 1e-6)
    inside = features[2].abs() < limit
    assert torch.all(((got - features[2]).abs() <= scale.view(1, -1, 1, 1) / 2 + 1e-6)[inside])


def test_int8_takes_half_the_bytes_of_fp16(tmp_path):
    fp16 = FeatureCache.create(num_samples=1000, feature_shape=(64, 4, 4), fingerprint="a", dtype="fp16", tier="host")
    int8 = FeatureCache.create(num_samples=1000, feature_shape=(64, 4, 4), fingerprint="a", dtype="int8", tier="host")
    assert int8.nbytes <= 0.51 * fp16.nbytes


def test_views_select_rows_per_sample(tmp_path):
    cache, features = build(tmp_path, "host", "fp32")
    indices = torch.tensor([3, 3, 3, 9])
    views = torch.tensor([0, 1, 2, 1])
    got = cache.read(indices, views=views)
    assert torch.equal(got, features[views, indices])
    assert torch.equal(cache.read(indices), features[0, indices])  # views=None reads view 0


@pytest.mark.parametrize("tier", TIER_PARAMS)
@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_follow_the_order_and_views(tmp_path, tier, prefetch):
    cache, features = build(tmp_path, tier, "fp32")
    order = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    views = torch.randint(V, (N,), generator=torch.Generator().manual_seed(4))
    batches = list(cache.batches(order, batch_size=10, views=views, prefetch=prefetch, device="cpu"))
    assert [len(indices) for _, indices in batches] == [10, 10, 10, 7]
    assert torch.equal(torch.cat([indices for _, indices in batches]), order)
    got = torch.cat([batch for batch, _ in batches])
    assert torch.equal(got, features[views, order])
    dropped = list(cache.batches(order, batch_size=10, views=views, prefetch=prefetch, drop_last=True))
    assert [len(indices) for _, indices in dropped] == [10, 10, 10]


@cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")
@pytest.mark.parametrize("tier", ["host", "disk"])
def test_batches_are_delivered_to_the_gpu(tmp_path, tier):
    cache, _ = build(tmp_path, tier, "int8")
    batches = list(cache.batches(torch.arange(N), batch_size=8, device="cuda"))
    for batch, indices in batches:
        assert batch.is_cuda and indices.is_cuda
        assert torch.equal(batch.cpu(), cache.read(indices.cpu()))


def test_stopping_an_epoch_early_releases_the_prefetcher(tmp_path):
    cache, features = build(tmp_path, "host", "fp32")
    for _ in range(3):
        batches = cache.batches(torch.arange(N), batch_size=4, prefetch=2)
        first, indices = next(batches)
        batches.close()
        assert torch.equal(first, features[0, indices])
    assert sum(len(indices) for _, indices in cache.batches(torch.arange(N), batch_size=4)) == N


def test_float64_features_are_stored(tmp_path):
    cache = FeatureCache.create(num_samples=3, feature_shape=(2,), fingerprint="x", dtype="fp32", tier="host")
    cache.write(torch.arange(3), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64))
    assert torch.equal(cache.read(torch.tensor([2])), torch.tensor([[5.0, 6.0]]))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("tier", ["host", "disk"])
def test_memory_is_rows_times_itemsize_plus_under_two_percent(tmp_path, tier, dtype):
    num_samples, views, shape = 500, 2, (32, 4, 4)
    cache = FeatureCache.create(num_samples=num_samples, feature_shape=shape, fingerprint="m", views=views,
                                dtype=dtype, tier=tier, cache_dir=tmp_path)
    itemsize = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[dtype]
    ideal = num_samples * views * 32 * 4 * 4 * itemsize
    assert ideal <= cache.nbytes < 1.02 * ideal
    fill(cache, make_features(n=num_samples, views=views, shape=shape), batch_size=125)
    cache.commit()
    if tier == "disk":
        assert os.path.getsize(tmp_path / "features.pncache") < 1.02 * ideal
    else:
        assert cache._storage.untyped_storage().nbytes() == ideal


# ---------------------------------------------------------------- misuse gives clear errors


def test_invalid_writes_and_reads_are_refused(tmp_path):
    cache = FeatureCache.create(num_samples=4, feature_shape=(2, 3), fingerprint="x", views=2, tier="host")
    with pytest.raises(ValueError, match=r"features must be \[B, 2, 3\]"):
        cache.write(torch.arange(2), torch.zeros(2, 3, 2))
    with pytest.raises(IndexError, match=r"indices must be in \[0, num_samples=4\)"):
        cache.write(torch.tensor([1, 4]), torch.zeros(2, 2, 3))
    with pytest.raises(IndexError, match=r"view must be in \[0, views=2\)"):
        cache.write(torch.arange(2), torch.zeros(2, 2, 3), view=2)
    with pytest.raises(TypeError, match="floating point"):
        cache.write(torch.arange(2), torch.zeros(2, 2, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match="1-D int64"):
        cache.read(torch.tensor([0.0, 1.0]))
    with pytest.raises(IndexError, match="views must be in"):
        cache.read(torch.arange(2), views=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="2 indices for 3 feature rows"):
        cache.write(torch.arange(2), torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="storage dtype must be one of"):
        FeatureCache.create(num_samples=4, feature_shape=(2,), fingerprint="x", dtype="fp64", tier="host")


def test_commit_refuses_a_cache_with_unwritten_rows(tmp_path):
    cache = FeatureCache.create(num_samples=4, feature_shape=(2,), fingerprint="x", views=2, tier="disk",
                                cache_dir=tmp_path)
    cache.write(torch.arange(4), torch.ones(4, 2), view=0)
    cache.write(torch.tensor([0, 1, 3]), torch.ones(3, 2), view=1)
    with pytest.raises(RuntimeError, match="1 of 8 rows were never written .*index 2, view 1"):
        cache.commit()
    cache.close()
    assert not list(tmp_path.glob("*.pncache*partial*")) and not (tmp_path / "features.pncache").exists()


def test_committed_and_closed_caches_refuse_changes(tmp_path):
    cache, _ = build(tmp_path, "host")
    with pytest.raises(RuntimeError, match="read-only"):
        cache.write(torch.arange(1), torch.zeros(1, *SHAPE))
    cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        cache.read(torch.arange(1))


def test_forced_tiers_that_cannot_hold_the_cache_say_so(tmp_path):
    options = dict(num_samples=100, feature_shape=(10,), fingerprint="t", dtype="fp32")
    if not HAS_CUDA:
        with pytest.raises(CacheTierError, match="needs a CUDA device"):
            FeatureCache.create(tier="cuda", **options)
    with pytest.raises(CacheTierError, match="needs a cache_dir"):
        FeatureCache.create(tier="disk", **options)
    with pytest.raises(CacheTierError, match="within the budget"):
        FeatureCache.create(tier="host", budget_bytes=1000, **options)
    with pytest.raises(CacheTierError, match="pass cache_dir="):
        FeatureCache.create(tier="auto", budget_bytes=1000, **options)
    with pytest.raises(CacheTierError, match="unknown cache tier 'ram'"):
        FeatureCache.create(tier="ram", **options)
    with FeatureCache.create(tier="auto", budget_bytes=1000, cache_dir=tmp_path, **options) as cache:
        assert cache.tier == "disk"
    with FeatureCache.create(tier="auto", **options) as cache:
        assert cache.tier == ("cuda" if HAS_CUDA else "host")


# ---------------------------------------------------------------- disk files: reuse, staleness, damage


def test_open_reuses_a_committed_file_and_skips_stale_or_missing_ones(tmp_path):
    assert FeatureCache.open(tmp_path, "fp-1") is None
    cache, features = build(tmp_path, "disk", "bf16")
    cache.close()
    assert FeatureCache.open(tmp_path, "fp-2") is None  # stale: built for other inputs
    for tier in ("disk", "host"):
        with FeatureCache.open(tmp_path, "fp-1", tier=tier) as reopened:
            assert (reopened.tier, reopened.views, reopened.feature_shape) == (tier, V, SHAPE)
            assert torch.equal(reopened.read(torch.arange(N), views=2), expected(features[2], "bf16"))
            with pytest.raises(RuntimeError, match="read-only"):
                reopened.write(torch.arange(1), torch.zeros(1, *SHAPE))


def test_int8_scale_survives_the_file(tmp_path):
    cache, _ = build(tmp_path, "disk", "int8")
    before = cache.read(torch.arange(N), views=1)
    with FeatureCache.open(tmp_path, "fp-1") as reopened:
        assert torch.equal(reopened.scale, cache.scale)
        assert torch.equal(reopened.read(torch.arange(N), views=1), before)


def damage_payload(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def replace_with_noise(path):
    path.write_bytes(os.urandom(path.stat().st_size))


def stamp_other_version(path):
    data = bytearray(path.read_bytes())
    data[8] += 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (damage_payload, "payload checksum mismatch"),
        (truncate, "torn or not ours"),
        (replace_with_noise, "not a phasenets cache file"),
        (stamp_other_version, "format version"),
    ],
)
def test_damaged_files_are_refused_and_rebuilt(tmp_path, damage, message, caplog):
    cache, features = build(tmp_path, "disk", "fp32")
    cache.close()
    damage(tmp_path / "features.pncache")
    with pytest.raises(CacheFormatError, match=message):
        FeatureCache.open(tmp_path, "fp-1")
    with caplog.at_level(logging.WARNING, logger="phasenets"), warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, in the log, not again as a warning
        rebuilt = FeatureCache.open_or_build(lambda c: fill(c, features), cache_dir=tmp_path, fingerprint="fp-1",
                                             num_samples=N, feature_shape=SHAPE, views=V, dtype="fp32")
    assert [record.message for record in caplog.records].count(caplog.records[0].message) == 1
    assert "rebuilding the feature cache" in caplog.text and "delete it" not in caplog.text
    assert torch.equal(rebuilt.read(torch.arange(N), views=1), features[1])


def test_open_or_build_builds_once_then_reuses(tmp_path):
    features = make_features()
    calls = []

    def build_fn(cache):
        calls.append(1)
        fill(cache, features)

    options = dict(cache_dir=tmp_path, fingerprint="fp-1", num_samples=N, feature_shape=SHAPE, views=V, dtype="fp16")
    first = FeatureCache.open_or_build(build_fn, **options)
    second = FeatureCache.open_or_build(build_fn, tier="host", **options)
    assert len(calls) == 1 and second.tier == "host"
    assert torch.equal(first.read(torch.arange(N), views=2), second.read(torch.arange(N), views=2))
    stale = FeatureCache.open_or_build(build_fn, **{**options, "fingerprint": "fp-2"})
    assert len(calls) == 2 and stale.fingerprint == "fp-2"


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def failing_build(cache):
        cache.write(torch.arange(3), torch.zeros(3, 2))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FeatureCache.open_or_build(failing_build, cache_dir=tmp_path, fingerprint="f", num_samples=5, feature_shape=(2,))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial file, no lock file
    # the lock was released: a new build does not wait
    FeatureCache.create(num_samples=5, feature_shape=(2,), fingerprint="f", tier="disk", cache_dir=tmp_path,
                        lock_timeout=0).close()


def test_a_second_builder_waits_for_the_lock(tmp_path):
    holder = FeatureCache.create(num_samples=5, feature_shape=(2,), fingerprint="f", tier="disk", cache_dir=tmp_path)
    with pytest.raises(CacheLockTimeout, match="another process has been building"):
        FeatureCache.create(num_samples=5, feature_shape=(2,), fingerprint="f", tier="disk", cache_dir=tmp_path,
                            lock_timeout=0.1)
    holder.write(torch.arange(5), torch.ones(5, 2))
    holder.commit()
    assert not list(tmp_path.glob("*.lock"))  # a finished build leaves no lock file


def test_a_waiter_whose_lock_file_was_deleted_locks_the_new_one(tmp_path):
    """The holder deletes the lock file as it lets go; a process that was waiting on the old file
    must not think it holds the lock while a third process locks a new file of the same name."""
    path = str(tmp_path / "x.lock")
    holder = BuildLock(path, timeout=None)
    waiter = threading.Thread(target=lambda: held.append(BuildLock(path, timeout=None)))
    held: list = []
    waiter.start()
    time.sleep(0.2)  # the waiter blocks on the holder's file
    holder.release()
    waiter.join(timeout=10)
    assert held and os.path.exists(path)  # the waiter locked a file that is the path's current one
    with pytest.raises(CacheLockTimeout):
        BuildLock(path, timeout=0.1)  # so a third process must wait for it
    held[0].release()
    assert not os.path.exists(path)


# ---------------------------------------------------------------- other processes: crashes and concurrent builders

BUILDER = textwrap.dedent(
    """
    import sys, time, torch
    from phasenets.cache import FeatureCache
    cache_dir, fingerprint, pause, log = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]

    def build(cache):
        with open(log, "a") as file:
            file.write("build\\n")
        cache.write(torch.arange(50), torch.arange(50 * 6, dtype=torch.float32).view(50, 6))
        print("half-written", flush=True)
        time.sleep(pause)
        cache.write(torch.arange(50, 100), -torch.arange(50 * 6, dtype=torch.float32).view(50, 6))

    cache = FeatureCache.open_or_build(build, cache_dir=cache_dir, fingerprint=fingerprint,
                                       num_samples=100, feature_shape=(6,), dtype="fp32")
    print(float(cache.read(torch.arange(100)).sum()), flush=True)
    """
)


def start_builder(tmp_path, fingerprint, pause):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path), fingerprint, str(pause),
                             str(tmp_path / "builds.log")], stdout=subprocess.PIPE, text=True, env=env)


def test_a_build_killed_midway_is_rejected_then_replaced(tmp_path):
    builder = start_builder(tmp_path, "fp-1", pause=60)
    assert builder.stdout.readline().strip() == "half-written"
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    partial = list(tmp_path.glob("features.pncache.partial-*"))
    assert len(partial) == 1 and not (tmp_path / "features.pncache").exists()
    assert FeatureCache.open(tmp_path, "fp-1") is None
    with pytest.raises(CacheFormatError, match="not a phasenets cache file"):
        read_header(partial[0])  # its header is only written at commit

    rebuilt = FeatureCache.open_or_build(
        lambda cache: cache.write(torch.arange(100), torch.ones(100, 6)), cache_dir=tmp_path, fingerprint="fp-1",
        num_samples=100, feature_shape=(6,), dtype="fp32")
    assert torch.equal(rebuilt.read(torch.arange(100)), torch.ones(100, 6))
    assert not list(tmp_path.glob("features.pncache.partial-*"))


def test_two_processes_build_once_and_share_the_file(tmp_path):
    first = start_builder(tmp_path, "fp-1", pause=1.0)
    assert first.stdout.readline().strip() == "half-written"  # the first one holds the lock now
    second = start_builder(tmp_path, "fp-1", pause=0.0)
    outputs = [process.communicate(timeout=120)[0].split() for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0
    assert (tmp_path / "builds.log").read_text() == "build\n"
    assert outputs[0][-1] == outputs[1][-1] == str(float(0.0))  # +k and -k rows cancel


def _resident_file_pages() -> int:
    """Bytes of mapped files this process holds in memory (``RssFile``): what a mapping adds."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_the_disk_tier_keeps_no_page_of_its_file_in_memory(tmp_path):
    """A disk cache larger than what its reads and writes keep resident: building it, checksumming
    it, an epoch of batches and random reads leave the process's mapped pages where they were
    (the file's pages stay in the OS page cache, which RSS and cgroup limits do not charge as
    the process's own memory)."""
    num_samples, shape = 2048, (16, 32, 32)  # 32 MiB of fp32
    rows = torch.randn(256, *shape)
    before = _resident_file_pages()
    with FeatureCache.create(num_samples=num_samples, feature_shape=shape, fingerprint="big", dtype="fp32",
                             tier="disk", cache_dir=tmp_path) as cache:
        for start in range(0, num_samples, 256):
            cache.write(torch.arange(start, start + 256), rows)
        cache.commit()
        assert _resident_file_pages() - before < 8 << 20
    reopened = FeatureCache.open(tmp_path, "big")  # verifies the checksum: one pass over the file
    order = torch.randperm(num_samples)
    for features, _ in reopened.batches(order, batch_size=128):
        assert features.shape == (128, *shape)
    assert torch.equal(reopened.read(torch.tensor([7, 300])), rows[[7, 300 % 256]])
    assert _resident_file_pages() - before < 8 << 20
    reopened.close()
