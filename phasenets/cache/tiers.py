"""Where a feature cache lives: device memory, host RAM or a memory-mapped file.

A :class:`Placement` is the one place a cache's tier is decided. ``auto`` takes the fastest tier
the cache fits in while leaving room for training: at most half of the free GPU memory
(activations, gradients and optimizer state need the rest) and at most half of the available RAM
(the data loader, the model and the OS page cache need the rest). A forced tier only has to fit in
what is free, and fails with a message that says what would. Where several processes on one
machine each cache their own data, each counts on its share of the RAM (``local_processes``); a
GPU is one process's own, so its free memory is not shared out.
"""
from __future__ import annotations

import enum
import os
import shutil
from dataclasses import dataclass

import torch

from phasenets.errors import UserError

__all__ = ["CACHE_MODES", "TIERS", "CacheTierError", "Placement", "Tier", "available_ram_bytes", "choose_tier",
           "format_bytes", "free_cuda_bytes"]


class Tier(str, enum.Enum):
    """A cache's storage. A ``str`` enum: ``Tier.HOST == "host"``, so names from flags compare equal."""

    CUDA = "cuda"
    HOST = "host"
    DISK = "disk"

    def __str__(self) -> str:
        return self.value


TIERS = tuple(tier.value for tier in Tier)
CACHE_MODES = ("off", "auto", *TIERS)  # what --cache takes: no cache, the chosen tier, or a forced one
AUTO_HEADROOM = 0.5  # the share of free memory `auto` is willing to give the cache


class CacheTierError(UserError, ValueError):
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


def format_bytes(nbytes: int | float) -> str:
    """A size in the unit that fits it (``"512 B"``, ``"3.2 MiB"``, ``"1.50 GiB"``)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.2f} {unit}" if unit == "GiB" else f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


@dataclass(frozen=True)
class Placement:
    """Where caches may go and how much they may take; :meth:`tier_for` picks a cache's tier.

    Args:
        mode: ``"auto"``, or a :class:`Tier` (or its name) to force it (checked, never silently changed).
        budget_bytes: the most a cache may take in device or host memory (``auto`` goes to disk
            beyond it; a forced ``cuda``/``host`` tier over it is an error).
        cache_dir: where the disk tier's files go; without it there is no disk tier.
        device: the CUDA device for the ``cuda`` tier (default: the current one).
        local_processes: the processes on this machine that each hold caches of their own
            (torchrun's ``LOCAL_WORLD_SIZE``): the ``host`` tier gets ``1 / local_processes`` of
            the available RAM. ``budget_bytes`` is per process.
        gpu: whether ``auto`` may choose the ``cuda`` tier; False where the features are read on
            the CPU (training with ``--device cpu`` on a machine that has a GPU), where GPU memory
            would only add a device-to-host copy to every batch.
    """

    mode: str = "auto"
    budget_bytes: int | None = None
    cache_dir: str | os.PathLike | None = None
    device: torch.device | int | None = None
    local_processes: int = 1
    gpu: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("auto", *TIERS):
            raise CacheTierError(f"unknown cache tier {self.mode!r}: choose one of 'auto', "
                                 f"{', '.join(map(repr, TIERS))}")

    def tier_for(self, nbytes: int) -> Tier:
        """The tier a cache of ``nbytes`` (in its storage dtype) goes to."""
        if self.mode == "auto":
            return self._choose(nbytes)
        tier = Tier(self.mode)
        self.check(nbytes, tier)
        return tier

    def _choose(self, nbytes: int) -> Tier:
        if self.gpu and torch.cuda.is_available() and self._fits(nbytes, free_cuda_bytes(self.device), AUTO_HEADROOM):
            return Tier.CUDA
        if self._fits(nbytes, available_ram_bytes(), AUTO_HEADROOM / self.local_processes):
            return Tier.HOST
        if self.cache_dir is not None:
            _check_disk_space(nbytes, self.cache_dir)
            return Tier.DISK
        budget = "" if self.budget_bytes is None else f" or the budget of {format_bytes(self.budget_bytes)}"
        shared = "" if self.local_processes == 1 else f" (RAM shared by {self.local_processes} processes)"
        raise CacheTierError(
            f"a cache of {format_bytes(nbytes)} exceeds half of the free memory{shared}{budget}; "
            "pass cache_dir= to keep it in a memory-mapped file (tier 'disk')"
        )

    def _fits(self, nbytes: int, capacity: int | None, share: float) -> bool:
        if self.budget_bytes is not None and nbytes > self.budget_bytes:
            return False
        return capacity is None or nbytes <= capacity * share

    def check(self, nbytes: int, tier: Tier | str) -> None:
        """Raise :class:`CacheTierError` unless ``tier`` can hold ``nbytes`` now."""
        tier = Tier(tier)
        if tier in (Tier.CUDA, Tier.HOST) and self.budget_bytes is not None and nbytes > self.budget_bytes:
            raise CacheTierError(
                f"tier {tier.value!r} cannot hold {format_bytes(nbytes)} within the budget of "
                f"{format_bytes(self.budget_bytes)}: raise the budget or use tier 'disk' or 'auto'"
            )
        if tier is Tier.CUDA:
            if not torch.cuda.is_available():
                raise CacheTierError("tier 'cuda' needs a CUDA device and none is available: use 'host', 'disk' or 'auto'")
            free = free_cuda_bytes(self.device)
            if nbytes > free:
                raise CacheTierError(f"tier 'cuda' cannot hold {format_bytes(nbytes)}: {format_bytes(free)} free on "
                                     "the GPU; use 'host', 'disk' or 'auto'")
        elif tier is Tier.HOST:
            available = available_ram_bytes()
            if available is not None and nbytes > available / self.local_processes:
                shared = "" if self.local_processes == 1 else f" to {self.local_processes} processes"
                raise CacheTierError(
                    f"tier 'host' cannot hold {format_bytes(nbytes)}: {format_bytes(available)} of RAM "
                    f"available{shared}; use tier 'disk' with a cache_dir, or 'auto'"
                )
        else:
            if self.cache_dir is None:
                raise CacheTierError("tier 'disk' needs a cache_dir to put its file in")
            _check_disk_space(nbytes, self.cache_dir)


def choose_tier(nbytes: int, tier: str = "auto", **placement) -> Tier:
    """The tier a cache of ``nbytes`` goes to: ``Placement(tier, **placement).tier_for(nbytes)``."""
    return Placement(tier, **placement).tier_for(nbytes)


def _check_disk_space(nbytes: int, cache_dir: str | os.PathLike) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if nbytes > free:
        raise CacheTierError(f"tier 'disk' cannot hold {format_bytes(nbytes)}: {format_bytes(free)} free under "
                             f"{os.fspath(cache_dir)}")
