"""The model zoo: exact parameter counts, forward shapes at small sizes, size and option errors."""

from __future__ import annotations

import pytest
import torch

from phasenets.models import BlockwiseNet, ModelConfigError, build_model, list_models, model_options
from phasenets.models.summary import summarize

# (name, options, num_classes, in_channels, image_size, parameters of the network without aux heads)
PARAMETER_COUNTS = [
    ("lenet5", {}, 10, 1, 32, 61_706),
    ("alexnet", {}, 1000, 3, 227, 62_378_344),
    ("alexnet_tv", {}, 1000, 3, 224, 61_100_840),  # torchvision's alexnet
    ("vgg16", {}, 1000, 3, 224, 138_357_544),
    ("resnet18", {}, 1000, 3, 224, 11_689_512),
    ("resnet50", {}, 1000, 3, 224, 25_557_032),
    ("resnet_cifar", {"version": 1, "depth": 20}, 10, 3, 32, 273_066),
    ("resnet_cifar", {"version": 2, "depth": 56}, 10, 3, 32, 1_663_338),
    ("shathenet", {"variant": "plain"}, 10, 3, 32, 14_810),
]


def _network_params(model: BlockwiseNet) -> int:
    return sum(parameter.numel() for parameter in model.blocks.parameters())


@pytest.mark.parametrize("name, options, num_classes, in_channels, image_size, expected", PARAMETER_COUNTS)
def test_parameter_count_is_exact(name, options, num_classes, in_channels, image_size, expected):
    with torch.device("meta"):  # counts need no real weights
        model = build_model(name, num_classes, in_channels, image_size, **options)
    assert _network_params(model) == expected
    assert summarize(model)["totals"]["params"] == expected


def test_inception_v4_parameter_count_is_within_half_a_percent_of_the_paper():
    with torch.device("meta"):
        model = build_model("inception_v4", 1000, 3, 299)
    assert abs(_network_params(model) - 42_680_000) / 42_680_000 < 0.005
    assert _network_params(model) == 42_679_816  # conv without bias + affine batch norm


def test_lenet5_parameters_per_layer():
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=32)
    per_block = [sum(p.numel() for p in block.parameters()) for block in model.blocks]
    assert per_block == [156, 2_416, 48_120, 10_164, 850]  # C1, C3, C5, F6, output


def test_lenet5_invertible_downsampling_keeps_every_value_and_widens_the_next_layers():
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=28, downsample="invertible")
    assert model.block_output_shapes[:2] == [(24, 12, 12), (64, 4, 4)]  # 4x the maps at the pooled side
    per_block = [sum(p.numel() for p in block.parameters()) for block in model.blocks]
    assert per_block == [156, 9_616, 123_000, 10_164, 850]
    images = torch.randn(2, 1, 28, 28)
    conv_output = model.blocks[0][1](model.blocks[0][0](images))  # C1 and its ReLU, before subsampling
    unshuffled = model.blocks[0](images)
    assert torch.equal(torch.nn.functional.pixel_shuffle(unshuffled, 2), conv_output)  # nothing is lost
    with pytest.raises(ModelConfigError, match="downsample must be one of pool, invertible"):
        build_model("lenet5", 10, downsample="stride")


def test_alexnet_block_split_and_shapes_at_227():
    with torch.device("meta"):
        model = build_model("alexnet", 1000, 3, 227)
    assert model.block_output_shapes == [(96, 27, 27), (256, 13, 13), (384, 13, 13), (384, 13, 13), (1000,)]


