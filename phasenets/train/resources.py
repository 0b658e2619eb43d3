"""How a training process shares the machine's cores between compute threads and loader workers.

torch takes every core for its intra-op threads by default, and a DataLoader's workers are extra
processes on top: on a small machine (or several runs on one) they fight over the same cores and a
run can take ten times as long. ``plan_cpu`` gives each process its share of the cores and splits
it so that workers + threads never exceed it, unless the user fixed either number.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["CpuPlan", "available_cores", "plan_cpu"]


@dataclass(frozen=True)
class CpuPlan:
    """``cores`` this process may use, split into ``workers`` loader processes and ``threads``
    compute threads."""

    cores: int
    workers: int
    threads: int

    def describe(self) -> str:
        workers = f"{self.workers} loader worker process{'es' if self.workers != 1 else ''}" if self.workers \
            else "loading in the training process"
        return f"{self.threads} compute thread{'s' if self.threads != 1 else ''} and {workers}, on {self.cores} " \
               f"core{'s' if self.cores != 1 else ''}"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_cpu(num_workers: int | None, num_threads: int | None, local_processes: int = 1) -> CpuPlan:
    """The split for one of ``local_processes`` training processes on this machine.

    Loader workers: 1 up to 3 cores (decoding overlaps compute at the cost of one core), else a
    quarter of the cores, at most 4: small images decode fast, and after phase 1 the feature cache
    feeds the phases without the loader. Compute threads: the cores left. A number the user gave
    is kept as it is.
    """
    cores = max(1, available_cores() // max(1, local_processes))
    workers = num_workers if num_workers is not None else (1 if cores <= 3 else min(4, cores // 4))
    threads = num_threads if num_threads is not None else max(1, cores - workers)
    return CpuPlan(cores, workers, threads)
