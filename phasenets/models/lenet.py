"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998), as in seed 001.

Blocks: C1+S2 | C3+S4 | C5 | F6 | output. At 32x32x1 with 10 classes: 61,706 parameters
(C1 156, C3 2,416, C5 48,120, F6 10,164, output 850).

Choices, all as in the seed's Keras code rather than the 1998 paper:
- ReLU activations and max pooling by default (``activation="tanh"`` switches to the paper's
  squashing non-linearity with average pooling, its parameter-free subsampling);
- C3 connects to all six S2 maps (2,416 parameters, not the paper's sparse 1,516);
- C5 is a fully connected layer over the flattened S4 maps: at 32 px S4 is 5x5, so this is exactly
  the paper's 5x5 convolution, and it lets other sizes (28 px MNIST) work;
- the output layer is a Linear layer, not the paper's radial basis functions.

``downsample="invertible"`` replaces both subsampling layers by a 2x2 space-to-depth step
(``nn.PixelUnshuffle``: each 2x2 patch of a map becomes four maps of half the side), the invertible
downsampling Belilovsky, Eickenberg and Oyallon (2019) use between greedily trained blocks: a block
passes on everything it computed, where pooling discards three values in four before the next
block (or the head) ever sees them. C3 and C5 then take four times the inputs (C3 2,416 -> 9,616
parameters, C5 at 28 px 30,840 -> 123,000).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from phasenets.models.blockwise import DEFAULT_HEAD, BlockwiseNet, ModelConfigError, infer_output_shape
from phasenets.models.registry import ModelConfig, register_model

_ACTIVATIONS = {"relu": (nn.ReLU, nn.MaxPool2d), "tanh": (nn.Tanh, nn.AvgPool2d)}
DOWNSAMPLING = ("pool", "invertible")


@dataclass
class LeNet5Config(ModelConfig):
    in_channels: int = 1
    image_size: int = 32
    activation: str = "relu"  # "relu" (seed 001's code) or "tanh" (the 1998 paper)
    downsample: str = "pool"  # "pool" (the activation's pooling) or "invertible" (2x2 space-to-depth)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation not in _ACTIVATIONS:
            raise ModelConfigError(
                f"lenet5 activation must be one of {', '.join(_ACTIVATIONS)}; got {self.activation!r}"
            )
        if self.downsample not in DOWNSAMPLING:
            raise ModelConfigError(
                f"lenet5 downsample must be one of {', '.join(DOWNSAMPLING)}; got {self.downsample!r}"
            )


@register_model("lenet5", LeNet5Config)
def lenet5(config: LeNet5Config, head: str = DEFAULT_HEAD) -> BlockwiseNet:
    Activation, Pool = _ACTIVATIONS[config.activation]
    invertible = config.downsample == "invertible"
    subsample, widen = (nn.PixelUnshuffle, 4) if invertible else (Pool, 1)
    c1_s2 = nn.Sequential(nn.Conv2d(config.in_channels, 6, 5), Activation(), subsample(2))
    c3_s4 = nn.Sequential(nn.Conv2d(6 * widen, 16, 5), Activation(), subsample(2))
    s4_shape = infer_output_shape(nn.Sequential(c1_s2, c3_s4), config.input_shape)
    s4_features = s4_shape[0] * s4_shape[1] * s4_shape[2]
    c5 = nn.Sequential(nn.Flatten(), nn.Linear(s4_features, 120), Activation())
    f6 = nn.Sequential(nn.Linear(120, 84), Activation())
    output = nn.Linear(84, config.num_classes)
    return BlockwiseNet(
        [c1_s2, c3_s4, c5, f6, output], config.num_classes, config.input_shape, head, "lenet5", config
    )
