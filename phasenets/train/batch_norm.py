"""Precise batch-norm statistics for the blocks a phase trained (``TrainConfig.precise_bn``).

A block frozen at the end of its phase runs in eval mode from then on, normalizing with running
statistics that are an exponential average over the phase's last batches, taken while its weights
were still moving; the next phase trains on (and the feature cache stores) features normalized
with them. ``reestimate_batch_norm`` replaces them with the mean and variance of each layer's
inputs over the whole training set under the final weights.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, ContextManager, Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_norm_layers", "reestimate_batch_norm"]


def batch_norm_layers(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    """The batch-norm layers inside ``modules`` that keep running statistics."""
    return [layer for module in modules for layer in module.modules()
            if isinstance(layer, _BatchNorm) and layer.track_running_stats]


@torch.no_grad()
def reestimate_batch_norm(blocks: Sequence[nn.Module], batches: Iterable[torch.Tensor],
                          all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor,
                          autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> int:
    """Set the running mean and variance of every batch-norm layer in ``blocks`` to those of its
    inputs over all of ``batches`` (the blocks run in order on each); returns the number of images.

    The statistics are exact sums, not an average of per-batch statistics (whose variance would
    miss the spread between batch means), and ``all_reduce_sum`` (in place, as
    ``DistributedContext.all_reduce_sum``) adds them up over processes, so that every rank ends
    with the same statistics of the whole training set. The pass runs the batch-norm layers in
    training mode (each normalizes by its batch, so a later layer sees what it saw while it
    learned) and everything else in eval mode (no dropout); every module's mode is restored after.
    Without batch norm in ``blocks`` nothing runs and 0 is returned.
    """
    layers = batch_norm_layers(blocks)
    if not layers:
        return 0
    sizes = [3 * layer.num_features for layer in layers]
    # per layer and channel: element count, sum, sum of squares (float64: amp inputs may be halves);
    # the last entry counts the images
    moments = torch.zeros(sum(sizes) + 1, dtype=torch.float64, device=layers[0].running_mean.device)
    per_layer = [chunk.view(3, -1) for chunk in moments[:-1].split(sizes)]
    hooks = [layer.register_forward_pre_hook(functools.partial(_accumulate, totals))
             for layer, totals in zip(layers, per_layer)]
    modes = {module: module.training for block in blocks for module in block.modules()}
    for block in blocks:
        block.eval()
    for layer in layers:
        layer.train()
    try:
        for batch in batches:
            moments[-1] += batch.shape[0]
            with autocast():
                for block in blocks:
                    batch = block(batch)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    all_reduce_sum(moments)
    for layer, (count, total, squares) in zip(layers, per_layer):
        mean = total / count
        layer.running_mean.copy_(mean)
        # unbiased, as batch norm keeps it in training
        layer.running_var.copy_(((squares - count * mean.square()) / (count - 1).clamp(min=1)).clamp(min=0))
    return int(moments[-1].item())


def _accumulate(totals: torch.Tensor, layer: _BatchNorm, args: tuple[torch.Tensor, ...]) -> None:
    inputs = args[0].detach().to(torch.float64)
    dims = [dim for dim in range(inputs.dim()) if dim != 1]  # all but the channels
    totals[0] += inputs.numel() // inputs.shape[1]
    totals[1] += inputs.sum(dims)
    totals[2] += inputs.square().sum(dims)
