"""What training returns: a result per phase and one for the whole run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from phasenets.train.inputs import CacheReport

__all__ = ["PhaseResult", "TrainResult"]


@dataclass
class PhaseResult:
    """How one phase went; ``validation`` and ``test`` are the metrics of its restored best weights."""

    index: int
    name: str
    epochs: int
    best_epoch: int
    validation: dict[str, Any]
    test: dict[str, Any] | None
    seconds: float
    best_checkpoint: str
    last_checkpoint: str


@dataclass
class TrainResult:
    """What a run returns. ``final`` is the whole network on the test split (or on validation when
    there is no test split), with per-class accuracy and the confusion matrix; ``cache`` says what
    the feature cache did."""

    run_dir: Path
    classes: list[str]
    phases: list[PhaseResult]
    final: dict[str, Any]
    checkpoint: Path
    seconds: float
    model: nn.Module = field(repr=False)
    cache: CacheReport = field(default_factory=lambda: CacheReport(enabled=False))

    @property
    def test_accuracy(self) -> float | None:
        return self.final["accuracy"] if self.final["split"] == "test" else None
