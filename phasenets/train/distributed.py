"""Process-group plumbing: a single process is a world of size one, torchrun sets the rest.

Everything the trainer needs from the distributed world goes through ``DistributedContext``,
so the loop reads the same with one process or many: ``shard`` gives each rank its fixed part
of a split, ``wrap``/``unwrap`` put the trainable part of a phase in and out of DDP (and
``torch.compile``), ``all_reduce_sum`` totals metrics, ``barrier`` lines the ranks up at phase
boundaries, ``is_main`` gates logging and saving.

Shards are fixed for the whole run (rank ``r`` owns items ``r, r + W, ...`` of a split's list),
and each epoch shuffles within them. That is what lets a rank cache the frozen prefix's outputs
of its own shard once and read them every epoch after. A training shard is padded by wrapping
around to ``ceil(N / W)`` items, so every rank takes the same number of steps and the DDP
collectives never wait on a rank that has run out of data; an evaluation shard is not padded
(evaluation runs no collective per step), so no sample is counted twice in its metrics.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from phasenets.errors import ConfigError

__all__ = ["DEFAULT_TIMEOUT_S", "DEVICES", "DistributedContext", "shard"]

# How long a collective may wait for a rank before every rank fails. Long enough for rank-0-only
# work between collectives (a dataset preflight); a dead rank is noticed far sooner by torchrun's
# agent, which stops the others as soon as one process exits with an error.
DEFAULT_TIMEOUT_S = 600.0
DEVICES = ("auto", "cpu", "cuda")  # where a run trains; auto takes CUDA when torch sees a GPU

Item = TypeVar("Item")


def shard(items: Sequence[Item], rank: int, world_size: int, *, pad: bool) -> list[Item]:
    """Rank ``rank``'s fixed share of ``items``: positions ``rank, rank + world_size, ...``.

    A strided shard of a class-sorted list keeps each rank's class mix close to the split's.
    ``pad=True`` wraps around to the start of ``items`` so that every rank gets
    ``ceil(len(items) / world_size)`` items (at most ``world_size - 1`` repeats in all);
    ``pad=False`` gives ranks ``floor`` or ``ceil`` items, together each item exactly once.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if len(items) < world_size:
        raise ValueError(f"{len(items)} samples cannot be shared by {world_size} processes: "
                         "every process needs at least one; use fewer processes or more data")
    items = list(items)
    if pad:
        padded_length = -(-len(items) // world_size) * world_size
        items = items + items[:padded_length - len(items)]
    return items[rank::world_size]


@dataclass
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @classmethod
    def from_environment(cls, device: str = "auto",
                         timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext:
        """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (set by torchrun) and join the process group.

        ``device``: ``auto`` picks CUDA when available. Each rank uses GPU ``LOCAL_RANK``;
        the backend is NCCL on GPUs and gloo on CPU. ``timeout_s`` bounds every collective, so a
        rank that stops answering fails the job instead of hanging it.
        """
        rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise ConfigError("--device cuda, but torch sees no CUDA device here: use --device cpu or auto")
        if use_cuda:
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"local rank {local_rank} needs GPU {local_rank}, but torch sees "
                                   f"{torch.cuda.device_count()}; start at most that many processes "
                                   "per machine")
            torch.cuda.set_device(local_rank)
            chosen = torch.device("cuda", local_rank)
        else:
            chosen = torch.device("cpu")
        # under torchrun, a job of one process joins a group too (NCCL on a GPU): collectives and
        # DDP then run as they would with more processes
        launched = "TORCHELASTIC_RUN_ID" in os.environ
        if (world_size > 1 or launched) and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                    timeout=timedelta(seconds=timeout_s), device_id=chosen if use_cuda else None)
        return cls(rank=rank, local_rank=local_rank, world_size=world_size, local_world_size=local_world_size,
                   device=chosen)

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, plots and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether this process is in a process group (several processes, or one under torchrun)."""
        return self.world_size > 1 or dist.is_initialized()

    @property
    def rank_tag(self) -> str:
        """``""`` in one process, else ``"-rank<r>of<W>"``: a suffix that keeps per-rank files apart
        (a rank's feature cache holds its own shard, so two ranks must never share its file)."""
        return f"-rank{self.rank}of{self.world_size}" if self.world_size > 1 else ""

    def shard(self, items: Sequence[Item], *, pad: bool) -> list[Item]:
        """This rank's fixed share of ``items`` (all of them in one process); see :func:`shard`."""
        return shard(items, self.rank, self.world_size, pad=pad)

    def rank_seed(self, seed: int) -> int:
        """This rank's seed for shuffling its shard: ``seed`` itself on rank 0, one derived from
        ``(seed, rank)`` elsewhere. One seed for all would shuffle every shard by the same
        permutation, and since shards interleave a class-sorted list, the ranks would then put
        neighbours (mostly the same class) in the same step, every step."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def wrap(self, module: nn.Module, compile: bool = False) -> nn.Module:
        """The trainable part of a phase as the training step should call it.

        Only the trainable part goes into DDP, so every parameter it holds gets a gradient each
        step and ``find_unused_parameters`` (an extra graph walk per step) is not needed.
        ``compile`` applies ``torch.compile`` on top, which lets Dynamo split the graph at DDP's
        gradient buckets and overlap the all-reduce with the backward pass.
        """
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        return torch.compile(module) if compile else module

    @staticmethod
    def unwrap(module: nn.Module) -> nn.Module:
        """The plain module under ``wrap``'s DDP and ``torch.compile`` layers."""
        module = getattr(module, "_orig_mod", module)  # torch.compile's OptimizedModule
        return module.module if isinstance(module, DistributedDataParallel) else module

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (a no-op in one process)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank (a run directory name, for instance)."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        """Wait until every rank gets here (phase boundaries, after rank 0 wrote files)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group after a run that ended well on every rank.

        Not for a failing run: tearing down a group whose other ranks are still inside a
        collective can block, and the launcher stops those ranks anyway.
        """
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
