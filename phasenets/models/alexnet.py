"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), torchvision's narrower AlexNet, and seed 001's
batch-normalized Keras variant.

``alexnet`` is the 2012 network on a single tower: convolutions 96-256-384-384-256 with kernels
11/5/3/3/3 (conv1 stride 4, no padding), ReLU, local response normalization after conv1 and conv2,
3x3 stride-2 max pooling, then FC 4096-4096 with dropout and the classifier. With biases everywhere
it has 62,378,344 parameters at 227x227x3 with 1000 classes.

Blocks: conv1+pool | conv2+pool | conv3 | conv4 | conv5+pool+classifier. Each phase thus adds one
learned convolution on top of the frozen ones, as in the phase-wise training paper; the fully
connected layers go with the last block because they only make sense on top of the full feature
stack (and hold 94% of the weights: the cache of conv4's output is what makes phase 5 cheap).

Small images: pooling uses ceil mode, which leaves 227 and 224 px unchanged but keeps a 1x1 map
alive instead of failing, and the first FC layer's width is inferred from the actual conv5 map
(256 x 6 x 6 at 227 px, 256 x 1 x 1 at 64 px).

``alexnet_tv`` is torchvision's ``alexnet``, the network its ImageNet weights were trained as:
convolutions 64-192-384-256-256 (Krizhevsky's 2014 "one weird trick" widths), no response
normalization, same blocks as ``alexnet``. Those weights do not fit ``alexnet``'s 2012 widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from phasenets.models.blockwise import DEFAULT_HEAD, BlockwiseNet, ModelConfigError, infer_output_shape
from phasenets.models.registry import ModelConfig, register_model


def _check_dropout(name: str, dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ModelConfigError(f"{name} dropout must be in [0, 1); got {dropout!r}")


@dataclass
class AlexNetConfig(ModelConfig):
    image_size: int = 227
    local_response_norm: bool = True  # the 2012 paper's "response normalization" after conv1, conv2
    dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dropout("alexnet", self.dropout)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


def _fully_connected(in_features: int, num_classes: int, dropout: float) -> list[nn.Module]:
    """FC 4096-4096, each after dropout, then the classifier: the 2012 paper's, and torchvision's too."""
    return [
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(in_features, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    ]


def _response_norm(enabled: bool) -> list[nn.Module]:
    # The paper's constants: n=5, alpha=1e-4, beta=0.75, k=2.
    return [nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)] if enabled else []


@register_model("alexnet", AlexNetConfig)
def alexnet(config: AlexNetConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    lrn = config.local_response_norm
    conv1 = nn.Sequential(
        nn.Conv2d(config.in_channels, 96, kernel_size=11, stride=4),
        nn.ReLU(inplace=True),
        *_response_norm(lrn),
        _pool(),
    )
    conv2 = nn.Sequential(
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(inplace=True), *_response_norm(lrn), _pool()
    )
    conv3 = nn.Sequential(nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True))
    conv4 = nn.Sequential(nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True))
    conv5 = [nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), _pool()]

    conv5_shape = infer_output_shape(nn.Sequential(conv1, conv2, conv3, conv4, *conv5), config.input_shape)
    flat = conv5_shape[0] * conv5_shape[1] * conv5_shape[2]
    classifier = _fully_connected(flat, config.num_classes, config.dropout)
    blocks = [conv1, conv2, conv3, conv4, nn.Sequential(*conv5, *classifier)]
    return BlockwiseNet(blocks, config.num_classes, config.input_shape, head, "alexnet", config)


@dataclass
class TorchvisionAlexNetConfig(ModelConfig):
    image_size: int = 224
    dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dropout("alexnet_tv", self.dropout)


@register_model("alexnet_tv", TorchvisionAlexNetConfig)
def alexnet_tv(config: TorchvisionAlexNetConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    """torchvision's AlexNet layer for layer, so that its state dicts load into every layer.

    Poolings keep torchvision's floor mode and the classifier reads the conv5 map average-pooled
    to 6x6 (a smaller map is spread over the 6x6 grid), as torchvision's does: the first fully
    connected layer is then 9216 wide at every image size and computes what torchvision's computes.
    """
    conv1 = nn.Sequential(
        nn.Conv2d(config.in_channels, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    conv2 = nn.Sequential(
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2)
    )
    conv3 = nn.Sequential(nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True))
    conv4 = nn.Sequential(nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True))
    conv5 = [
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2)
    ]
    classifier = [nn.AdaptiveAvgPool2d((6, 6)), *_fully_connected(256 * 6 * 6, config.num_classes, config.dropout)]
    blocks = [conv1, conv2, conv3, conv4, nn.Sequential(*conv5, *classifier)]
    return BlockwiseNet(blocks, config.num_classes, config.input_shape, head, "alexnet_tv", config)


@dataclass
class AlexNetBNConfig(ModelConfig):
    dropout: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dropout("alexnet_bn", self.dropout)


def _conv_relu_pool_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, pool: bool = True
) -> list[nn.Module]:
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers + [nn.BatchNorm2d(out_channels)]


def _dense_relu_dropout_bn(in_features: int, out_features: int, dropout: float) -> list[nn.Module]:
    return [
        nn.Linear(in_features, out_features),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.BatchNorm1d(out_features),
    ]


@register_model("alexnet_bn", AlexNetBNConfig)
def alexnet_bn(config: AlexNetBNConfig, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    """Seed 001's Keras AlexNet with batch normalization, layer for layer.

    Every convolution is unpadded ("valid") and followed by ReLU, 2x2 max pooling (conv1, conv2,
    conv5) and batch normalization; then FC 4096-4096-1000, each with ReLU, dropout 0.4 and batch
    normalization, and the classifier. Kept as the seed wrote it, so it needs large inputs: the
    registry reports the minimum image size (215 px) when asked for less.
    Blocks: conv1 | conv2 | conv3 | conv4 | conv5 + the dense layers.
    """
    conv1 = nn.Sequential(*_conv_relu_pool_bn(config.in_channels, 96, kernel_size=11, stride=4))
    conv2 = nn.Sequential(*_conv_relu_pool_bn(96, 256, kernel_size=11))
    conv3 = nn.Sequential(*_conv_relu_pool_bn(256, 384, kernel_size=3, pool=False))
    conv4 = nn.Sequential(*_conv_relu_pool_bn(384, 384, kernel_size=3, pool=False))
    conv5 = _conv_relu_pool_bn(384, 256, kernel_size=3)

    conv5_shape = infer_output_shape(nn.Sequential(conv1, conv2, conv3, conv4, *conv5), config.input_shape)
    flat = conv5_shape[0] * conv5_shape[1] * conv5_shape[2]
    dense = [
        nn.Flatten(),
        *_dense_relu_dropout_bn(flat, 4096, config.dropout),
        *_dense_relu_dropout_bn(4096, 4096, config.dropout),
        *_dense_relu_dropout_bn(4096, 1000, config.dropout),
        nn.Linear(1000, config.num_classes),
    ]
    blocks = [conv1, conv2, conv3, conv4, nn.Sequential(*conv5, *dense)]
    return BlockwiseNet(blocks, config.num_classes, config.input_shape, head, "alexnet_bn", config)