# (name, options, in_channels, image_size): small sizes, both channel counts, every architecture.
FORWARD_CASES = [
    ("lenet5", {}, 1, 32),
    ("lenet5", {}, 1, 28),
    ("lenet5", {"activation": "tanh"}, 3, 36),
    ("lenet5", {"downsample": "invertible"}, 3, 32),
    ("alexnet", {}, 3, 64),
    ("alexnet", {"local_response_norm": False}, 1, 80),
    ("alexnet_tv", {}, 3, 63),  # its minimum size
    ("alexnet_tv", {}, 1, 100),
    ("alexnet_bn", {}, 3, 215),  # its minimum size: the one large forward of the suite
    ("vgg11", {}, 3, 32),
    ("vgg11", {"batch_norm": True}, 1, 64),
    ("vgg16", {}, 3, 32),
    ("inception_v4", {}, 3, 75),
    ("resnet18", {}, 3, 32),
    ("resnet18", {}, 1, 40),
    ("resnet50", {}, 3, 32),
    ("resnet_cifar", {"version": 1}, 3, 32),
    ("resnet_cifar", {"version": 2}, 1, 28),
    ("shathenet", {"variant": "plain"}, 3, 32),
    ("shathenet", {"variant": "bn_gap"}, 1, 64),
    ("shathenet", {"variant": "residual"}, 3, 48),
]


@pytest.mark.parametrize("name, options, in_channels, image_size", FORWARD_CASES)
def test_blocks_compose_to_the_whole_network(name, options, in_channels, image_size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, in_channels=in_channels, image_size=image_size, **options).eval()
    x = torch.randn(2, in_channels, image_size, image_size)
    with torch.no_grad():
        logits = model(x)
        h = x
        for k, block in enumerate(model.blocks, start=1):
            assert tuple(h.shape[1:]) == model.block_input_shape(k)
            h = block(h)
            assert tuple(h.shape[1:]) == model.block_output_shapes[k - 1]
        last = model.num_blocks
        phased = model.phase_forward(model.features(x, last - 1), last)
    assert logits.shape == (2, 3)
    assert torch.equal(h, logits)
    assert torch.equal(phased, logits)


def test_every_registered_model_is_covered_by_the_forward_cases():
    assert {case[0] for case in FORWARD_CASES} == set(list_models())


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ModelConfigError, match="unknown model 'alexnet2'.*valid models: alexnet, alexnet_bn"):
        build_model("alexnet2", 10)


def test_unknown_option_lists_the_valid_options():
    with pytest.raises(ModelConfigError, match="unknown option.*depht.*valid options: depth, version"):
        build_model("resnet_cifar", 10, depht=20)


@pytest.mark.parametrize(
    "name, too_small, minimum",
    [("inception_v4", 74, 75), ("alexnet_bn", 214, 215), ("alexnet_tv", 62, 63), ("vgg16", 31, 32),
     ("lenet5", 15, 16)],
)
def test_too_small_image_names_the_minimum(name, too_small, minimum):
    with pytest.raises(
        ModelConfigError, match=f"{name} needs image_size >= {minimum}.*got image_size={too_small}"
    ):
        build_model(name, 10, image_size=too_small)
    if name != "inception_v4":  # its minimum is built for real in the forward cases
        with torch.device("meta"):
            build_model(name, 10, image_size=minimum)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_channels": 2}, "in_channels must be 1 or 3"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"head": "attention"}, "unknown head kind 'attention'; valid kinds: linear, mlp, conv"),
        ({"version": 1, "depth": 21}, r"depth = 6n\+2"),
        ({"version": 2, "depth": 30}, r"depth = 9n\+2"),
        ({"version": 3}, "version must be 1 or 2"),
    ],
)
def test_invalid_configuration_is_explained(kwargs, message):
    arguments = {"num_classes": 10, **kwargs}
    with pytest.raises(ModelConfigError, match=message):
        build_model("resnet_cifar", **arguments)


def test_defaults_are_the_papers_sizes_and_options_are_listed():
    lenet = build_model("lenet5", 10)
    assert lenet.input_shape == (1, 32, 32)
    assert model_options("resnet_cifar") == {"in_channels": 3, "image_size": 32, "version": 1, "depth": None}
    assert build_model("resnet_cifar", 10, version=2).config.depth == 29
