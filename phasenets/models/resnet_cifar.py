"""ResNet for CIFAR (He et al. 2015, section 4.2; v2: He et al. 2016), as in seed 001's Keras example.

Version 1, depth 6n+2: a 3x3 conv (16) + BN + ReLU stem, then three stages of n basic units with
16, 32 and 64 channels (conv-BN-ReLU, conv-BN, add, ReLU); a stage that halves the map uses a
strided first conv and a 1x1 strided convolution (no BN) on the shortcut.

Version 2, depth 9n+2: the same stem, then three stages of n pre-activation bottleneck units
(BN-ReLU-conv 1x1, BN-ReLU-conv 3x3, BN-ReLU-conv 1x1) with output widths 64, 128 and 256; the first
unit of each stage has a 1x1 projection shortcut (strided in stages 2 and 3), and the very first
unit skips its leading BN-ReLU because the stem just applied one. A final BN-ReLU precedes pooling.

Blocks: stem | stage 1 | stage 2 | stage 3 | (BN-ReLU for v2) + global average pool + fc.
Convolutions keep their biases, like the seed's Keras layers. The seed averages over an 8x8 window
(the whole 32 px map); global average pooling is the same there and works at any size.
Counts with 10 classes at 32 px: v1 depth 20 has 273,066 parameters; v2 depth 56 has 1,663,338.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from phasenets.models.blockwise import DEFAULT_HEAD, BlockwiseNet, ModelConfigError
from phasenets.models.registry import ModelConfig, register_model

_DEPTH_RULE = {1: (6, "6n+2", (20, 32, 44, 56, 110)), 2: (9, "9n+2", (29, 56, 110, 164))}


@dataclass
class ResNetCifarConfig(ModelConfig):
    image_size: int = 32
    version: int = 1  # 1: basic units (depth 6n+2); 2: pre-activation bottlenecks (depth 9n+2)
    depth: int | None = None  # None: n = 3 as in the seed (depth 20 for v1, 29 for v2)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version not in _DEPTH_RULE:
            raise ModelConfigError(f"resnet_cifar version must be 1 or 2; got {self.version!r}")
        layers_per_unit, rule, examples = _DEPTH_RULE[self.version]
        if self.depth is None:
            self.depth = 3 * layers_per_unit + 2
        if (
            not isinstance(self.depth, int)
            or self.depth < layers_per_unit + 2
            or (self.depth - 2) % layers_per_unit
        ):
            raise ModelConfigError(
                f"resnet_cifar version {self.version} needs depth = {rule} with n >= 1 "
                f"(e.g. {', '.join(map(str, examples))}); got {self.depth!r}"
            )

    @property
    def units_per_stage(self) -> int:
        return (self.depth - 2) // _DEPTH_RULE[self.version][0]


class BasicUnit(nn.Module):
    """Version 1 residual unit: conv-BN-ReLU, conv-BN, add the shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        projects = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if projects else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PreActBottleneck(nn.Module):
    """Version 2 residual unit: (BN-ReLU-conv) 1x1, 3x3, 1x1, added to the shortcut."""

    def __init__(
        self, in_channels: int, width: int, out_channels: int, stride: int, preactivate: bool
    ) -> None:
        super().__init__()
        # The first unit after the stem skips its BN-ReLU: the stem ends with one.
        self.preact = (
            nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
            if preactivate
            else nn.Identity()
        )
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        projects = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if projects else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.preact(x))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + self.shortcut(x)


def _v1_stages(units: int) -> tuple[list[nn.Sequential], int]:
    stages, in_channels = [], 16
    for index, channels in enumerate((16, 32, 64)):
        stride = 1 if index == 0 else 2
        stage = [BasicUnit(in_channels, channels, stride)]
        stage += [BasicUnit(channels, channels, 1) for _ in range(units - 1)]
        stages.append(nn.Sequential(*stage))
        in_channels = channels
    return stages, in_channels


def _v2_stages(units: int) -> tuple[list[nn.Sequential], int]:
    stages, in_channels = [], 16
    for index in range(3):
        width, out_channels = (16, 64) if index == 0 else (in_channels, in_channels * 2)
        stride = 1 if index == 0 else 2
        stage = [PreActBottleneck(in_channels, width, out_channels, stride, preactivate=index > 0)]
        stage += [PreActBottleneck(out_channels, width, out_channels, 1, True) for _ in range(units - 1)]
        stages.append(nn.Sequential(*stage))
        in_channels = out_channels
    return stages, in_channels


@register_model("resnet_cifar", ResNetCifarConfig)
def resnet_cifar(config: ResNetCifarConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    stem = nn.Sequential(
        nn.Conv2d(config.in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
    )
    make_stages = _v1_stages if config.version == 1 else _v2_stages
    stages, channels = make_stages(config.units_per_stage)
    final_activation = [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)] if config.version == 2 else []
    classifier = nn.Sequential(
        *final_activation, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, config.num_classes)
    )
    model = BlockwiseNet(
        [stem, *stages, classifier], config.num_classes, config.input_shape, head, "resnet_cifar", config
    )
    for module in model.modules():  # the seed's he_normal initialization
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model
