"""``CacheSpec``: the shape of a feature cache's contents, and the one formula for its size."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["STORAGE_DTYPES", "CacheSpec"]

# storage dtype name -> torch dtype
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.int8,
}


@dataclass(frozen=True)
class CacheSpec:
    """``num_samples x views`` rows of one sample's ``feature_shape`` in the storage ``dtype``.

    ``feature_shape`` is ``(C, H, W)`` or ``(F,)``; its first dimension is the channel dimension
    an int8 cache keeps one dequantization scale per. Row ``index * views + view`` holds view
    ``view`` of sample ``index``.
    """

    num_samples: int
    feature_shape: tuple[int, ...]
    views: int = 1
    dtype: str = "fp16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_shape", tuple(int(size) for size in self.feature_shape))
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype))

    @classmethod
    def of(cls, num_samples: int, feature_shape: Sequence[int], views: int = 1,
           dtype: str | torch.dtype = "fp16") -> CacheSpec:
        return cls(int(num_samples), tuple(feature_shape), int(views), dtype)

    @property
    def rows(self) -> int:
        return self.num_samples * self.views

    @property
    def row_elems(self) -> int:
        return math.prod(self.feature_shape)

    @property
    def num_channels(self) -> int:
        return self.feature_shape[0]

    @property
    def torch_dtype(self) -> torch.dtype:
        return STORAGE_DTYPES[self.dtype]

    @property
    def payload_nbytes(self) -> int:
        """The rows' bytes in the storage dtype."""
        return self.rows * self.row_elems * self.torch_dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Everything the cache holds: the rows plus an int8 cache's float32 scale per channel."""
        return self.payload_nbytes + (4 * self.num_channels if self.dtype == "int8" else 0)


def resolve_dtype(dtype: str | torch.dtype) -> str:
    """The storage dtype's name (``"fp16"``) from a name or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        names = {torch_dtype: name for name, torch_dtype in STORAGE_DTYPES.items()}
        if dtype in names:
            return names[dtype]
    elif dtype in STORAGE_DTYPES:
        return dtype
    raise ValueError(f"storage dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
