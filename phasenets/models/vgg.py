"""VGG-11 and VGG-16 (Simonyan and Zisserman, 2014; configurations A and D).

Blocks: the five conv stages (3x3 convolutions, each stage closed by 2x2 max pooling); the
classifier (FC 4096-4096 with dropout, then the class layer) closes the fifth.

Image size: the classifier reads a map of at most 7x7. At 224 px the fifth stage gives exactly
7x7 (VGG-16 then has 138,357,544 parameters with 1000 classes, as torchvision's); larger maps are
average-pooled down to 7x7, and smaller ones (1x1 at 32 px, 2x2 at 64 px) are used as they are,
so small images get a proportionally small first FC layer instead of a replicated 7x7 map.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from phasenets.models.blockwise import DEFAULT_HEAD, BlockwiseNet, ModelConfigError, infer_output_shape
from phasenets.models.registry import ModelConfig, register_model

# Output channels of the 3x3 convolutions of each of the five stages.
VGG11_STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_CLASSIFIER_MAP_SIDE = 7


@dataclass
class VGGConfig(ModelConfig):
    batch_norm: bool = False  # batch normalization after every convolution (the "_bn" variants)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"vgg dropout must be in [0, 1); got {self.dropout!r}")


def _stage(in_channels: int, widths: tuple[int, ...], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def _vgg(name: str, stages: tuple[tuple[int, ...], ...], config: VGGConfig, head: str) -> BlockwiseNet:
    blocks, in_channels = [], config.in_channels
    for widths in stages:
        blocks.append(_stage(in_channels, widths, config.batch_norm))
        in_channels = widths[-1]

    channels, height, width = infer_output_shape(nn.Sequential(*blocks), config.input_shape)
    pooled = (min(height, _CLASSIFIER_MAP_SIDE), min(width, _CLASSIFIER_MAP_SIDE))
    classifier = nn.Sequential(
        nn.AdaptiveAvgPool2d(pooled),
        nn.Flatten(),
        nn.Linear(channels * pooled[0] * pooled[1], 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
        nn.Linear(4096, config.num_classes),
    )
    blocks[-1] = nn.Sequential(*blocks[-1], *classifier)
    return BlockwiseNet(blocks, config.num_classes, config.input_shape, head, name, config)


@register_model("vgg11", VGGConfig)
def vgg11(config: VGGConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    return _vgg("vgg11", VGG11_STAGES, config, head)


@register_model("vgg16", VGGConfig)
def vgg16(config: VGGConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    return _vgg("vgg16", VGG16_STAGES, config, head)
