"""The model registry: architecture name -> (config dataclass, builder)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from phasenets.models.blockwise import DEFAULT_HEAD, BlockShapeError, BlockwiseNet, ModelConfigError

_LARGEST_IMAGE_SIZE_SEARCHED = 4096


@dataclass
class ModelConfig:
    """Options every architecture takes; each architecture subclasses it with its own options.

    ``image_size`` is the side of the square input; subclasses default it (and ``in_channels``)
    to the size their paper uses.
    """

    num_classes: int
    in_channels: int = 3
    image_size: int = 224

    def __post_init__(self) -> None:
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise ModelConfigError(f"num_classes must be a positive integer; got {self.num_classes!r}")
        if self.in_channels not in (1, 3):
            raise ModelConfigError(f"in_channels must be 1 or 3; got {self.in_channels!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ModelConfigError(f"image_size must be a positive integer; got {self.image_size!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


Builder = Callable[[Any, str], BlockwiseNet]


class _Entry(NamedTuple):
    config_class: type[ModelConfig]
    builder: Builder


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, config_class: type[ModelConfig]) -> Callable[[Builder], Builder]:
    """Register ``builder(config, head) -> BlockwiseNet`` under ``name``, configured by ``config_class``."""
    if not (dataclasses.is_dataclass(config_class) and issubclass(config_class, ModelConfig)):
        raise TypeError(f"config_class of {name!r} must be a ModelConfig dataclass; got {config_class!r}")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = _Entry(config_class, builder)
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, Any]:
    """The options ``name`` takes besides ``num_classes``, with their defaults."""
    entry = _lookup(name)
    return {
        field.name: field.default
        for field in dataclasses.fields(entry.config_class)
        if field.name != "num_classes"
    }


def build_model(
    name: str,
    num_classes: int,
    in_channels: int | None = None,
    image_size: int | None = None,
    head: str = DEFAULT_HEAD,
    **options: Any,
) -> BlockwiseNet:
    """Build the registered architecture ``name`` as a `BlockwiseNet`.

    ``in_channels`` and ``image_size`` default to the architecture's own (e.g. 1 and 32 for
    ``lenet5``, 227 for ``alexnet``); ``options`` are the fields of its config dataclass (see
    `model_options`). Unknown names or options and impossible sizes raise `ModelConfigError`
    saying what is valid.
    """
    entry = _lookup(name)
    config = _make_config(name, entry.config_class, num_classes, in_channels, image_size, options)
    try:
        return entry.builder(config, head)
    except BlockShapeError as err:
        minimum = _smallest_image_size(entry, config, head)
        if minimum is None:
            raise
        raise ModelConfigError(
            f"{name} needs image_size >= {minimum} (with its options {_describe(config)}); "
            f"got image_size={config.image_size}"
        ) from err


def _lookup(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelConfigError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None


def _make_config(
    name: str,
    config_class: type[ModelConfig],
    num_classes: int,
    in_channels: int | None,
    image_size: int | None,
    options: dict[str, Any],
) -> ModelConfig:
    valid = {field.name for field in dataclasses.fields(config_class)} - {
        "num_classes",
        "in_channels",
        "image_size",
    }
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ModelConfigError(
            f"unknown option(s) {', '.join(unknown)} for {name}; "
            f"valid options: {', '.join(sorted(valid)) or 'none'}"
        )
    sizes = {"in_channels": in_channels, "image_size": image_size}
    given = {key: value for key, value in sizes.items() if value is not None}
    return config_class(num_classes=num_classes, **given, **options)


def _smallest_image_size(entry: _Entry, config: ModelConfig, head: str) -> int | None:
    """The smallest image size at which the model builds, or None if none up to 4096 does.

    Output sizes of convolutions and poolings never shrink when the input grows, so the sizes that
    work form a range [minimum, ...) and a binary search finds its start. The trial builds happen
    on the meta device: no weights are allocated or initialized.
    """

    def builds(size: int) -> bool:
        try:
            with torch.device("meta"):
                entry.builder(dataclasses.replace(config, image_size=size), head)
        except BlockShapeError:
            return False
        return True

    failing, working = config.image_size, config.image_size * 2
    while not builds(working):
        if working >= _LARGEST_IMAGE_SIZE_SEARCHED:
            return None
        failing, working = working, min(working * 2, _LARGEST_IMAGE_SIZE_SEARCHED)
    while working - failing > 1:
        middle = (failing + working) // 2
        failing, working = (failing, middle) if builds(middle) else (middle, working)
    return working


def _describe(config: ModelConfig) -> str:
    shown = {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(config)
        if field.name not in ("num_classes", "image_size")
    }
    return ", ".join(f"{key}={value!r}" for key, value in shown.items())
