"""Load weights the user already has into a `BlockwiseNet`, from files only (never a download).

Accepted files: ``.safetensors``, and ``.pt``/``.pth``/``.bin`` read with
``torch.load(weights_only=True)`` holding a state dict, a dict with the state dict under
``"state_dict"``, ``"model"`` or ``"model_state"`` (a phasenets checkpoint), or a whole pickled
model (refused: it cannot be read safely). A ``module.`` prefix left by DataParallel/DDP is dropped.

Key layouts (``source=``), detected from the key names when ``"auto"``:

- ``phasenets``: this library's own names (``blocks.<k>.…``, ``heads.<k>.…``).
- ``torchvision``: ``resnet18``/``resnet50`` (``conv1``, ``layer1.0.conv1``, ``fc``), ``vgg16`` (and
  ``vgg11``, with or without batch norm: ``features.N``, ``classifier.N``) and ``alexnet`` (into
  ``alexnet_tv``, which has its layer widths).
- ``timm``: ``resnet18``/``resnet50`` (torchvision's names), ``vgg16`` (``pre_logits.fc1`` is a 7x7
  convolution, loaded as the first fully connected layer at 224 px) and ``inception_v4``.

Which source module feeds which model module is worked out from the structure: ResNets by their
shared layer names, VGG and AlexNet by the order of their learned layers, Inception-v4 by a table
of its mixed blocks. phasenets' Inception-v4 concatenates the pooling branch first where timm puts
it last, so the input channels of every layer after a mixed block are permuted to keep the
network's function. What cannot be loaded is reported (`LoadReport`) rather than guessed:
torchvision's AlexNet loaded into the 2012 ``alexnet`` fits only its fully connected layers, and
timm's Inception-v4 orders some 1x7/7x1 convolution pairs the other way.

A load that would leave tensors in scope at their random initialization (missing, or of another
shape) is refused with `PartialLoadError` unless ``allow_partial=True``: a network that is only
partly pretrained is rarely what its user meant. The classifier skipped for another number of
classes is not counted: leaving it alone is the point.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from phasenets.errors import UserError
from phasenets.models.blockwise import BlockwiseNet

__all__ = [
    "SOURCES",
    "LoadReport",
    "PartialLoadError",
    "PretrainedError",
    "classifier_keys",
    "convert_state_dict",
    "detect_source",
    "load_pretrained",
    "read_weights",
]

SOURCES = ("auto", "phasenets", "torchvision", "timm")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_NESTED_STATE_KEYS = ("model_state", "state_dict", "model")
_SHOWN = 5  # keys quoted in an error message
_BATCH_COUNTER = "num_batches_tracked"
# a source's model that does not fit one of ours, and the registered model that has its layers
_EXACT_FITS = {("torchvision", "alexnet"): "alexnet_tv"}


class PretrainedError(UserError, ValueError):
    """Weights cannot be read, or do not fit the model; the message says what was found."""


class PartialLoadError(PretrainedError):
    """Some tensors in scope would not load (``allow_partial=False``); the message says which, per block."""


@dataclass
class LoadReport:
    """What `load_pretrained` did, key by key (model keys unless said otherwise).

    ``loaded``: filled from the source. ``missing``: in scope, but the source has nothing for them.
    ``unexpected``: source keys with no place in the model (source names). ``mismatched``:
    ``(model key, source key, model shape, source shape)`` left untouched, with the rest of
    their layer (a bias that fits is not loaded under a weight that does not). ``skipped``: the
    classifier, left untouched on purpose (its number of classes differs).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every key in scope was loaded (skipped classifier keys aside) and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def not_loaded(self) -> list[str]:
        """Model keys in scope left as initialized, not on purpose: the missing and mismatched ones.

        Batch-norm ``num_batches_tracked`` counters aside: they count batches, no weight depends on them.
        """
        keys = self.missing + [key for key, *_ in self.mismatched]
        return [key for key in keys if not key.endswith(_BATCH_COUNTER)]

    def format(self, limit: int = 10) -> str:
        """A readable summary; at most ``limit`` keys of each kind are listed."""
        lines = [
            f"weights from a {self.source} state dict: {len(self.loaded)} loaded, "
            f"{len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches, "
            f"{len(self.skipped)} skipped"
        ]
        sections = [
            ("missing (kept as initialized)", self.missing),
            ("unexpected (ignored)", self.unexpected),
            ("shape mismatch (kept as initialized)",
             [f"{key} {tuple(mine)} <- {src} {tuple(theirs)}" for key, src, mine, theirs in self.mismatched]),
            ("skipped classifier", self.skipped),
        ]
        for title, keys in sections:
            if keys:
                lines.append(f"  {title}:")
                lines += [f"    {key}" for key in keys[:limit]]
                if len(keys) > limit:
                    lines.append(f"    ... and {len(keys) - limit} more")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# reading files


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (see the module docstring for what is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises its own error type for damaged headers
            raise PretrainedError(f"{path} is not a readable safetensors file: {error}") from error
        return {_strip_wrapper(key): value for key, value in tensors.items()}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled code, torn files and foreign formats all land here
        raise PretrainedError(
            f"{path} cannot be read with torch.load(weights_only=True): save the model's state_dict() "
            f"rather than the whole model, or convert the file to .safetensors ({_first_error_line(error)})"
        ) from error
    return _unwrap_state_dict(payload, path)


def _first_error_line(error: Exception) -> str:
    """torch.load's weights-only errors run to many lines of advice; keep the line saying what failed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    culprits = [line for line in lines if "error" in line.lower()]
    return (culprits or lines or [type(error).__name__])[-1]


def _unwrap_state_dict(payload: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, Mapping):
        for key in _NESTED_STATE_KEYS:
            if isinstance(payload.get(key), Mapping):
                try:
                    return _unwrap_state_dict(payload[key], path)
                except PretrainedError:  # e.g. a phasenets checkpoint's "model" is a description
                    continue
        tensors = {key: value for key, value in payload.items() if isinstance(value, torch.Tensor)}
        if tensors:
            return {_strip_wrapper(key): value for key, value in tensors.items()}
    raise PretrainedError(
        f"{path} holds no state dict: expected a mapping of names to tensors, or one under "
        f"{', '.join(repr(k) for k in _NESTED_STATE_KEYS)}"
    )


def _strip_wrapper(key: str) -> str:
    return key.removeprefix("module.")  # DataParallel / DistributedDataParallel


# ----------------------------------------------------------------------------------------------
# layouts


def detect_source(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``phasenets``, ``torchvision`` or ``timm``, from the key names."""
    keys = set(state_dict)
    if any(key.startswith("blocks.") for key in keys):
        return "phasenets"
    if "last_linear.weight" in keys or "pre_logits.fc1.weight" in keys or "head.fc.weight" in keys:
        return "timm"
    if "conv1.weight" in keys or "features.0.weight" in keys:
        return "torchvision"  # timm's ResNets share these names and load the same way
    raise PretrainedError(f"cannot tell where a state dict with keys {_quote(sorted(keys))} comes from; "
                          f"pass source= one of {', '.join(SOURCES[1:])}")


def convert_state_dict(
    model: BlockwiseNet, state_dict: Mapping[str, torch.Tensor], source: str = "auto"
) -> tuple[dict[str, tuple[str, torch.Tensor]], list[str], list[str]]:
    """Rename (and where needed permute or reshape) a source state dict onto ``model``'s keys.

    Returns ``(converted, unexpected, notes)``: ``converted`` maps a model key to ``(source key,
    tensor)``; ``unexpected`` lists the source keys that have no place in the model.
    """
    if source not in SOURCES:
        raise PretrainedError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    state_dict = {_strip_wrapper(key): value for key, value in state_dict.items()}
    if source == "auto":
        source = detect_source(state_dict)
    if source == "phasenets":
        converted, unexpected, notes = {key: (key, value) for key, value in state_dict.items()}, [], []
    else:
        converter = _CONVERTERS.get(model.name)
        if converter is None:
            raise PretrainedError(f"no {source} name mapping for model {model.name!r}; mappings exist for "
                                  f"{', '.join(sorted(_CONVERTERS))} (or pass a phasenets state dict)")
        converted, unexpected, notes = converter(model, state_dict, source)
    own = model.state_dict()
    unexpected += [origin for key, (origin, _) in converted.items() if key not in own]
    converted = {key: item for key, item in converted.items() if key in own}
    return converted, sorted(unexpected), notes


def _resnet_converter(model: BlockwiseNet, state_dict: Mapping[str, torch.Tensor], source: str):
    """torchvision and timm name ResNets alike; phasenets prefixes each key with its block."""
    converted, unexpected = {}, []
    for key, value in state_dict.items():
        head = key.split(".", 1)[0]
        if head in ("conv1", "bn1"):
            converted[f"blocks.0.{key}"] = (key, value)
        elif re.fullmatch(r"layer[1-4]", head):
            converted[f"blocks.{head[-1]}.{key}"] = (key, value)
        elif head == "fc":
            converted[f"blocks.4.{key}"] = (key, value)
        else:
            unexpected.append(key)
    return converted, unexpected, []


# Groups of a source's learned layers, in forward order (their indices sort within a group).
_SEQUENTIAL_GROUPS = {
    "torchvision": ("features", "classifier"),
    "timm": ("features", "pre_logits", "head"),
}


def _sequential_converter(model: BlockwiseNet, state_dict: Mapping[str, torch.Tensor], source: str):
    """VGG and AlexNet: pair the model's learned layers with the source's, in forward order."""
    groups = _SEQUENTIAL_GROUPS[source]
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if module.split(".", 1)[0] in groups:
            by_module.setdefault(module, {})[leaf] = value
        else:
            unexpected.append(key)
    source_modules = sorted(by_module, key=lambda name: (groups.index(name.split(".", 1)[0]), _natural(name)))
    model_modules = [(name, module) for name, module in model.blocks.named_modules(prefix="blocks")
                     if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d))]
    model_kinds = [_module_kind(module) for _, module in model_modules]
    source_kinds = [_tensors_kind(name.split(".", 1)[0], by_module[name]) for name in source_modules]
    if model_kinds != source_kinds:
        raise PretrainedError(
            f"the {source} state dict's learned layers ({_count_kinds(source_kinds)}) do not line up with "
            f"{model.name}'s ({_count_kinds(model_kinds)}); a batch-norm variant needs batch_norm=True "
            "(or False) when building the model"
        )
    converted = {}
    for (target, module), name in zip(model_modules, source_modules):
        for leaf, value in by_module[name].items():
            own = getattr(module, leaf, None)
            if isinstance(module, nn.Linear) and leaf == "weight" and value.dim() == 4 and own is not None \
                    and own.numel() == value.numel():
                # timm's VGG keeps fc1/fc2 as 7x7 and 1x1 convolutions: over a 7x7 map that is a
                # Linear on the (C, H, W)-flattened input, the order nn.Flatten produces
                value = value.reshape(value.shape[0], -1)
            converted[f"{target}.{leaf}"] = (f"{name}.{leaf}", value)
    notes = []
    if (source, model.name) == ("torchvision", "alexnet"):
        notes.append("torchvision's alexnet is the 64-192-384-256-256 'one weird trick' variant without "
                     "local response normalization; its convolutions do not fit phasenets' 2012 alexnet, "
                     f"they fit {_EXACT_FITS[source, model.name]}")
    return converted, unexpected, notes


