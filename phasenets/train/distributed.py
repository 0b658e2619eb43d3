"""Process-group plumbing: a single process is a world of size one, torchrun sets the rest.

Everything the trainer needs from the distributed world goes through ``DistributedContext``,
so the loop reads the same with one process or many: ``wrap``/``unwrap`` put the trainable part
of a phase in and out of DDP, ``all_reduce_sum`` totals metrics, ``is_main`` gates logging and
saving.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistributedContext"]


@dataclass
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @classmethod
    def from_environment(cls, device: str = "auto") -> DistributedContext:
        """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (set by torchrun) and join the process group.

        ``device``: ``auto`` picks CUDA when available. Each rank uses GPU ``LOCAL_RANK``;
        the backend is NCCL on GPUs and gloo on CPU.
        """
        rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA device; use --device cpu or auto")
        if use_cuda:
            torch.cuda.set_device(local_rank)
            chosen = torch.device("cuda", local_rank)
        else:
            chosen = torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, plots and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: nn.Module) -> nn.Module:
        """The trainable part of a phase as the training step should call it."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    @staticmethod
    def unwrap(module: nn.Module) -> nn.Module:
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
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
