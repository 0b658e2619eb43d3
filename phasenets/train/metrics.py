"""Classification metrics accumulated over an epoch: loss, top-1, top-5 and the confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["MetricTracker", "SplitMetrics", "per_class_accuracy"]


@dataclass
class SplitMetrics:
    """Metrics of one pass over a split. ``top5`` is ``None`` with 5 classes or fewer."""

    loss: float
    accuracy: float
    top5: float | None
    count: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"loss": self.loss, "accuracy": self.accuracy, "top5": self.top5, "count": self.count}


class MetricTracker:
    """Running sums on the training device, so that no step waits on a host sync.

    ``confusion[t, p]`` counts samples of true class ``t`` predicted as ``p``.
    """

    def __init__(self, num_classes: int, device: torch.device):
        self.num_classes = num_classes
        # loss sum, top-1 hits, top-5 hits, sample count
        self.totals = torch.zeros(4, dtype=torch.float64, device=device)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch; ``loss`` is the batch mean."""
        count = labels.numel()
        top = logits.topk(min(5, self.num_classes), dim=1).indices
        hits = top == labels[:, None]
        batch = torch.stack([
            loss.detach().double() * count,
            hits[:, 0].sum().double(),
            hits.any(dim=1).sum().double(),
            torch.tensor(count, dtype=torch.float64, device=labels.device),
        ])
        self.totals += batch
        pairs = labels * self.num_classes + top[:, 0]
        self.confusion += torch.bincount(pairs, minlength=self.num_classes**2).view(self.num_classes, -1)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Total the sums over processes (pass ``DistributedContext.all_reduce_sum``)."""
        all_reduce_sum(self.totals)
        all_reduce_sum(self.confusion)

    def compute(self) -> SplitMetrics:
        loss_sum, top1, top5, count = self.totals.tolist()
        if count == 0:
            raise ValueError("no samples were seen: the split is empty")
        return SplitMetrics(
            loss=loss_sum / count,
            accuracy=top1 / count,
            top5=top5 / count if self.num_classes > 5 else None,
            count=int(count),
        )


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Recall of each class from a confusion matrix; ``None`` for a class with no samples."""
    totals = confusion.sum(dim=1).tolist()
    hits = confusion.diagonal().tolist()
    return [hit / total if total else None for hit, total in zip(hits, totals)]