def _module_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return "norm"


def _tensors_kind(group: str, tensors: Mapping[str, torch.Tensor]) -> str:
    if "running_mean" in tensors:
        return "norm"
    if "weight" not in tensors:
        return "other"
    # past the feature extractor every learned layer acts as a Linear, even timm's 7x7 "fc1" conv
    return "conv" if group == "features" else "linear"


def _count_kinds(kinds: list[str]) -> str:
    order = ("conv", "norm", "linear", "other")
    return ", ".join(f"{kinds.count(kind)} {kind}" for kind in order if kind in kinds)


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in name.split(".")]


# ---- Inception-v4 (timm) -----------------------------------------------------------------------
#
# A mixed block is described by its convolutions (phasenets path, timm path, reads the block's
# input) and by its output: phasenets' branches in phasenets' order, each either a convolution
# output ("conv", offset in timm's concatenation, channels) or a pooling that passes the input
# channels through ("pool", offset in timm's concatenation).

_INCEPTION_A = (
    [("branches.0.1", "branch3.1", True), ("branches.1", "branch0", True),
     ("branches.2.0", "branch1.0", True), ("branches.2.1", "branch1.1", False),
     ("branches.3.0", "branch2.0", True), ("branches.3.1", "branch2.1", False),
     ("branches.3.2", "branch2.2", False)],
    [("conv", 288, 96), ("conv", 0, 96), ("conv", 96, 96), ("conv", 192, 96)],
)
_REDUCTION_A = (
    [("branches.1", "branch0", True), ("branches.2.0", "branch1.0", True),
     ("branches.2.1", "branch1.1", False), ("branches.2.2", "branch1.2", False)],
    [("pool", 640), ("conv", 0, 384), ("conv", 384, 256)],
)
_INCEPTION_B = (
    [("branches.0.1", "branch3.1", True), ("branches.1", "branch0", True)]
    + [(f"branches.2.{i}", f"branch1.{i}", i == 0) for i in range(3)]
    + [(f"branches.3.{i}", f"branch2.{i}", i == 0) for i in range(5)],
    [("conv", 896, 128), ("conv", 0, 384), ("conv", 384, 256), ("conv", 640, 256)],
)
_REDUCTION_B = (
    [(f"branches.1.{i}", f"branch0.{i}", i == 0) for i in range(2)]
    + [(f"branches.2.{i}", f"branch1.{i}", i == 0) for i in range(4)],
    [("pool", 512), ("conv", 0, 192), ("conv", 192, 320)],
)
_INCEPTION_C = (
    [("branches.0.1", "branch3.1", True), ("branches.1", "branch0", True),
     ("branches.2.0", "branch1_0", True), ("branches.2.1.branches.0", "branch1_1a", False), ("branches.2.1.branches.1", "branch1_1b", False),
     ("branches.3.0", "branch2_0", True), ("branches.3.1", "branch2_1", False),
     ("branches.3.2", "branch2_2", False), ("branches.3.3.branches.0", "branch2_3a", False),
     ("branches.3.3.branches.1", "branch2_3b", False)],
    [("conv", 1280, 256), ("conv", 0, 256), ("conv", 256, 512), ("conv", 768, 512)],
)
# the stem concatenates in timm's order already, so its output needs no permutation
_INCEPTION_STEM = [("0", "features.0"), ("1", "features.1"), ("2", "features.2"),
                   ("3.branches.1", "features.3.conv"),
                   *[(f"4.branches.0.{i}", f"features.4.branch0.{i}") for i in range(2)],
                   *[(f"4.branches.1.{i}", f"features.4.branch1.{i}") for i in range(4)],
                   ("5.branches.0", "features.5.conv")]
# (phasenets module, timm module, layout), in forward order
_INCEPTION_MIXED = (
    [(f"blocks.1.{i}", f"features.{6 + i}", _INCEPTION_A) for i in range(4)]
    + [("blocks.1.4", "features.10", _REDUCTION_A)]
    + [(f"blocks.2.{i}", f"features.{11 + i}", _INCEPTION_B) for i in range(7)]
    + [("blocks.2.7", "features.18", _REDUCTION_B)]
    + [(f"blocks.3.{i}", f"features.{19 + i}", _INCEPTION_C) for i in range(3)]
)
_CONV_BN_LEAVES = {"conv.weight": "0.weight", **{f"bn.{name}": f"1.{name}" for name in
                   ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}}


def _inception_converter(model: BlockwiseNet, state_dict: Mapping[str, torch.Tensor], source: str):
    if source != "timm":
        raise PretrainedError("inception_v4 weights are mapped from timm's layout (features.N, last_linear); "
                              "torchvision has no inception_v4")
    remaining = dict(state_dict)
    converted: dict[str, tuple[str, torch.Tensor]] = {}

    def take(target: str, origin: str, input_order: torch.Tensor | None = None) -> None:
        for timm_leaf, own_leaf in _CONV_BN_LEAVES.items():
            key = f"{origin}.{timm_leaf}"
            if key in remaining:
                value = remaining.pop(key)
                if input_order is not None and own_leaf == "0.weight" and value.shape[1] == len(input_order):
                    value = value[:, input_order]
                converted[f"{target}.{own_leaf}"] = (key, value)

    for target, origin in _INCEPTION_STEM:
        take(f"blocks.0.{target}", origin)
    order = torch.arange(384)  # phasenets channel c of the stem output is timm channel order[c]
    for target, origin, (convs, outputs) in _INCEPTION_MIXED:
        for own, theirs, reads_input in convs:
            take(f"{target}.{own}", f"{origin}.{theirs}", order if reads_input else None)
        order = _concatenated_order(outputs, order)
    for leaf in ("weight", "bias"):
        key = f"last_linear.{leaf}"
        if key in remaining:
            value = remaining.pop(key)
            converted[f"blocks.4.3.{leaf}"] = (key, value[:, order] if leaf == "weight" else value)
    notes = ["timm's inception_v4 runs 1x7 before 7x1 in the stem (Mixed4a) and 7x1 first in Inception-B's "
             "longest branch, the other way round from phasenets' (the paper's figures); those convolutions "
             "cannot be loaded"]
    return converted, sorted(remaining), notes


