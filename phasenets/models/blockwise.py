"""`BlockwiseNet`: a CNN split into blocks, trained one block (phase) at a time.

Phase ``k`` (numbered from 1) trains ``blocks[k-1]`` on top of the frozen blocks before it, with an
auxiliary classifier ``heads[k-1]`` on its output; the last block ends in the network's own
classifier, so the last phase needs no auxiliary head. Shapes are inferred once, at construction,
with meta tensors: no real computation and no memory for activations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from phasenets.errors import UserError

# the auxiliary head kinds `build_aux_head` makes (config.py offers these as --head's choices)
HEAD_KINDS = ("linear", "mlp", "conv", "pooled_conv", "conv2x2", "mlp_sr")
# The head phasenets uses unless told otherwise (TrainConfig.head, build_model). `pooled_conv` is
# the `conv` head (conv3x3+BN+ReLU, global pool, linear) on maps average-pooled to at most 8x8, so
# its cost does not grow with the block's resolution: on maps of 8x8 or less the two are the same
# head, and on larger ones the study measured the same accuracy within the seeds' spread at a
# fraction of the time (benchmarks/ACCURACY.md, "The default head"). A linear head over a first
# block's few maps cannot separate ten classes.
DEFAULT_HEAD = "pooled_conv"
MLP_HEAD_HIDDEN = 256  # hidden width of the `mlp` head
CONV_HEAD_CHANNELS = 128  # channels of the `conv` head's 3x3 convolution
POOLED_HEAD_GRID = 8  # `pooled_conv`: feature maps larger than this are average-pooled down to it
# conv2x2 (Belilovsky, Eickenberg and Oyallon 2019, "Greedy layerwise learning can scale to
# ImageNet"): their auxiliary problem keeps a coarse 2x2 layout of the maps for the linear layer,
# which a global pool (1x1) throws away; two conv3x3+BN+ReLU layers is their k=2 head.
SPATIAL_HEAD_GRID = 2
SPATIAL_HEAD_CONVS = 2
# mlp_sr (Belilovsky, Eickenberg and Oyallon 2020, "Decoupled greedy learning of CNNs"): pool to
# a quarter of the side first, so the head's cost does not grow with the block's resolution, then
# 1x1 convs (a per-position MLP) with BN, pool to 2x2 and a small MLP.
MLP_SR_WIDTH = 128
# What a trained BlockwiseNet's forward returns: "network", the last block's logits; "heads", the
# log of the mean of every phase's class probabilities (each auxiliary head's and the network's).
# The heads of a phase-wise run are classifiers trained on nested features, each early-stopped on
# its own: averaging them is an ensemble the run has already paid for (ACCURACY.md, "Predicting
# with every phase's head").
PREDICTIONS = ("network", "heads")
_PROBE_BATCH = 2  # batch norm in training mode needs more than one value per channel


class ModelConfigError(UserError, ValueError):
    """A model cannot be built as asked: unknown name or option, impossible image size, bad blocks."""


class BlockShapeError(ModelConfigError):
    """An input shape does not fit a network (typically an image smaller than the network allows)."""


def infer_output_shape(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Output shape of ``module`` (without the batch dim) for one input of ``input_shape``.

    Runs the module on meta tensors (shapes only, nothing computed); a module with an op that has
    no meta kernel is run once on zeros instead. Raises `BlockShapeError` when the shape does not fit.
    """
    input_shape = tuple(int(size) for size in input_shape)
    try:
        return tuple(meta_forward(module, input_shape).shape[1:])
    except Exception:  # no meta kernel, or a genuine shape error: the real run below tells which
        pass
    try:
        return _real_output_shape(module, input_shape)
    except Exception as err:
        raise BlockShapeError(f"input of shape {input_shape} does not fit: {err}") from err


def meta_forward(
    module: nn.Module, input_shape: Sequence[int], batch_size: int = _PROBE_BATCH
) -> torch.Tensor:
    """Run ``module`` on a meta batch of ``input_shape`` samples: shapes propagate, nothing is computed.

    The module's own weights are left untouched (meta stand-ins take their place), and its forward
    hooks fire, which is how `summary` counts multiply-adds.
    """
    state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]
    }
    batch = torch.empty((batch_size, *input_shape), device="meta")
    return functional_call(module, state, (batch,))


