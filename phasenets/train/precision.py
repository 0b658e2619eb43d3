"""How a run computes: the autocast dtype (``--amp``), fp16's gradient scaler and the memory layout.

One small value object, so that the loop, the feature cache's builds and the batch-norm pass all
run the frozen and the trainable blocks in the same precision and layout.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

__all__ = ["AMP_MODES", "Precision"]

AMP_MODES = ("off", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """``amp``: one of :data:`AMP_MODES`; ``channels_last``: 4-D inputs in channels-last layout."""

    device: torch.device
    amp: str = "off"
    channels_last: bool = False

    def autocast(self) -> ContextManager:
        """The mixed-precision context of every forward pass (a no-op with ``amp="off"``)."""
        dtype = _AUTOCAST_DTYPES.get(self.amp)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A phase's gradient scaler: active only for fp16, whose small gradients would underflow."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def layout(self, inputs: torch.Tensor) -> torch.Tensor:
        """Channels-last inputs where asked (4-D only: flat features have no channel layout)."""
        if self.channels_last and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs
