"""A phase's local loss: cross-entropy through its head, optionally mixed with PredSim's
similarity-matching term on the output of the block it trains.

Nøkland and Eidnes ("Training neural networks with local error signals", ICML 2019) train each
layer with ``(1 - w) x prediction loss + w x similarity-matching loss``, the second being the mean
squared difference between two ``B x B`` matrices of a batch: the cosine similarities of the
layer's (centred) outputs and those of the one-hot labels. It asks the block to place same-class
images close together and different classes apart, a signal that does not pass through the small
head (they report it helping most where the local heads are weak). Their version computes the
similarity after a learned 3x3 convolution; here it is taken on the block's output itself, so the
term adds no weights to the network and nothing to its checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LocalLoss", "OutputTap", "similarity_matching_loss", "similarity_matrix"]


def similarity_matrix(rows: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of samples of a batch, each flattened and centred (``B x B``)."""
    rows = rows.flatten(1).float()
    rows = rows - rows.mean(dim=1, keepdim=True)
    rows = F.normalize(rows, dim=1)
    return (rows @ rows.T).clamp(-1.0, 1.0)


def similarity_matching_loss(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean squared difference between the similarity matrices of ``features`` and of the one-hot labels."""
    target = similarity_matrix(F.one_hot(labels, num_classes))
    return F.mse_loss(similarity_matrix(features), target)


class LocalLoss(nn.Module):
    """``(1 - w) x cross-entropy(logits) + w x similarity_matching_loss(features)``; plain
    cross-entropy when ``w`` is 0 or no features are given (a phase ending in the network's own
    classifier has no hidden output to shape)."""

    def __init__(self, num_classes: int, similarity_weight: float = 0.0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= similarity_weight < 1.0:
            raise ValueError(f"similarity_weight must be in [0, 1), got {similarity_weight}")
        self.num_classes = num_classes
        self.similarity_weight = similarity_weight
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.cross_entropy(logits, labels)
        if self.similarity_weight == 0.0 or features is None:
            return loss
        similarity = similarity_matching_loss(features, labels, self.num_classes)
        return (1.0 - self.similarity_weight) * loss + self.similarity_weight * similarity


class OutputTap:
    """Keeps the latest output of ``module`` (a forward hook) until ``close``."""

    def __init__(self, module: nn.Module):
        self.output: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self.output = output

    def take(self) -> torch.Tensor | None:
        """The kept output, released (the tap holds no batch's graph past its loss)."""
        output, self.output = self.output, None
        return output

    def close(self) -> None:
        self._handle.remove()
        self.output = None
