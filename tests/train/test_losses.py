"""The local loss: cross-entropy, and PredSim's similarity-matching term on a learned projection of the
trained block's output."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phasenets.config import ConfigError, TrainConfig
from phasenets.train import PhaseTrainer
from phasenets.train.losses import LocalLoss, OutputTap, similarity_matching_loss, similarity_matrix

from conftest import tiny_config, tiny_net


def test_the_similarity_matrix_is_the_cosine_of_centred_rows():
    rows = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
    matrix = similarity_matrix(rows)
    assert matrix.shape == (3, 3)
    assert torch.allclose(matrix.diagonal(), torch.ones(3))
    assert matrix[0, 1] == pytest.approx(1.0)  # a multiple of a row, once centred, points the same way
    assert matrix[0, 2] == pytest.approx(-1.0)  # the mirrored row points the other way
    assert torch.allclose(matrix, matrix.T)


def test_features_grouped_like_the_labels_match_and_others_do_not():
    labels = torch.tensor([0, 0, 1, 2])
    grouped = F.one_hot(labels, 3).float().reshape(4, 3, 1, 1) * 5.0  # maps shaped (C, H, W)
    assert similarity_matching_loss(grouped, labels, 3).item() == pytest.approx(0.0, abs=1e-6)
    shuffled = grouped[torch.tensor([2, 0, 1, 3])]
    assert similarity_matching_loss(shuffled, labels, 3).item() > 0.1


def test_the_local_loss_mixes_the_two_terms_and_sends_gradients_into_the_features():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    features = torch.randn(6, 4, 2, 2, requires_grad=True)
    plain = F.cross_entropy(logits, labels)
    assert LocalLoss(3)(logits, labels, features) == plain  # weight 0: cross-entropy only
    assert LocalLoss(3, 0.9, feature_shape=(4, 2, 2))(logits, labels) == plain  # no features (the network's own classifier)
    criterion = LocalLoss(3, 0.9, feature_shape=(4, 2, 2))
    mixed = criterion(logits, labels, features)
    similarity = similarity_matching_loss(criterion.projection(features), labels, 3)
    assert mixed.item() == pytest.approx(0.1 * plain.item() + 0.9 * similarity.item())
    mixed.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"similarity_weight must be in \[0, 1\)"):
        LocalLoss(3, 1.0)
    with pytest.raises(ConfigError, match="similarity_weight"):
        TrainConfig(similarity_weight=-0.1)


def test_the_tap_keeps_a_modules_latest_output_until_taken_and_stops_when_closed():
    layer = nn.Linear(2, 2)
    tap = OutputTap(layer)
    output = layer(torch.ones(1, 2))
    assert tap.take() is output and tap.take() is None
    tap.close()
    layer(torch.ones(1, 2))
    assert tap.take() is None


def test_a_run_with_the_similarity_term_trains_and_only_its_headed_phases_use_it(tiny_data, tmp_path):
    torch.manual_seed(0)
    plain = PhaseTrainer(tiny_config(tiny_data, tmp_path / "plain"), model=tiny_net()).fit()
    torch.manual_seed(0)
    mixed = PhaseTrainer(tiny_config(tiny_data, tmp_path / "mixed", similarity_weight=0.9), model=tiny_net()).fit()
    assert 0.0 <= mixed.final["accuracy"] <= 1.0
    # the same seeds: the headed phases train differently, so their losses differ
    assert mixed.phases[0].validation["loss"] != plain.phases[0].validation["loss"]
    handles = [block._forward_hooks for block in mixed.model.blocks]
    assert all(len(hooks) == 0 for hooks in handles)  # every phase removed its tap


def test_maps_of_many_channels_are_compared_by_each_channels_spread_over_its_positions():
    torch.manual_seed(0)
    maps = torch.randn(5, 6, 4, 4)
    spreads = maps.flatten(2).std(dim=2)
    assert torch.allclose(similarity_matrix(maps), similarity_matrix(spreads), atol=1e-6)
    # shifting a channel's every position by a constant leaves its spread, so the similarity, as it was
    shifted = maps + torch.arange(6.0).reshape(1, 6, 1, 1)
    assert torch.allclose(similarity_matrix(shifted), similarity_matrix(maps), atol=1e-5)
    # few channels, or one position: every value counts
    assert torch.allclose(similarity_matrix(maps[:, :3]), similarity_matrix(maps[:, :3].flatten(1)))


def test_the_similarity_is_taken_after_a_learned_projection_that_trains_with_the_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    maps = torch.randn(6, 4, 5, 5, requires_grad=True)
    loss = LocalLoss(3, 0.9, feature_shape=(4, 5, 5))
    assert isinstance(loss.projection, nn.Conv2d) and loss.projection.weight.shape == (4, 4, 3, 3)
    assert loss.projection.bias is None
    projected = loss.projection(maps)
    expected = 0.1 * F.cross_entropy(logits, labels) + 0.9 * similarity_matching_loss(projected, labels, 3)
    value = loss(logits, labels, maps)
    assert value.item() == pytest.approx(expected.item())
    value.backward()
    assert maps.grad.abs().sum() > 0 and loss.projection.weight.grad.abs().sum() > 0
    vectors = LocalLoss(3, 0.5, feature_shape=(7,))
    assert [p.shape for p in vectors.parameters()] == [(7, 7)]
    assert LocalLoss(3).projection is None and list(LocalLoss(3).parameters()) == []
    with pytest.raises(ValueError, match="feature_shape"):
        LocalLoss(3, 0.5)
