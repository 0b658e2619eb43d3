"""ShatheNet: seed 004's small custom CNN family, grown from ShatheNet v1.0.

v1.0 (17K parameters, 59% on CIFAR-10 upsampled to 299 px) is three "same"-padded convolutions
with large strides -- 16 7x7/6, 16 5x5/4, 32 3x3/2 -- then 2x2 max pooling, a 32-unit dense layer
and the classifier. The variants try the seed's "things yet to be tried":

- ``plain``: v1.0 itself (ReLU, biases, flatten). The pooling uses ceil mode so that the 1x1 map
  of a 32 px image survives; the dense layer's width follows the map (14,810 parameters at 32 px
  with 10 classes, 17,882 at 128 px).
- ``bn_gap``: batch normalization after every convolution (which then needs no bias) and global
  average pooling instead of pool + flatten, so the size of the network no longer depends on the
  image size.
- ``residual``: ``bn_gap`` with a residual unit (two 3x3 conv-BN with an identity shortcut) after
  each strided convolution.

Blocks (all variants): conv1 | conv2 | conv3 + pooling | dense | classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from phasenets.models.blockwise import DEFAULT_HEAD, BlockwiseNet, ModelConfigError, infer_output_shape
from phasenets.models.registry import ModelConfig, register_model

VARIANTS = ("plain", "bn_gap", "residual")
# (output channels, kernel size, stride) of v1.0's three convolutions.
CONVOLUTIONS = ((16, 7, 6), (16, 5, 4), (32, 3, 2))


@dataclass
class ShatheNetConfig(ModelConfig):
    image_size: int = 32
    variant: str = "plain"  # plain | bn_gap | residual
    hidden: int = 32  # units of the dense layer (v1.0: 32)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ModelConfigError(
                f"shathenet variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}"
            )
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ModelConfigError(f"shathenet hidden must be a positive integer; got {self.hidden!r}")


class ResidualUnit(nn.Module):
    """Two 3x3 conv-BN layers added to the input, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(out)))


def _conv_stage(
    in_channels: int, out_channels: int, kernel: int, stride: int, variant: str
) -> list[nn.Module]:
    # padding kernel // 2 with stride s gives ceil(size / s): Keras' "same" padding.
    if variant == "plain":
        return [
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2),
            nn.ReLU(inplace=True),
        ]
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if variant == "residual":
        layers.append(ResidualUnit(out_channels))
    return layers


@register_model("shathenet", ShatheNetConfig)
def shathenet(config: ShatheNetConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    convs, in_channels = [], config.in_channels
    for out_channels, kernel, stride in CONVOLUTIONS:
        convs.append(nn.Sequential(*_conv_stage(in_channels, out_channels, kernel, stride, config.variant)))
        in_channels = out_channels

    if config.variant == "plain":
        convs[-1].extend([nn.MaxPool2d(2, ceil_mode=True), nn.Flatten()])
        features = infer_output_shape(nn.Sequential(*convs), config.input_shape)[0]
    else:
        convs[-1].extend([nn.AdaptiveAvgPool2d(1), nn.Flatten()])
        features = in_channels
    dense = nn.Sequential(nn.Linear(features, config.hidden), nn.ReLU(inplace=True))
    classifier = nn.Linear(config.hidden, config.num_classes)
    return BlockwiseNet(
        [*convs, dense, classifier], config.num_classes, config.input_shape, head, "shathenet", config
    )
