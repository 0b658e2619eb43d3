"""Where a feature cache lives: device memory, host RAM or a memory-mapped file.

``auto`` takes the fastest tier the cache fits in while leaving room for training: at most
half of the free GPU memory (activations, gradients and optimizer state need the rest) and at most
half of the available RAM (the data loader, the model and the OS page cache need the rest).
A forced tier only has to fit in what is free, and fails with a message that says what would.
Where several processes on one machine each cache their own data, each counts on its share of
the RAM (``local_processes``); a GPU is one process's own, so its free memory is not shared out.
"""
from __future__ import annotations

import os
import shutil

import torch

__all__ = ["TIERS", "CacheTierError", "choose_tier", "available_ram_bytes", "free_cuda_bytes"]

TIERS = ("cuda", "host", "disk")
AUTO_HEADROOM = 0.5  # the share of free memory `auto` is willing to give the cache


class CacheTierError(ValueError):
    """The requested tier cannot hold the cache (or does not exist here)."""


def available_ram_bytes() -> int | None:
    """RAM the kernel can hand out without swapping (``MemAvailable``); None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def free_cuda_bytes(device: torch.device | int | None = None) -> int:
    """Free memory on a CUDA device, 0 where CUDA is absent."""
    if not torch.cuda.is_available():
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def _gib(nbytes: int | float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def _fits(nbytes: int, capacity: int | None, budget_bytes: int | None, share: float) -> bool:
    if budget_bytes is not None and nbytes > budget_bytes:
        return False
    return capacity is None or nbytes <= capacity * share


def choose_tier(
    nbytes: int,
    tier: str = "auto",
    *,
    budget_bytes: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | int | None = None,
    local_processes: int = 1,
    gpu: bool = True,
) -> str:
    """Return the tier a cache of ``nbytes`` should live in.

    Args:
        nbytes: the cache's size in its storage dtype.
        tier: ``"auto"``, or one of :data:`TIERS` to force it (checked, never silently changed).
        budget_bytes: the most the cache may take in device or host memory (``auto`` goes to disk
            beyond it; a forced ``cuda``/``host`` tier over it is an error).
        cache_dir: where the disk tier's file goes; without it there is no disk tier.
        device: the CUDA device for the ``cuda`` tier (default: the current one).
        local_processes: the processes on this machine that each hold a cache of their own
            (torchrun's ``LOCAL_WORLD_SIZE``): the ``host`` tier gets ``1 / local_processes`` of
            the available RAM. ``budget_bytes`` is per process.
        gpu: whether ``auto`` may choose the ``cuda`` tier; False where the features are read on
            the CPU (training with ``--device cpu`` on a machine that has a GPU), where GPU memory
            would only add a device-to-host copy to every batch.
    """
    if tier not in ("auto", *TIERS):
        raise CacheTierError(f"unknown cache tier {tier!r}: choose one of 'auto', {', '.join(map(repr, TIERS))}")
    if tier == "auto":
        return _choose_auto(nbytes, budget_bytes, cache_dir, device, local_processes, gpu)
    _check_forced(nbytes, tier, budget_bytes, cache_dir, device, local_processes)
    return tier


def _choose_auto(nbytes, budget_bytes, cache_dir, device, local_processes, gpu) -> str:
    if gpu and torch.cuda.is_available() and _fits(nbytes, free_cuda_bytes(device), budget_bytes, AUTO_HEADROOM):
        return "cuda"
    if _fits(nbytes, available_ram_bytes(), budget_bytes, AUTO_HEADROOM / local_processes):
        return "host"
    if cache_dir is not None:
        _check_disk_space(nbytes, cache_dir)
        return "disk"
    budget = "" if budget_bytes is None else f" or the budget of {_gib(budget_bytes)}"
    shared = "" if local_processes == 1 else f" (RAM shared by {local_processes} processes)"
    raise CacheTierError(
        f"a cache of {_gib(nbytes)} exceeds half of the free memory{shared}{budget}; "
        "pass cache_dir= to keep it in a memory-mapped file (tier 'disk')"
    )


def _check_forced(nbytes, tier, budget_bytes, cache_dir, device, local_processes) -> None:
    if tier in ("cuda", "host") and budget_bytes is not None and nbytes > budget_bytes:
        raise CacheTierError(
            f"tier {tier!r} cannot hold {_gib(nbytes)} within the budget of {_gib(budget_bytes)}: "
            "raise the budget or use tier 'disk' or 'auto'"
        )
    if tier == "cuda":
        if not torch.cuda.is_available():
            raise CacheTierError("tier 'cuda' needs a CUDA device and none is available: use 'host', 'disk' or 'auto'")
        free = free_cuda_bytes(device)
        if nbytes > free:
            raise CacheTierError(
                f"tier 'cuda' cannot hold {_gib(nbytes)}: {_gib(free)} free on the GPU; use 'host', 'disk' or 'auto'"
            )
    elif tier == "host":
        available = available_ram_bytes()
        if available is not None and nbytes > available / local_processes:
            shared = "" if local_processes == 1 else f" to {local_processes} processes"
            raise CacheTierError(
                f"tier 'host' cannot hold {_gib(nbytes)}: {_gib(available)} of RAM available{shared}; "
                "use tier 'disk' with a cache_dir, or 'auto'"
            )
    elif tier == "disk":
        if cache_dir is None:
            raise CacheTierError("tier 'disk' needs a cache_dir to put its file in")
        _check_disk_space(nbytes, cache_dir)


def _check_disk_space(nbytes: int, cache_dir: str | os.PathLike) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if nbytes > free:
        raise CacheTierError(f"tier 'disk' cannot hold {_gib(nbytes)}: {_gib(free)} free under {os.fspath(cache_dir)}")