def _concatenated_order(outputs, input_order: torch.Tensor) -> torch.Tensor:
    """timm's channel index of every phasenets output channel of one mixed block."""
    parts = []
    for output in outputs:
        if output[0] == "pool":
            parts.append(output[1] + input_order)
        else:
            _, offset, channels = output
            parts.append(offset + torch.arange(channels))
    return torch.cat(parts)


_CONVERTERS = {
    "resnet18": _resnet_converter,
    "resnet50": _resnet_converter,
    "vgg11": _sequential_converter,
    "vgg16": _sequential_converter,
    "alexnet": _sequential_converter,
    "alexnet_tv": _sequential_converter,
    "inception_v4": _inception_converter,
}


# ----------------------------------------------------------------------------------------------
# loading


def classifier_keys(model: BlockwiseNet) -> list[str]:
    """The state-dict keys of the layer producing the network's logits (the last block's last Linear)."""
    last = [name for name, module in model.blocks[-1].named_modules() if isinstance(module, nn.Linear)]
    if not last:
        return []
    # last[-1] is "" when the block itself is the Linear
    prefix = f"blocks.{model.num_blocks - 1}" + (f".{last[-1]}" if last[-1] else "")
    return [key for key in model.state_dict() if key.rpartition(".")[0] == prefix]


