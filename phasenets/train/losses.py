"""A phase's local loss: cross-entropy through its head, optionally mixed with PredSim's
similarity-matching term on the output of the block it trains.

Nøkland and Eidnes ("Training neural networks with local error signals", ICML 2019) train each
layer with ``(1 - w) x prediction loss + w x similarity-matching loss``, the second being the mean
squared difference between two ``B x B`` matrices of a batch: the cosine similarities of the
layer's (centred) outputs and those of the one-hot labels. It asks the block to place same-class
images close together and different classes apart, a signal that does not pass through the small
head (they report it helping most where the local heads are weak).

As in their method, the similarity is not taken on the block's output itself but after a learned
projection of it (a bias-free 3x3 convolution of feature maps, a bias-free linear map of
vectors), and a map with more than 3 channels is described by each channel's standard deviation
over its positions. The projection leaves the output free to carry more than the labels' structure:
without it, asking a narrow block's raw ReLU maps to reproduce that structure starved the later
phases (ACCURACY.md). The projection lives only as long as its phase: it trains with the phase's
optimizer, goes into the phase's checkpoints (a resumed phase continues with it), and never into
the network.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LocalLoss", "OutputTap", "similarity_matching_loss", "similarity_matrix", "similarity_projection"]


def similarity_matrix(batch: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of samples of a batch, each described by a centred vector
    (``B x B``): a sample's feature maps by each channel's standard deviation over its positions
    when there are more than 3 channels of more than one position, anything else flattened."""
    batch = batch.float()
    if batch.dim() == 4 and batch.shape[1] > 3 and batch.shape[2] * batch.shape[3] > 1:
        rows = batch.flatten(2).std(dim=2)
    else:
        rows = batch.flatten(1)
    rows = rows - rows.mean(dim=1, keepdim=True)
    rows = F.normalize(rows, dim=1)
    return (rows @ rows.T).clamp(-1.0, 1.0)


def similarity_matching_loss(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean squared difference between the similarity matrices of ``features`` and of the one-hot labels."""
    target = similarity_matrix(F.one_hot(labels, num_classes))
    return F.mse_loss(similarity_matrix(features), target)


def similarity_projection(feature_shape: Sequence[int]) -> nn.Module:
    """The learned map the similarity is taken after, for a block output of ``feature_shape``
    (no batch dim): a 3x3 convolution keeping the channels of ``(C, H, W)`` maps, a square
    linear map of ``(F,)`` vectors (anything else is flattened first)."""
    if len(feature_shape) == 3:
        channels = feature_shape[0]
        return nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
    features = math.prod(feature_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, features, bias=False))


class LocalLoss(nn.Module):
    """``(1 - w) x cross-entropy(logits) + w x similarity_matching_loss(projection(features))``;
    plain cross-entropy when ``w`` is 0 or no features are given (a phase ending in the network's
    own classifier has no hidden output to shape).

    ``feature_shape``: the trained block's output shape (no batch dim); with ``w > 0`` it sizes
    the learned projection, whose parameters the phase's optimizer must train.
    """

    def __init__(self, num_classes: int, similarity_weight: float = 0.0, label_smoothing: float = 0.0,
                 feature_shape: Sequence[int] | None = None):
        super().__init__()
        if not 0.0 <= similarity_weight < 1.0:
            raise ValueError(f"similarity_weight must be in [0, 1), got {similarity_weight}")
        if similarity_weight > 0 and feature_shape is None:
            raise ValueError("the similarity term needs the block's output shape (feature_shape) for its projection")
        self.num_classes = num_classes
        self.similarity_weight = similarity_weight
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.projection = similarity_projection(feature_shape) if similarity_weight > 0 else None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.cross_entropy(logits, labels)
        if self.projection is None or features is None:
            return loss
        # the tapped output may be half precision (autocast); the projection's weights are fp32
        projected = self.projection(features.float())
        similarity = similarity_matching_loss(projected, labels, self.num_classes)
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
