"""Phase-wise training: the phase plan, the trainer loop, checkpoints, metrics and plots.

``prepare_run(config) -> RunSetup`` assembles a run; ``run_phases(setup)`` trains it;
``PhaseTrainer(config).fit()`` does both. The names below are imported on first use, so that
importing one module of this package (``phasenets.config`` takes its choice lists from the plan
and the optimizers) does not import them all.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from phasenets._lazy import lazy_exports

_EXPORTS = {
    "FrozenPrefixSource": "phasenets.train.sources",
    "Phase": "phasenets.train.plan",
    "build_plan": "phasenets.train.plan",
    "PhaseResult": "phasenets.train.results",
    "TrainResult": "phasenets.train.results",
    "PhaseTrainer": "phasenets.train.trainer",
    "RunSetup": "phasenets.train.setup",
    "prepare_run": "phasenets.train.setup",
    "run_phases": "phasenets.train.loop",
    "Checkpoint": "phasenets.train.checkpoint",
    "RunDirectory": "phasenets.train.rundir",
    "evaluate_checkpoint": "phasenets.train.evaluate",
    "load_trained_model": "phasenets.train.evaluate",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from phasenets.train.checkpoint import Checkpoint
    from phasenets.train.evaluate import evaluate_checkpoint, load_trained_model
    from phasenets.train.loop import run_phases
    from phasenets.train.plan import Phase, build_plan
    from phasenets.train.results import PhaseResult, TrainResult
    from phasenets.train.rundir import RunDirectory
    from phasenets.train.setup import RunSetup, prepare_run
    from phasenets.train.sources import FrozenPrefixSource
    from phasenets.train.trainer import PhaseTrainer


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
