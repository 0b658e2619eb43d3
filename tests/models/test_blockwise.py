"""BlockwiseNet: auxiliary heads, phase forwards, freezing helpers and from_modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from phasenets.models import HEAD_KINDS, BlockShapeError, BlockwiseNet, ModelConfigError, build_model


def _tiny_modules(num_classes: int = 4) -> list[nn.Module]:
    return [
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.5)),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)),
    ]


@pytest.mark.parametrize("head", HEAD_KINDS)
@pytest.mark.parametrize(
    "name, in_channels, image_size",
    [("lenet5", 1, 32), ("resnet_cifar", 3, 16)],  # flat and spatial block outputs
)
def test_every_phase_gives_logits_with_every_head_kind(head, name, in_channels, image_size):
    model = build_model(name, num_classes=5, in_channels=in_channels, image_size=image_size, head=head)
    x = torch.randn(3, in_channels, image_size, image_size)
    assert len(model.heads) == model.num_blocks - 1
    for k in range(1, model.num_blocks + 1):
        assert model.phase_forward(model.features(x, k - 1), k).shape == (3, 5)
    assert isinstance(model.head(model.num_blocks), nn.Identity)


def test_conv_head_is_convolutional_on_maps_and_falls_back_to_mlp_on_vectors():
    model = build_model("lenet5", num_classes=10, head="conv")
    assert isinstance(model.head(1)[0], nn.Conv2d)  # block 1 outputs 6x14x14
    assert not any(isinstance(m, nn.Conv2d) for m in model.head(3).modules())  # block 3 outputs (120,)


def test_pooled_conv_head_pools_only_maps_larger_than_its_grid():
    model = build_model("lenet5", num_classes=10, head="pooled_conv")
    shrink = model.head(1)[0]  # block 1 outputs 6x14x14
    assert isinstance(shrink, nn.AdaptiveAvgPool2d) and shrink.output_size == (8, 8)
    assert isinstance(model.head(2)[0], nn.Conv2d)  # block 2 outputs 16x5x5: convolved as it is
    features = model.features(torch.randn(2, 1, 32, 32), 1)
    assert model.head(1)[1](shrink(features)).shape == (2, 128, 8, 8)


def test_conv2x2_head_keeps_a_2x2_grid_for_its_linear_layer():
    model = build_model("lenet5", num_classes=10, head="conv2x2")
    head = model.head(1)  # block 1 outputs 6x14x14
    assert sum(isinstance(m, nn.Conv2d) for m in head.modules()) == 2
    pools = [m for m in head.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert [pool.output_size for pool in pools] == [(2, 2)]
    assert head[-1].in_features == 128 * 4
    features = model.features(torch.randn(3, 1, 32, 32), 1)
    assert head(features).shape == (3, 10)
    assert not any(isinstance(m, nn.Conv2d) for m in model.head(3).modules())  # flat (120,): mlp


def test_mlp_sr_head_pools_to_a_quarter_side_then_convolves_1x1():
    model = build_model("alexnet", num_classes=10, head="mlp_sr", image_size=64, in_channels=1)
    for k in range(1, model.num_blocks):
        head = model.head(k)
        convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(conv.kernel_size == (1, 1) for conv in convs)
        assert head[0].output_size[0] <= 8 and head[-1].out_features == 10
    features = model.features(torch.randn(2, 1, 64, 64), 1)
    assert model.head(1)(features).shape == (2, 10)


def test_features_upto_zero_is_the_input_and_bad_indices_are_refused():
    model = BlockwiseNet.from_modules(_tiny_modules(), num_classes=4, input_shape=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    assert model.features(x, 0) is x
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="upto must be in 0..3"):
            model.features(x, bad)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="must be in 1..3"):
            model.phase_forward(x, bad)
        with pytest.raises(ValueError, match="must be in 1..3"):
            model.freeze_block(bad)


def test_frozen_block_has_no_gradients_and_stays_in_eval_mode():
    model = BlockwiseNet.from_modules(_tiny_modules(), num_classes=4, input_shape=(3, 8, 8))
    model.freeze_block(1)
    model.train()
    assert model.is_frozen(1) and not model.is_frozen(2)
    assert not model.blocks[0].training and all(not m.training for m in model.blocks[0].modules())
    assert model.blocks[1].training and model.heads[0].training
    assert all(not p.requires_grad for p in model.blocks[0].parameters())

    running_mean = model.blocks[0][1].running_mean.clone()
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert torch.equal(model.blocks[0][1].running_mean, running_mean)  # eval-mode batch norm
    assert all(p.grad is None for p in model.blocks[0].parameters())
    assert all(p.grad is not None for p in model.blocks[1].parameters())


def test_unfreeze_restores_training_and_freeze_blocks_freezes_a_prefix():
    model = BlockwiseNet.from_modules(_tiny_modules(), num_classes=4, input_shape=(3, 8, 8))
    model.freeze_blocks(2)
    assert [model.is_frozen(k) for k in (1, 2, 3)] == [True, True, False]
    model.unfreeze_block(1)
    assert model.blocks[0].training and all(p.requires_grad for p in model.blocks[0].parameters())
    model.eval()
    model.unfreeze_block(2)
    assert not model.blocks[1].training  # follows the model's mode
    model.train()
    assert model.blocks[1].training


def test_from_modules_infers_shapes_and_accepts_a_sequential():
    modules = _tiny_modules()
    model = BlockwiseNet.from_modules(
        nn.Sequential(*modules), num_classes=4, input_shape=(3, 8, 8), head="mlp"
    )
    assert model.name == "custom" and model.num_blocks == 3
    assert model.block_output_shapes == [(8, 4, 4), (16, 4, 4), (4,)]
    assert model.block_input_shape(1) == (3, 8, 8) and model.block_input_shape(3) == (16, 4, 4)
    assert model.blocks[0] is modules[0]


def test_from_modules_refuses_a_last_block_without_the_classifier():
    with pytest.raises(
        ModelConfigError, match=r"last block must end in the classifier.*\(4,\).*\(16, 4, 4\)"
    ):
        BlockwiseNet.from_modules(_tiny_modules()[:2], num_classes=4, input_shape=(3, 8, 8))


def test_from_modules_refuses_a_single_module_and_non_modules():
    with pytest.raises(ModelConfigError, match="list of modules"):
        BlockwiseNet.from_modules(nn.Linear(3, 4), num_classes=4, input_shape=(3, 1, 1))
    with pytest.raises(ModelConfigError, match="block 2 is a builtin_function_or_method, not an nn.Module"):
        BlockwiseNet.from_modules([nn.Flatten(), torch.relu], num_classes=3, input_shape=(3, 1, 1))
    with pytest.raises(ModelConfigError, match="at least one block"):
        BlockwiseNet.from_modules([], num_classes=3, input_shape=(3, 1, 1))


def test_from_modules_reports_which_block_does_not_fit():
    modules = [nn.Conv2d(3, 8, 5), nn.Sequential(nn.Conv2d(8, 8, 5), nn.Flatten(), nn.LazyLinear(2))]
    with pytest.raises(BlockShapeError, match=r"block 2 of custom: input of shape \(8, 2, 2\) does not fit"):
        BlockwiseNet.from_modules(modules, num_classes=2, input_shape=(3, 6, 6))


def test_blocks_without_meta_kernels_are_probed_with_a_real_forward():
    class HostOnly(nn.Module):
        """Leaves the tensor world (numpy), as some user code does: no meta kernel can follow it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(x.flatten(1).numpy()[:, :2].copy())

    model = BlockwiseNet.from_modules([nn.Conv2d(1, 1, 1), HostOnly()], num_classes=2, input_shape=(1, 2, 2))
    assert model.block_output_shapes == [(1, 2, 2), (2,)]
    assert model.blocks[1].training  # the probe ran in eval mode and put the mode back


def test_prediction_with_the_heads_is_the_log_of_their_mean_probabilities():
    torch.manual_seed(0)
    model = BlockwiseNet.from_modules(_tiny_modules(), 4, (3, 8, 8)).eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        network = model(x)
        probabilities = [torch.softmax(model.phase_forward(model.features(x, k - 1), k), dim=1)
                         for k in range(1, model.num_blocks + 1)]
        model.prediction = "heads"
        heads = model(x)
    torch.testing.assert_close(network, model.features(x, model.num_blocks))  # "network": the classifier alone
    torch.testing.assert_close(heads.exp(), sum(probabilities) / len(probabilities))
    assert not torch.allclose(heads.softmax(1), network.softmax(1))
    with pytest.raises(ModelConfigError, match="prediction must be one of network, heads; got 'mean'"):
        model.prediction = "mean"


def test_a_model_record_rebuilds_the_prediction_and_older_records_predict_with_the_network():
    from phasenets.train.checkpoint import ModelRecord

    fields = dict(name="lenet5", num_classes=3, in_channels=1, image_size=28, head="pooled_conv")
    assert ModelRecord(**fields, prediction="heads").build().prediction == "heads"
    assert ModelRecord(**fields).build().prediction == "network"  # a checkpoint written before the field
