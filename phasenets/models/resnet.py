"""ResNet-18 and ResNet-50 (He, Zhang, Ren and Sun, 2015) in torchvision's layout.

Blocks: stem (conv1 7x7/2 + bn1 + relu + maxpool) | layer1 | layer2 | layer3 | layer4 + global
average pool + fc. With 1000 classes at 224 px: 11,689,512 and 25,557,032 parameters. Bottlenecks
downsample in their 3x3 convolution (torchvision's "v1.5"); the count is the same either way.

Parameter names mirror torchvision's: a key of this model is ``blocks.<k>.`` followed by the
torchvision key (``blocks.0.conv1.weight``, ``blocks.2.layer2.0.downsample.1.bias``,
``blocks.4.fc.weight``), so a torchvision state dict maps over by adding that prefix.
Global average pooling makes every image size work.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from phasenets.models.blockwise import DEFAULT_HEAD, BlockwiseNet
from phasenets.models.registry import ModelConfig, register_model


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _projection(in_channels, width * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with an identity (or projection) shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, width * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


def _layer(unit: type[BasicBlock | Bottleneck], in_channels: int, width: int, count: int, stride: int):
    units = [unit(in_channels, width, stride)]
    units += [unit(width * unit.expansion, width) for _ in range(count - 1)]
    return nn.Sequential(*units)


@dataclass
class ResNetConfig(ModelConfig):
    image_size: int = 224


def _resnet(name: str, unit, counts: tuple[int, int, int, int], config: ResNetConfig, head: str):
    stem = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(config.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False),
            bn1=nn.BatchNorm2d(64),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    )
    layers, in_channels = [], 64
    for index, (width, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        stride = 1 if index == 1 else 2
        layers.append(
            nn.Sequential(OrderedDict({f"layer{index}": _layer(unit, in_channels, width, count, stride)}))
        )
        in_channels = width * unit.expansion
    layers[-1].add_module("avgpool", nn.AdaptiveAvgPool2d(1))
    layers[-1].add_module("flatten", nn.Flatten())
    layers[-1].add_module("fc", nn.Linear(in_channels, config.num_classes))
    model = BlockwiseNet([stem, *layers], config.num_classes, config.input_shape, head, name, config)
    _initialize(model)
    return model


def _initialize(model: nn.Module) -> None:
    # He initialization for ReLU networks, as in the paper (and torchvision).
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


@register_model("resnet18", ResNetConfig)
def resnet18(config: ResNetConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    return _resnet("resnet18", BasicBlock, (2, 2, 2, 2), config, head)


@register_model("resnet50", ResNetConfig)
def resnet50(config: ResNetConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    return _resnet("resnet50", Bottleneck, (3, 4, 6, 3), config, head)
