"""Inception-v4 (Szegedy, Ioffe, Vanhoucke and Alemi, 2016; figures 3 to 9 of the paper).

Blocks: stem | 4 x Inception-A + Reduction-A | 7 x Inception-B + Reduction-B | 3 x Inception-C |
average pool + dropout (keep 0.8) + fc. Map sizes at 299 px: 35, 17, 8.

Every convolution is conv (no bias) + batch norm (affine, eps 1e-3) + ReLU, the usual convention
of the TF-slim and Keras ports: 42,679,816 parameters at 299 px with 1000 classes (the paper's
figure is 42.68M). Unpadded ("V" in the paper's figures) convolutions and poolings follow the
paper, so images must be at least 75 px; the final pooling is global, so any larger size works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from phasenets.models.blockwise import DEFAULT_HEAD, BlockwiseNet, ModelConfigError
from phasenets.models.registry import ModelConfig, register_model


class ConvBN(nn.Sequential):
    """Convolution without bias, batch norm, ReLU; ``padding="same"`` keeps the map size (stride 1)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size, stride: int = 1, padding="same"
    ) -> None:
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if padding == "same":
            padding = (kernel[0] // 2, kernel[1] // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3),
            nn.ReLU(inplace=True),
        )


class Branches(nn.Module):
    """Parallel branches whose outputs are concatenated along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def _valid(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> ConvBN:
    return ConvBN(in_channels, out_channels, kernel_size, stride=stride, padding=0)


def _avg_pool_then(conv: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), conv)


def stem(in_channels: int) -> nn.Sequential:
    """Figure 3: 299x299x3 -> 35x35x384."""
    return nn.Sequential(
        _valid(in_channels, 32, 3, stride=2),
        _valid(32, 32, 3),
        ConvBN(32, 64, 3),
        Branches(nn.MaxPool2d(3, stride=2), _valid(64, 96, 3, stride=2)),
        Branches(
            nn.Sequential(ConvBN(160, 64, 1), _valid(64, 96, 3)),
            nn.Sequential(
                ConvBN(160, 64, 1), ConvBN(64, 64, (7, 1)), ConvBN(64, 64, (1, 7)), _valid(64, 96, 3)
            ),
        ),
        Branches(_valid(192, 192, 3, stride=2), nn.MaxPool2d(3, stride=2)),
    )


def inception_a() -> Branches:
    """Figure 4: 35x35x384 -> 35x35x384."""
    return Branches(
        _avg_pool_then(ConvBN(384, 96, 1)),
        ConvBN(384, 96, 1),
        nn.Sequential(ConvBN(384, 64, 1), ConvBN(64, 96, 3)),
        nn.Sequential(ConvBN(384, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3)),
    )


def reduction_a(k: int = 192, l: int = 224, m: int = 256, n: int = 384) -> Branches:  # noqa: E741
    """Figure 7 with Inception-v4's k, l, m, n (table 1): 35x35x384 -> 17x17x1024."""
    return Branches(
        nn.MaxPool2d(3, stride=2),
        _valid(384, n, 3, stride=2),
        nn.Sequential(ConvBN(384, k, 1), ConvBN(k, l, 3), _valid(l, m, 3, stride=2)),
    )


def inception_b() -> Branches:
    """Figure 5: 17x17x1024 -> 17x17x1024."""
    return Branches(
        _avg_pool_then(ConvBN(1024, 128, 1)),
        ConvBN(1024, 384, 1),
        nn.Sequential(ConvBN(1024, 192, 1), ConvBN(192, 224, (1, 7)), ConvBN(224, 256, (7, 1))),
        nn.Sequential(
            ConvBN(1024, 192, 1),
            ConvBN(192, 192, (1, 7)),
            ConvBN(192, 224, (7, 1)),
            ConvBN(224, 224, (1, 7)),
            ConvBN(224, 256, (7, 1)),
        ),
    )


def reduction_b() -> Branches:
    """Figure 8: 17x17x1024 -> 8x8x1536."""
    return Branches(
        nn.MaxPool2d(3, stride=2),
        nn.Sequential(ConvBN(1024, 192, 1), _valid(192, 192, 3, stride=2)),
        nn.Sequential(
            ConvBN(1024, 256, 1),
            ConvBN(256, 256, (1, 7)),
            ConvBN(256, 320, (7, 1)),
            _valid(320, 320, 3, stride=2),
        ),
    )


def inception_c() -> Branches:
    """Figure 6: 8x8x1536 -> 8x8x1536; two branches end in a 1x3 / 3x1 fork."""
    return Branches(
        _avg_pool_then(ConvBN(1536, 256, 1)),
        ConvBN(1536, 256, 1),
        nn.Sequential(ConvBN(1536, 384, 1), Branches(ConvBN(384, 256, (1, 3)), ConvBN(384, 256, (3, 1)))),
        nn.Sequential(
            ConvBN(1536, 384, 1),
            ConvBN(384, 448, (3, 1)),
            ConvBN(448, 512, (1, 3)),
            Branches(ConvBN(512, 256, (1, 3)), ConvBN(512, 256, (3, 1))),
        ),
    )


@dataclass
class InceptionV4Config(ModelConfig):
    image_size: int = 299
    dropout: float = 0.2  # the paper keeps 0.8 of the activations before the classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"inception_v4 dropout must be in [0, 1); got {self.dropout!r}")


@register_model("inception_v4", InceptionV4Config)
def inception_v4(config: InceptionV4Config, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    blocks = [
        stem(config.in_channels),
        nn.Sequential(*[inception_a() for _ in range(4)], reduction_a()),
        nn.Sequential(*[inception_b() for _ in range(7)], reduction_b()),
        nn.Sequential(*[inception_c() for _ in range(3)]),
        nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(1536, config.num_classes),
        ),
    ]
    return BlockwiseNet(blocks, config.num_classes, config.input_shape, head, "inception_v4", config)
