"""phasenets: phase-wise training of CNNs on small, specialized image datasets.

Public API::

    from phasenets import build_model, PhaseTrainer, TrainConfig, FeatureCache

The heavy pieces are imported on first use, so ``import phasenets`` stays cheap and works
even where an optional part (the native extension, DALI) is missing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from phasenets._lazy import lazy_exports
from phasenets._logging import install_console, set_verbosity

from phasenets._version import __version__

install_console()

# public name -> module that defines it
_EXPORTS = {
    "build_model": "phasenets.models",
    "list_models": "phasenets.models",
    "BlockwiseNet": "phasenets.models",
    "summarize": "phasenets.models.summary",
    "TrainConfig": "phasenets.config",
    "PhaseTrainer": "phasenets.train",
    "FeatureCache": "phasenets.cache",
    "native_available": "phasenets._extension",
}

__all__ = sorted(_EXPORTS) + ["__version__", "set_verbosity"]

if TYPE_CHECKING:  # pragma: no cover
    from phasenets._extension import native_available
    from phasenets.cache import FeatureCache
    from phasenets.config import TrainConfig
    from phasenets.models import BlockwiseNet, build_model, list_models
    from phasenets.models.summary import summarize
    from phasenets.train import PhaseTrainer


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