def _real_output_shape(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)
    device = tensor.device if tensor is not None else None
    modes = {submodule: submodule.training for submodule in module.modules()}
    module.eval()  # keeps batch-norm running statistics untouched by the probe
    try:
        with torch.no_grad():
            return tuple(module(torch.zeros((_PROBE_BATCH, *input_shape), device=device)).shape[1:])
    finally:
        for submodule, training in modes.items():
            submodule.training = training


def build_aux_head(kind: str, feature_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    """An auxiliary classifier mapping features of ``feature_shape`` (``(C, H, W)`` or ``(F,)``) to logits.

    ``linear``: global average pool + Linear. ``mlp``: pool + Linear + ReLU + Dropout + Linear.
    ``conv``: 3x3 conv + BN + ReLU + global pool + Linear (flat features fall back to ``mlp``).
    ``pooled_conv``: ``conv`` after average-pooling maps larger than ``POOLED_HEAD_GRID`` down to
    that grid. Its convolution then costs at most 64 positions' worth of multiply-adds whatever
    the block's resolution: for ResNet-20's 16x32x32 early blocks 1.2 M instead of 18.9 M per image,
    which is more than the block itself computes (such heads dominate early phases' time).
    ``conv2x2``: two 3x3 conv + BN + ReLU layers, average pool to a 2x2 grid, Linear (layerCNN's
    head). ``mlp_sr``: average pool to a quarter of the side (at most 8x8), two 1x1 conv + BN + ReLU
    layers, pool to 2x2, a two-layer MLP (DGL's head). Both fall back to ``mlp`` on flat features.
    """
    if kind not in HEAD_KINDS:
        raise ModelConfigError(f"unknown head kind {kind!r}; valid kinds: {', '.join(HEAD_KINDS)}")
    feature_shape = tuple(feature_shape)
    if len(feature_shape) not in (1, 3):
        raise ModelConfigError(
            f"an auxiliary head needs block outputs of shape (C, H, W) or (F,); got {feature_shape}"
        )
    flat = len(feature_shape) == 1
    width = feature_shape[0]
    pool = [] if flat else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if kind == "conv2x2" and not flat:
        return _spatial_conv_head(feature_shape, num_classes)
    if kind == "mlp_sr" and not flat:
        return _mlp_sr_head(feature_shape, num_classes)
    if kind in ("conv", "pooled_conv") and not flat:
        shrink = []
        if kind == "pooled_conv" and max(feature_shape[1:]) > POOLED_HEAD_GRID:
            shrink = [nn.AdaptiveAvgPool2d(tuple(min(size, POOLED_HEAD_GRID) for size in feature_shape[1:]))]
        return nn.Sequential(
            *shrink,
            nn.Conv2d(width, CONV_HEAD_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(CONV_HEAD_CHANNELS),
            nn.ReLU(inplace=True),
            *pool,
            nn.Linear(CONV_HEAD_CHANNELS, num_classes),
        )
    if kind == "linear":
        return nn.Sequential(*pool, nn.Linear(width, num_classes))
    return nn.Sequential(
        *pool,
        nn.Linear(width, MLP_HEAD_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(MLP_HEAD_HIDDEN, num_classes),
    )


def _spatial_grid(height: int, breadth: int) -> tuple[int, int]:
    """The grid the conv2x2 and mlp_sr heads keep for their last layers: 2x2, or the map if smaller."""
    return min(height, SPATIAL_HEAD_GRID), min(breadth, SPATIAL_HEAD_GRID)


def _spatial_conv_head(feature_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    width, height, breadth = feature_shape
    layers: list[nn.Module] = []
    for index in range(SPATIAL_HEAD_CONVS):
        layers += [
            nn.Conv2d(width if index == 0 else CONV_HEAD_CHANNELS, CONV_HEAD_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(CONV_HEAD_CHANNELS),
            nn.ReLU(inplace=True),
        ]
    grid = _spatial_grid(height, breadth)
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(grid),
        nn.Flatten(),
        nn.Linear(CONV_HEAD_CHANNELS * grid[0] * grid[1], num_classes),
    )


def _mlp_sr_head(feature_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    width, height, breadth = feature_shape
    # a quarter of the side, but never finer than 8x8 nor coarser than the 2x2 grid the head ends in
    grid = _spatial_grid(height, breadth)
    reduced = tuple(max(cells, min(size // 4, POOLED_HEAD_GRID)) for cells, size in zip(grid, (height, breadth)))
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(reduced),
        nn.Conv2d(width, MLP_SR_WIDTH, 1, bias=False),
        nn.BatchNorm2d(MLP_SR_WIDTH),
        nn.ReLU(inplace=True),
        nn.Conv2d(MLP_SR_WIDTH, MLP_SR_WIDTH, 1, bias=False),
        nn.BatchNorm2d(MLP_SR_WIDTH),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(grid),
        nn.Flatten(),
        nn.Linear(MLP_SR_WIDTH * grid[0] * grid[1], MLP_HEAD_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(MLP_HEAD_HIDDEN, num_classes),
    )


class BlockwiseNet(nn.Module):
    """A network as an `nn.ModuleList` of blocks plus one auxiliary head per block but the last.

    Args:
        blocks: the network's modules in order; the last must end in the classifier, i.e. map its
            input to ``[B, num_classes]`` logits.
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of one input image.
        head: auxiliary head kind for phases ``1..n-1``, one of `HEAD_KINDS` (see `build_aux_head`).
        name: registry name of the architecture, or ``"custom"``.
        config: the architecture's config dataclass (``None`` for custom nets); part of what
            identifies a model, e.g. in cache fingerprints.

    ``prediction`` (one of `PREDICTIONS`, "network" when built) says what ``forward`` returns; the
    trainer sets it when a run ends, and checkpoints record it. Training never calls ``forward``
    with "heads": phases train through `phase_forward`.

    A frozen block has ``requires_grad=False`` and stays in eval mode through ``model.train()``, so
    its batch-norm statistics and dropout never change once its phase is over.
    """

    def __init__(
        self,
        blocks: Iterable[nn.Module],
        num_classes: int,
        input_shape: Sequence[int],
        head: str = DEFAULT_HEAD,
        name: str = "custom",
        config: Any = None,
    ) -> None:
        super().__init__()
        blocks = list(blocks)
        _check_arguments(blocks, num_classes, input_shape, head)
        self.blocks = nn.ModuleList(blocks)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(size) for size in input_shape)
        self.head_kind = head
        self.name = name
        self.config = config
        self._output_shapes = self._infer_block_output_shapes()
        if self._output_shapes[-1] != (self.num_classes,):
            raise ModelConfigError(
                f"the last block must end in the classifier and output ({self.num_classes},) "
                f"per sample; it outputs {self._output_shapes[-1]}"
            )
        self.heads = nn.ModuleList(
            build_aux_head(head, shape, self.num_classes) for shape in self._output_shapes[:-1]
        )
        self._frozen: set[int] = set()
        self._prediction = "network"

    @classmethod
    def from_modules(
        cls,
        modules: Iterable[nn.Module],
        num_classes: int,
        input_shape: Sequence[int],
        head: str = DEFAULT_HEAD,
        name: str = "custom",
    ) -> BlockwiseNet:
        """Make a block-wise net from any modules: each module is one block.

        An `nn.Sequential` counts as the list of its children. The last module must end in the
        classifier (``[B, num_classes]`` logits).
        """
        if isinstance(modules, nn.Module) and not isinstance(modules, (nn.Sequential, nn.ModuleList)):
            raise ModelConfigError(
                "from_modules needs a list of modules (or an nn.Sequential of them), one per block; "
                f"got a single {type(modules).__name__}"
            )
        return cls(list(modules), num_classes, input_shape, head=head, name=name)

    def _infer_block_output_shapes(self) -> list[tuple[int, ...]]:
        shapes, shape = [], self.input_shape
        for index, block in enumerate(self.blocks, start=1):
            try:
                shape = infer_output_shape(block, shape)
            except BlockShapeError as err:
                raise BlockShapeError(f"block {index} of {self.name}: {err}") from err
            shapes.append(shape)
        return shapes

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def block_output_shapes(self) -> list[tuple[int, ...]]:
        """Per block, the output shape of one sample: ``(C, H, W)`` or ``(F,)``."""
        return list(self._output_shapes)

    def block_input_shape(self, k: int) -> tuple[int, ...]:
        """Input shape of block ``k`` (1-based) for one sample; block 1 takes ``input_shape``."""
        self._check_block_index(k)
        return self.input_shape if k == 1 else self._output_shapes[k - 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prediction == "heads":
            return self.heads_forward(x)
        return self.features(x, self.num_blocks)

    @property
    def prediction(self) -> str:
        """What ``forward`` returns, one of `PREDICTIONS` (see the class docstring)."""
        return self._prediction

    @prediction.setter
    def prediction(self, value: str) -> None:
        if value not in PREDICTIONS:
            raise ModelConfigError(f"prediction must be one of {', '.join(PREDICTIONS)}; got {value!r}")
        self._prediction = value

    def heads_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The log of the mean of every phase's class probabilities: each auxiliary head's on its
        block's output, and the network's own. Log-probabilities are logits (softmax gives the
        mean back), so losses and argmax read them as they read the network's."""
        return mean_of_log_probs(self.phase_log_probs(x), self.num_blocks)

    def phase_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``[num_blocks, B, num_classes]``: each phase's class log-probabilities, from one pass
        through the blocks; the last row is the network's own (log-softmax of its logits)."""
        log_probs = []
        for k, block in enumerate(self.blocks, start=1):
            x = block(x)
            log_probs.append(torch.log_softmax(self.head(k)(x).float(), dim=1))
        return torch.stack(log_probs)

    def features(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        """Output of blocks ``1..upto`` applied to ``x``; ``upto=0`` returns ``x`` unchanged."""
        if not 0 <= upto <= self.num_blocks:
            raise ValueError(f"upto must be in 0..{self.num_blocks}; got {upto}")
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def phase_forward(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Logits of phase ``k`` from ``h``, the output of blocks ``1..k-1``: block ``k`` then its head."""
        self._check_block_index(k)
        return self.head(k)(self.blocks[k - 1](h))

    def head(self, k: int) -> nn.Module:
        """The auxiliary head of phase ``k``; the last phase uses the network's own classifier."""
        self._check_block_index(k)
        return self.heads[k - 1] if k < self.num_blocks else nn.Identity()

    def freeze_block(self, k: int) -> None:
        """Stop training block ``k``: no gradients, and eval mode from now on."""
        self._check_block_index(k)
        block = self.blocks[k - 1]
        for parameter in block.parameters():
            parameter.requires_grad_(False)
        block.eval()
        self._frozen.add(k)

    def unfreeze_block(self, k: int) -> None:
        """Make block ``k`` trainable again, in the model's current train/eval mode."""
        self._check_block_index(k)
        block = self.blocks[k - 1]
        for parameter in block.parameters():
            parameter.requires_grad_(True)
        block.train(self.training)
        self._frozen.discard(k)

    def freeze_blocks(self, upto: int) -> None:
        """Freeze blocks ``1..upto``."""
        if not 0 <= upto <= self.num_blocks:
            raise ValueError(f"upto must be in 0..{self.num_blocks}; got {upto}")
        for k in range(1, upto + 1):
            self.freeze_block(k)

    def is_frozen(self, k: int) -> bool:
        self._check_block_index(k)
        return k in self._frozen

    def train(self, mode: bool = True) -> BlockwiseNet:
        super().train(mode)
        for k in self._frozen:
            self.blocks[k - 1].eval()
        return self

    def _check_block_index(self, k: int) -> None:
        if not 1 <= k <= self.num_blocks:
            raise ValueError(f"block/phase index must be in 1..{self.num_blocks} (1-based); got {k}")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}, input_shape={self.input_shape}"


def mean_of_log_probs(log_probs: torch.Tensor, count: int) -> torch.Tensor:
    """The log of the mean of the ``count`` probabilities whose logs are stacked along dim 0
    (``count`` is given, not read from the tensor, so that a traced export keeps it a constant)."""
    return torch.logsumexp(log_probs, dim=0) - math.log(count)


def _check_arguments(
    blocks: list[nn.Module], num_classes: int, input_shape: Sequence[int], head: str
) -> None:
    if not blocks:
        raise ModelConfigError("a BlockwiseNet needs at least one block")
    for index, block in enumerate(blocks, start=1):
        if not isinstance(block, nn.Module):
            raise ModelConfigError(f"block {index} is a {type(block).__name__}, not an nn.Module")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelConfigError(f"num_classes must be a positive integer; got {num_classes!r}")
    if len(input_shape) != 3 or any(int(size) < 1 for size in input_shape):
        raise ModelConfigError(f"input_shape must be (C, H, W) with positive sizes; got {tuple(input_shape)}")
    if head not in HEAD_KINDS:
        raise ModelConfigError(f"unknown head kind {head!r}; valid kinds: {', '.join(HEAD_KINDS)}")
