"""Early stopping on a validation metric: the best epoch of a phase and how long it has been since."""
from __future__ import annotations

from dataclasses import dataclass

from phasenets.train.metrics import SplitMetrics

__all__ = ["MONITORS", "EarlyStopping"]

MONITORS = ("accuracy", "loss")  # higher accuracy is better, lower loss is


@dataclass
class EarlyStopping:
    """Tracks the best validation epoch of a phase; ``patience`` 0 never stops."""

    monitor: str
    patience: int
    best: float | None = None
    best_epoch: int = 0
    stale_epochs: int = 0

    def update(self, metrics: SplitMetrics, epoch: int) -> bool:
        """Record ``epoch``'s validation metrics; True when they are the best so far."""
        value = metrics.accuracy if self.monitor == "accuracy" else metrics.loss
        better = self.best is None or (value > self.best if self.monitor == "accuracy" else value < self.best)
        if better:
            self.best, self.best_epoch, self.stale_epochs = value, epoch, 0
        else:
            self.stale_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale_epochs >= self.patience
