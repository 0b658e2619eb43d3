"""Datasets: folder layout, preflight check, augmentation, loaders (DALI or PIL) and tools.

``build_loader`` picks the DALI loader where DALI is installed and the PIL + DataLoader loader
otherwise; both take the same arguments and yield ``(images, labels, indices)`` batches.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

from phasenets.data.check import CheckReport, Problem, check_dataset, filter_bad
from phasenets.data.layout import DatasetError, DatasetSplits, Sample, scan_dataset
from phasenets.data.tools import balance_dataset, import_dataset, split_dataset
from phasenets.data.torch_loader import TorchImageLoader, build_torch_loader
from phasenets.data.transforms import (
    AugmentConfig,
    AugmentParams,
    Normalization,
    compute_normalization,
    sample_augment_params,
    view_seed,
)

__all__ = [
    "AugmentConfig", "AugmentParams", "CheckReport", "DatasetError", "DatasetSplits",
    "LOADER_KINDS", "Normalization", "Problem", "Sample", "TorchImageLoader", "balance_dataset",
    "build_loader", "build_torch_loader", "check_dataset", "compute_normalization", "filter_bad",
    "import_dataset", "sample_augment_params", "scan_dataset", "split_dataset", "view_seed",
]

LOADER_KINDS = ("auto", "dali", "torch")
logger = logging.getLogger(__name__)
_fallback_logged = False


def build_loader(samples: Sequence[Sample], *, kind: str = "auto", **options):
    """A loader over ``samples``: ``dali``, ``torch``, or ``auto`` (DALI when it can be imported).

    ``options`` are the shared loader arguments (image_size, in_channels, augment, normalization,
    batch_size, shuffle, seed, num_workers, drop_last, rank, world_size). ``auto`` falls back to
    the torch loader when DALI or its loader module cannot be imported, and logs why once.
    """
    if kind not in LOADER_KINDS:
        raise ValueError(f"unknown loader kind {kind!r}; valid: {', '.join(LOADER_KINDS)}")
    if kind != "torch":
        try:
            dali_loader = importlib.import_module("phasenets.data.dali_loader")
        except ImportError as error:
            if kind == "dali":
                raise ImportError(f"the DALI loader is unavailable ({error}); install the DALI wheel matching "
                                  "your CUDA (pip install nvidia-dali-cuda130) or use --loader torch") from error
            _log_fallback(error)
        else:
            return dali_loader.build_dali_loader(samples, **options)
    return build_torch_loader(samples, **options)


def _log_fallback(error: ImportError) -> None:
    global _fallback_logged
    if not _fallback_logged:
        logger.info("DALI loader unavailable (%s); using the PIL + DataLoader loader", error)
        _fallback_logged = True
