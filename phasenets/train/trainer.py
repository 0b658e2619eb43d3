"""``PhaseTrainer``: the run's front door. ``PhaseTrainer(config).fit()`` prepares the run
(``setup.prepare_run``) and trains its phases (``loop.run_phases``); use those two functions
directly to look at or change a run between the two."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from torch import nn

from phasenets.train.loop import run_phases
from phasenets.train.results import PhaseResult, TrainResult
from phasenets.train.setup import prepare_run

if TYPE_CHECKING:
    from phasenets.config import TrainConfig

__all__ = ["PhaseResult", "PhaseTrainer", "TrainResult"]


class PhaseTrainer:
    """Trains a network phase by phase as ``config`` describes.

    ``model``: a ready ``BlockwiseNet`` (e.g. ``BlockwiseNet.from_modules(...)``); by default the
    trainer builds ``config.model`` from the registry. ``fit()`` runs the whole plan and returns
    a ``TrainResult``.
    """

    def __init__(self, config: TrainConfig, model: nn.Module | None = None):
        self.config = config
        self.model = model

    def fit(self) -> TrainResult:
        started = time.perf_counter()
        with prepare_run(self.config, self.model) as setup:
            return run_phases(setup, started)