def load_pretrained(
    model: BlockwiseNet,
    weights: str | Path | Mapping[str, torch.Tensor],
    *,
    source: str = "auto",
    blocks: Iterable[int] | None = None,
    heads: bool = False,
    skip_classifier: bool | None = None,
    strict: bool = False,
    allow_partial: bool = False,
) -> LoadReport:
    """Copy weights from a file (or a state dict) into ``model`` in place; return what was done.

    Args:
        weights: a weights file (see `read_weights`) or a state dict.
        source: the key layout, ``auto`` to detect it (see the module docstring).
        blocks: 1-based block numbers to fill; ``None`` means every block.
        heads: fill the auxiliary heads of those blocks too (phasenets sources only: they are
            tied to the classes of the task they were trained on).
        skip_classifier: leave the final classifier alone. ``None``: only when its shape differs
            (another number of classes); ``True``: always; ``False``: never (a different shape is
            then a mismatch).
        strict: raise `PretrainedError` unless every key in scope loads and none is left over.
        allow_partial: load what fits even when some tensors in scope do not (`LoadReport.not_loaded`
            lists them; they keep their initialization). Otherwise such a load raises
            `PartialLoadError` and changes nothing.

    Raises `PretrainedError` when nothing at all matches: wrong model or wrong file.
    """
    state_dict = read_weights(weights) if isinstance(weights, (str, Path)) else dict(weights)
    state_dict = {_strip_wrapper(key): value for key, value in state_dict.items()}
    converted, unexpected, notes = convert_state_dict(model, state_dict, source)
    report = LoadReport(source=source if source != "auto" else detect_source(state_dict), notes=notes)
    own = model.state_dict()
    scope = _keys_in_scope(model, own, blocks, heads and report.source == "phasenets")
    classifier = set(classifier_keys(model))
    updates = {}
    for key in scope:
        if key not in converted:
            report.missing.append(key)
            continue
        origin, value = converted[key]
        shape_fits = tuple(value.shape) == tuple(own[key].shape)
        if key in classifier and (skip_classifier or (skip_classifier is None and not shape_fits)):
            report.skipped.append(key)
        elif shape_fits:
            updates[key] = value
            report.loaded.append(key)
        else:
            report.mismatched.append((key, origin, tuple(own[key].shape), tuple(value.shape)))
    _keep_layers_whole(report, updates, converted)
    position = {key: index for index, key in enumerate(own)}
    report.mismatched.sort(key=lambda mismatch: position[mismatch[0]])
    report.unexpected = unexpected
    if not report.loaded:
        raise PretrainedError(
            f"none of the {len(state_dict)} {report.source} weights fit {model.name}: "
            f"the model has keys like "
            f"{_quote(list(scope))}, the file has {_quote(list(state_dict))}. Is it the right architecture "
            f"(and source={source!r})?"
        )
    if strict and not report.complete:
        raise PretrainedError("strict loading failed:\n" + report.format())
    if report.not_loaded and not allow_partial:
        raise PartialLoadError(_partial_load_message(model, report))
    with torch.no_grad():
        for key, value in updates.items():
            own[key].copy_(value)
    return report


