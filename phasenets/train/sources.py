"""Feature sources: where the input of a phase's trainable part comes from.

A feature source is iterable, yielding ``(inputs, labels, indices)`` per batch, where ``inputs``
is what the first trainable block takes (the output of the frozen prefix, already on the
training device); it has ``len()`` (batches per epoch) and ``set_epoch(epoch)``. The trainer
sees nothing else, so a source that reads the frozen prefix's outputs from the feature cache
instead of recomputing them plugs in without touching the loop.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import torch

__all__ = ["FrozenPrefixSource"]


class FrozenPrefixSource:
    """Images from ``loader`` run through the frozen blocks ``1 .. upto`` of ``model`` under no_grad.

    ``upto=0`` passes the images through unchanged (phase 1, standard training, evaluation of the
    whole network). ``autocast`` is the trainer's mixed-precision context, so the prefix runs in
    the same precision as the trainable part.
    """

    def __init__(self, loader, model: torch.nn.Module, upto: int, device: torch.device,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext):
        self.loader = loader
        self.model = model
        self.upto = upto
        self.device = device
        self.autocast = autocast

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for images, labels, indices in self.loader:
            images = images.to(self.device, non_blocking=non_blocking)
            labels = labels.to(self.device, non_blocking=non_blocking)
            if self.upto > 0:
                with torch.no_grad(), self.autocast():
                    images = self.model.features(images, upto=self.upto)
            yield images, labels, indices
