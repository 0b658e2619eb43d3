"""Per-block summary of a `BlockwiseNet`: shapes, parameters, multiply-adds and cache sizes.

`summarize(model)` returns a JSON-ready dict::

    {
      "model": "alexnet",                 # registry name, or "custom"
      "num_classes": 1000,
      "input_shape": [3, 227, 227],       # (C, H, W) of one image
      "head": "linear",                   # auxiliary head kind
      "blocks": [                         # one entry per block, in order
        {
          "block": 1,                     # 1-based; phase k trains block k
          "input_shape": [3, 227, 227],   # one sample, no batch dim
          "output_shape": [96, 27, 27],   # (C, H, W) or (F,); the last block's is (num_classes,)
          "params": 34944,                # parameters of the block
          "trainable_params": 34944,      # of which requires_grad (0 once the block is frozen)
          "macs": 105415200,              # multiply-adds for one sample (see below)
          "cache_bytes_fp16": 139968,     # bytes to cache one sample of the output in fp16
          "head_params": 97000,           # auxiliary head of this phase; 0 for the last block
          "head_macs": 96000,             # its multiply-adds for one sample (0 for the last block)
          "frozen": false
        }, ...
      ],
      "totals": {
        "params": 62378344,               # the network itself: all blocks, no auxiliary heads
        "trainable_params": 62378344,
        "head_params": 1124000,           # all auxiliary heads together
        "head_macs": 1120000,             # all auxiliary heads, one sample each
        "macs": 1135256096,               # all blocks, one sample
        "max_cache_bytes_fp16": 139968    # largest per-sample cache among the cached levels
      }                                   # (outputs of blocks 1..n-1)
    }

Multiply-adds are counted with forward hooks on meta tensors (nothing is computed), per sample:
a convolution costs ``output elements x in_channels / groups x kernel area``, a linear layer
``output elements x in_features``, a batch norm one per output element (its inference-time
scale and shift). Pooling, activations, local response normalization, additions and
concatenations are not counted: they hold no weights and cost little next to the layers that do.
A phase's training step runs its block and its head, so ``macs + head_macs`` of block k is what
phase k computes per sample once the earlier blocks' outputs come from the cache.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from phasenets.models.blockwise import BlockwiseNet, meta_forward

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def summarize(model: BlockwiseNet) -> dict[str, Any]:
    """Shapes, parameters, multiply-adds and fp16 cache bytes per block, and totals (schema above)."""
    blocks = []
    for k, block in enumerate(model.blocks, start=1):
        output_shape = model.block_output_shapes[k - 1]
        blocks.append(
            {
                "block": k,
                "input_shape": list(model.block_input_shape(k)),
                "output_shape": list(output_shape),
                "params": _count(block.parameters()),
                "trainable_params": _count(p for p in block.parameters() if p.requires_grad),
                "macs": count_macs(block, model.block_input_shape(k)),
                "cache_bytes_fp16": 2 * math.prod(output_shape),
                "head_params": _count(model.head(k).parameters()),
                "head_macs": count_macs(model.head(k), output_shape),
                "frozen": model.is_frozen(k),
            }
        )
    cached_levels = [entry["cache_bytes_fp16"] for entry in blocks[:-1]]
    return {
        "model": model.name,
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape),
        "head": model.head_kind,
        "blocks": blocks,
        "totals": {
            "params": sum(entry["params"] for entry in blocks),
            "trainable_params": sum(entry["trainable_params"] for entry in blocks),
            "head_params": sum(entry["head_params"] for entry in blocks),
            "head_macs": sum(entry["head_macs"] for entry in blocks),
            "macs": sum(entry["macs"] for entry in blocks),
            "max_cache_bytes_fp16": max(cached_levels, default=0),
        },
    }


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of ``module`` for one input of ``input_shape`` (no batch dim), on meta tensors."""
    total = 0

    def count(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        per_sample = output[0].numel()
        if isinstance(layer, nn.modules.conv._ConvNd):
            total += per_sample * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
        elif isinstance(layer, nn.Linear):
            total += per_sample * layer.in_features
        else:
            total += per_sample

    hooks = [layer.register_forward_hook(count) for layer in module.modules() if isinstance(layer, _COUNTED)]
    try:
        meta_forward(module, input_shape)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def _count(parameters) -> int:
    return sum(parameter.numel() for parameter in parameters)


def format_summary(summary: dict[str, Any]) -> str:
    """A readable table of a `summarize` result, one row per block plus totals."""
    header = ("block", "input", "output", "params", "trainable", "MACs", "cache/sample fp16", "head params", "head MACs")
    rows = [
        (
            str(entry["block"]) + (" (frozen)" if entry["frozen"] else ""),
            _shape(entry["input_shape"]),
            _shape(entry["output_shape"]),
            f"{entry['params']:,}",
            f"{entry['trainable_params']:,}",
            _si(entry["macs"]),
            _bytes(entry["cache_bytes_fp16"]),
            f"{entry['head_params']:,}",
            _si(entry["head_macs"]),
        )
        for entry in summary["blocks"]
    ]
    totals = summary["totals"]
    rows.append(
        (
            "total",
            "",
            "",
            f"{totals['params']:,}",
            f"{totals['trainable_params']:,}",
            _si(totals["macs"]),
            f"max {_bytes(totals['max_cache_bytes_fp16'])}",
            f"{totals['head_params']:,}",
            _si(totals["head_macs"]),
        )
    )
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells) -> str:
        # Left-align the text columns, right-align the numbers.
        return "  ".join(
            cell.ljust(width) if column < 3 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    title = (
        f"{summary['model']}: input {_shape(summary['input_shape'])}, "
        f"{summary['num_classes']} classes, {summary['head']} auxiliary heads"
    )
    rule = "-" * len(line(header))
    return "\n".join([title, line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


def _si(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def _bytes(value: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"