def _keep_layers_whole(report: LoadReport, updates: dict, converted: dict) -> None:
    """A layer whose weight does not fit keeps its own bias too: half a layer is worse than none."""
    broken = {key.rpartition(".")[0] for key, *_ in report.mismatched}
    for key in [key for key in report.loaded if key.rpartition(".")[0] in broken]:
        value = updates.pop(key)
        report.loaded.remove(key)
        report.mismatched.append((key, converted[key][0], tuple(value.shape), tuple(value.shape)))


def _partial_load_message(model: BlockwiseNet, report: LoadReport) -> str:
    left, total = _count_by_part(report.not_loaded), _count_by_part(report.loaded + report.not_loaded)
    per_part = ", ".join(f"{part}: {count} of {total[part]}" for part, count in left.items())
    lines = [
        f"{model.name} would be only partly loaded from this {report.source} state dict: "
        f"{len(report.not_loaded)} of {len(report.loaded) + len(report.not_loaded)} tensors did not load "
        f"({per_part}) and would keep their random initialization.",
    ]
    exact_fit = _EXACT_FITS.get((report.source, model.name))
    if exact_fit is not None:
        lines.append(f"Build {exact_fit} instead: it has the {report.source} network's layers and loads "
                     "every tensor.")
    if any(len(mine) == len(theirs) == 2 and mine[0] == theirs[0] for _, _, mine, theirs in report.mismatched):
        lines.append("A fully connected layer reads a feature map of another size: the weights were trained "
                     "at another image size (224 px for most ImageNet weights); build the model at that size.")
    lines.append(f"To load the {len(report.loaded)} that fit and train the others from scratch, pass "
                 "allow_partial=True (--allow-partial).")
    return "\n".join(lines + [report.format()])


def _count_by_part(keys: list[str]) -> dict[str, int]:
    """``{"block 1": 2, "head 3": 4, ...}``, in network order."""
    counts: dict[str, int] = {}
    for key in keys:
        kind, number = key.split(".")[:2]
        part = f"{'block' if kind == 'blocks' else 'head'} {int(number) + 1}"
        counts[part] = counts.get(part, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (item[0].startswith("head"), int(item[0].split()[1]))))


def _keys_in_scope(model: BlockwiseNet, own: Mapping[str, torch.Tensor], blocks, heads: bool) -> list[str]:
    numbers = range(1, model.num_blocks + 1) if blocks is None else sorted(set(blocks))
    for number in numbers:
        if not 1 <= number <= model.num_blocks:
            raise PretrainedError(
                f"block {number} does not exist: {model.name} has blocks 1..{model.num_blocks}"
            )
    prefixes = [f"blocks.{n - 1}." for n in numbers]
    if heads:
        prefixes += [f"heads.{n - 1}." for n in numbers if n < model.num_blocks]
    return [key for key in own if key.startswith(tuple(prefixes))]


def _quote(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")
