"""Tier choice: ``auto`` takes the fastest tier within its share of free memory; RAM is shared out
between the processes of one machine, a GPU and ``budget_bytes`` are per process."""
from __future__ import annotations

import pytest

from phasenets.cache import CacheTierError, choose_tier
from phasenets.cache import tiers

GIB = 2**30


@pytest.fixture
def four_gib_of_ram_and_no_gpu_room(monkeypatch):
    monkeypatch.setattr(tiers, "available_ram_bytes", lambda: 4 * GIB)
    monkeypatch.setattr(tiers, "free_cuda_bytes", lambda device=None: 0)


def test_auto_gives_each_local_process_its_share_of_the_ram(four_gib_of_ram_and_no_gpu_room, tmp_path):
    nbytes = int(1.5 * GIB)  # within half of 4 GiB, beyond half of 2 GiB
    assert choose_tier(nbytes) == "host"
    assert choose_tier(nbytes, local_processes=2, cache_dir=tmp_path) == "disk"
    with pytest.raises(CacheTierError, match=r"RAM shared by 2 processes"):
        choose_tier(nbytes, local_processes=2)


def test_a_forced_host_tier_must_fit_the_process_share(four_gib_of_ram_and_no_gpu_room):
    assert choose_tier(3 * GIB, "host") == "host"
    with pytest.raises(CacheTierError, match="4.00 GiB of RAM available to 2 processes"):
        choose_tier(3 * GIB, "host", local_processes=2)


def test_the_budget_is_per_process(four_gib_of_ram_and_no_gpu_room):
    assert choose_tier(GIB // 2, budget_bytes=GIB, local_processes=2) == "host"


def test_auto_takes_gpu_memory_only_for_features_read_on_a_gpu(monkeypatch):
    monkeypatch.setattr(tiers.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tiers, "free_cuda_bytes", lambda device=None: 80 * GIB)
    monkeypatch.setattr(tiers, "available_ram_bytes", lambda: 4 * GIB)
    assert choose_tier(GIB) == "cuda"
    assert choose_tier(GIB, gpu=False) == "host"  # --device cpu on a machine with a GPU
