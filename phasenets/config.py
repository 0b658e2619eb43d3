"""``TrainConfig``: every training option in one dataclass.

A configuration is built in three layers, later ones winning: the dataclass defaults, a YAML or
JSON file (``--config FILE``), then the command line. Every option has a dashed flag
(``--max-epochs``); the flags of the original Keras trainer (the project's ``train_blockwise.py``)
are accepted under their own names and value styles as well (``--max_epoch 50 --freeze_layers false
--optimizer Adadelta``). The same original names work as keys in a config file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from phasenets.cache.spec import STORAGE_DTYPES
from phasenets.cache.tiers import CACHE_MODES
from phasenets.data import LOADER_KINDS
from phasenets.data.transforms import AUGMENT_PRESETS, NORMALIZATION_MODES
from phasenets.errors import ConfigError
from phasenets.models import list_models
from phasenets.models.blockwise import DEFAULT_HEAD, HEAD_KINDS, PREDICTIONS
from phasenets.train import distributed, early_stopping, optim, plan, precision, preflight
from phasenets.train.plan import block_lr_multipliers

__all__ = ["ConfigError", "TrainConfig", "add_config_arguments", "config_from_args", "parse_assignments", "parse_bool"]


# Each option's choices live with the code that implements them.
SCHEDULES = plan.SCHEDULES
DEFAULT_EPOCHS_PER_PHASE = plan.DEFAULT_EPOCHS_PER_PHASE
OPTIMIZERS = optim.OPTIMIZERS
LR_SCHEDULES = optim.LR_SCHEDULES
DEFAULT_LR = optim.DEFAULT_LR
AMP_MODES = precision.AMP_MODES
LOADERS = LOADER_KINDS
NORMALIZATIONS = NORMALIZATION_MODES
HEADS = HEAD_KINDS
PREDICTION_CHOICES = ("auto", *PREDICTIONS)
MONITORS = early_stopping.MONITORS
DEVICES = distributed.DEVICES
CACHE_DTYPES = tuple(STORAGE_DTYPES)
BAD_IMAGE_ACTIONS = preflight.BAD_IMAGE_ACTIONS

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_bool(value: Any) -> bool:
    """Read a boolean the way seed 000's flags were written (``true``/``false``, any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"expected a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")


def _option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field whose help text also serves the command line."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """All options of a phase-wise training run.

    Field help texts double as the ``phasenets train --help`` text. ``None`` means "derive it":
    ``num_classes`` from the train class folders, ``image_size`` from the model's default, ``lr``
    from the optimizer (Keras' defaults), ``lr_schedule`` from ``lr_decay``, ``output`` from the
    model, schedule and start time.
    """

    # data
    data_dir: str | None = _option(
        None, "dataset root holding train/, validation/ (or val/) and optionally test/", group="data", metavar="DIR"
    )
    dataset_name: str | None = _option(
        None, "a name for the dataset, recorded in the run's summary", group="data", metavar="NAME"
    )
    num_classes: int | None = _option(
        None, "number of classes [default: the number of train class folders]", group="data"
    )
    image_size: int | None = _option(
        None, "side of the square network input in pixels [default: the model's]", group="data"
    )
    in_channels: int | None = _option(
        None, "image channels fed to the network: 1 (grayscale) or 3 (RGB) [default: the model's]", group="data"
    )
    val_split: float = _option(
        0.0, "fraction of train carved out as validation when there is no validation folder", group="data"
    )
    loader: str = _option(
        "auto", "image loader: auto uses NVIDIA DALI where installed, else torch (DataLoader + PIL)",
        choices=LOADERS, group="data",
    )
    num_workers: int | None = _option(
        None, "data loading worker processes [default: 1 on up to 3 cores, else a quarter of the cores, at most 4]",
        group="data",
    )
    augment: str = _option(
        "none", "augmentation preset (--augment-options adjusts it)", choices=AUGMENT_PRESETS, group="data"
    )
    augment_options: dict = _option(
        {}, "augmentation options on top of the preset, NAME=VALUE (repeatable), e.g. rotation=10 hflip=true",
        group="data"
    )
    normalization: str = _option("meanstd", "input normalization", choices=NORMALIZATIONS, group="data")

    # model
    model: str = _option(
        "alexnet", f"architecture: {', '.join(list_models())} (`phasenets summary` shows its blocks)",
        group="model", metavar="NAME",
    )
    head: str = _option(DEFAULT_HEAD, "auxiliary head of each intermediate phase", choices=HEADS, group="model")
    model_options: dict = _option(
        {}, "options of the architecture, NAME=VALUE (repeatable), e.g. depth=32 for resnet_cifar or "
        "downsample=invertible for lenet5 (`phasenets summary MODEL` lists them)", group="model"
    )

    # the phase plan
    schedule: str = _option(
        "phasewise",
        "phasewise: one block per phase with an auxiliary head, earlier blocks frozen; "
        "standard: all blocks in one phase; progressive: phase k trains blocks 1..k, older ones at lower lr",
        choices=SCHEDULES, group="plan",
    )
    start_phase: int = _option(
        1, "phase to start at, counting from 1 (0 also means the first); later phases need --ckpt-dir", group="plan"
    )
    ckpt_dir: str | None = _option(
        None, "checkpoint file or run directory whose weights initialize the model", group="plan", metavar="PATH"
    )
    finetune_epochs: int = _option(
        0, "after the last phase, one more phase of this many epochs with every block unfrozen", group="plan"
    )
    finetune_lr_scale: float = _option(0.1, "learning-rate factor of the fine-tuning phase", group="plan")
    prediction: str = _option(
        "auto", "what the trained network predicts with: network: its own classifier; heads: the mean of the "
        "class probabilities of every phase's head (the auxiliary heads and the classifier); auto: heads where "
        "the run trained them and they score at least the network's validation accuracy",
        choices=PREDICTION_CHOICES, group="plan",
    )
    progressive_lr_decay: float = _option(
        0.5, "progressive schedule: each block older than the newest trains at this factor times the next one's lr",
        group="plan"
    )
    block_lr_multipliers: list = _option(
        [], "per-block learning-rate factors, one per block, comma separated (ModNet: --block-lr 0.4,0.65,1)",
        group="plan", metavar="F,F,..."
    )
    layer_decay: float | None = _option(
        None, "per-block learning rates by layer-wise decay: block k of n trains at decay**(n-k) times the rate",
        group="plan"
    )

    # curriculum and transfer (ModNet task chaining)
    init_from: str | None = _option(
        None, "start a new task from the blocks of a run directory, checkpoint or weights file (.safetensors/.pt)",
        group="model", metavar="PATH"
    )
    reuse_blocks: str | None = _option(
        None, "blocks --init-from copies: 1-3, 1,2,4 or all [default: all]", group="model", metavar="BLOCKS"
    )
    freeze_reused: bool = _option(False, "keep the blocks copied by --init-from frozen in every phase", group="model")
    allow_partial: bool = _option(
        False, "let --init-from load a weights file that only partly fits the model; the tensors that do not "
        "fit train from their random initialization", group="model"
    )
    hierarchy: str | None = _option(
        None, "class-hierarchy YAML (superclass: [classes]): train on its groups instead of the class folders",
        group="data", metavar="FILE"
    )
    hierarchy_level: int | None = _option(
        None, "hierarchy level to train at, 1 = top [default: 1, or the level below --hierarchy-within]", group="data"
    )
    hierarchy_within: str | None = _option(
        None, "train only on the classes of this superclass, labelled by its children", group="data", metavar="GROUP"
    )

    # the data preflight
    on_bad_image: str = _option(
        "error", "what the preflight does with unreadable images: stop with their list, or leave them out",
        choices=BAD_IMAGE_ACTIONS, group="data",
    )
    skip_preflight: bool = _option(
        False, "UNSAFE: start without checking every image first; a corrupt file then stops training midway",
        group="data"
    )

    # optimization
    optimizer: str = _option(
        "adam", "optimizer, in any letter case (Adadelta)", choices=OPTIMIZERS, group="optimisation"
    )
    lr: float | None = _option(
        None, "learning rate [default per optimizer: adadelta 1.0, adam/adamw 1e-3, sgd 0.01]", group="optimisation"
    )
    momentum: float = _option(0.9, "sgd momentum", group="optimisation")
    nesterov: bool = _option(False, "sgd: Nesterov momentum", group="optimisation")
    weight_decay: float = _option(0.0, "weight decay", group="optimisation")
    lr_decay: float = _option(
        0.0, "Keras inverse-time decay per iteration: lr / (1 + decay * iterations)", group="optimisation"
    )
    lr_schedule: str | None = _option(
        None, "learning-rate schedule within a phase [default: inverse_time when --lr-decay > 0, else constant]",
        choices=LR_SCHEDULES, group="optimisation",
    )
    warmup_epochs: float = _option(
        1.0, "each phase's learning rate rises linearly from near zero over its first this many epochs "
        "(fractions allowed; 0: none)", group="optimisation"
    )
    lr_step_size: int = _option(30, "step schedule: epochs between learning-rate drops", group="optimisation")
    lr_gamma: float = _option(0.1, "step schedule: factor of each drop", group="optimisation")
    label_smoothing: float = _option(0.0, "label smoothing of the cross-entropy loss", group="optimisation")
    similarity_weight: float = _option(
        0.0, "PredSim's similarity matching in each auxiliary-headed phase: loss = (1-w) x cross-entropy + w x "
        "the squared difference of the batch's cosine-similarity matrices of the block's outputs (after a "
        "learned 3x3 convolution that lives for the phase) and of the labels "
        "(Nøkland and Eidnes 2019 used 0.99; 0: cross-entropy only)", group="optimisation"
    )
    batch_size: int = _option(32, "images per batch (per process)", group="optimisation")
    max_epochs: int | None = _option(
        None, f"maximum epochs of each phase [default: {DEFAULT_EPOCHS_PER_PHASE}, or the epochs of "
        f"{plan.MIN_STEPS_PER_PHASE} optimizer steps when that is more; the standard schedule's one phase: that "
        "x the blocks, the epochs a phase-wise run may take]", group="plan"
    )
    patience: int | None = _option(
        None, "stop a phase after this many epochs without validation improvement (0: never) "
        f"[default: {plan.DEFAULT_PATIENCE}, or the epochs of {plan.MIN_PATIENCE_STEPS} optimizer steps when that "
        "is more]", group="plan"
    )
    time_budget: float | None = _option(
        None, "wall-clock seconds the training may take, shared by the phases: each may use the time left "
        "divided by the phases left, and ends before an epoch that would overrun its share (keeping its "
        "best weights, as early stopping does) [default: no limit]", group="plan", metavar="SECONDS"
    )
    monitor: str = _option(
        "accuracy", "validation metric that picks a phase's best weights", choices=MONITORS, group="plan"
    )
    precise_bn: bool = _option(
        False, "before a phase's blocks are frozen, re-estimate their batch-norm statistics over the whole "
        "train split (one extra forward pass) instead of keeping the running averages", group="plan"
    )

    # the run
    seed: int = _option(1, "random seed of initialization, shuffling and augmentation", group="optimisation")
    deterministic: bool = _option(
        False, "deterministic algorithms only: reruns and resumed runs give identical weights", group="hardware"
    )
    amp: str = _option(
        "off", "mixed precision: autocast dtype; fp16 also uses a GradScaler", choices=AMP_MODES, group="hardware"
    )
    device: str = _option("auto", "where to train (auto: cuda when available)", choices=DEVICES, group="hardware")
    num_threads: int | None = _option(
        None, "compute threads of each training process [default: its share of the cores less the loader workers]",
        group="hardware"
    )
    nproc: int = _option(
        1, "training processes `phasenets train` starts on this machine: one per GPU (NCCL), else CPU "
        "processes sharing the cores (gloo); under torchrun leave it at 1", group="hardware"
    )
    dist_timeout: float = _option(
        600.0, "seconds a collective may wait for another process before the whole job fails", group="hardware"
    )
    channels_last: bool = _option(
        False, "channels-last memory layout for the model and its inputs (faster convs on GPUs)", group="hardware"
    )
    compile: bool = _option(
        False, "torch.compile the trainable blocks of each phase (slow first steps, faster after)", group="hardware"
    )
    use_test: bool = _option(False, "evaluate the test split after each phase", group="output")
    output: str | None = _option(
        None, "run directory, created when the run starts [default: runs/<model>-<schedule>-<timestamp>]",
        group="output", metavar="DIR",
    )
    resume: str | None = _option(
        None, "continue the killed run in this run directory from its last completed epoch",
        group="output", metavar="DIR"
    )
    tensorboard: bool = _option(True, "write TensorBoard events when tensorboard is installed", group="output")

    # the feature cache: later phases read the frozen prefix's outputs instead of recomputing them
    cache: str = _option(
        "auto", "where frozen blocks' outputs (and unaugmented images, in memory) are kept: auto picks the "
        "fastest tier they fit in", choices=CACHE_MODES, group="cache",
    )
    cache_views: int | None = _option(
        None, "augmented views cached per training image [default: 1 without augmentation, else min(4, max_epochs)]",
        group="cache"
    )
    cache_dtype: str = _option("fp16", "storage dtype of cached features", choices=CACHE_DTYPES, group="cache")
    cache_dir: str | None = _option(
        None, "where disk caches go; share it between runs to reuse their caches [default: <run dir>/cache]",
        group="cache", metavar="DIR"
    )
    cache_budget_gb: float | None = _option(
        None, "the most GPU or host memory the cache may take, in GiB", group="cache"
    )

    def __post_init__(self) -> None:
        for name, kind in _field_types().items():
            setattr(self, name, _coerce(name, kind, getattr(self, name)))
        self.optimizer = self.optimizer.lower()
        if self.start_phase == 0:  # seed 000's default, meaning "from the beginning"
            self.start_phase = 1
        if self.lr_schedule is None:
            self.lr_schedule = "inverse_time" if self.lr_decay > 0 else "constant"
        self._validate()

    def _validate(self) -> None:
        for item in dataclasses.fields(self):
            choices = item.metadata.get("choices")
            value = getattr(self, item.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{item.name}={value!r} is not valid; choose one of: {', '.join(choices)}")
        _check(self.in_channels in (None, 1, 3), f"in_channels must be 1 or 3, got {self.in_channels}")
        _check(0.0 <= self.val_split < 1.0, f"val_split must be in [0, 1), got {self.val_split}")
        _check(self.num_classes is None or self.num_classes >= 2, f"num_classes must be at least 2, got {self.num_classes}")
        _check(self.image_size is None or self.image_size > 0, f"image_size must be positive, got {self.image_size}")
        _check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        _check(self.max_epochs is None or self.max_epochs > 0, f"max_epochs must be positive, got {self.max_epochs}")
        _check(self.start_phase >= 1, f"start_phase must be at least 1, got {self.start_phase}")
        _check(self.num_workers is None or self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _check(self.num_threads is None or self.num_threads >= 1, f"num_threads must be at least 1, got {self.num_threads}")
        _check(self.nproc >= 1, f"nproc must be at least 1, got {self.nproc}")
        _check(self.dist_timeout > 0, f"dist_timeout must be positive seconds, got {self.dist_timeout}")
        _check(self.cache_views is None or self.cache_views >= 1, f"cache_views must be at least 1, got {self.cache_views}")
        _check(self.time_budget is None or self.time_budget > 0,
               f"time_budget must be positive seconds, got {self.time_budget}")
        _check(self.cache_budget_gb is None or self.cache_budget_gb > 0,
               f"cache_budget_gb must be positive, got {self.cache_budget_gb}")
        _check(self.patience is None or self.patience >= 0, f"patience must be >= 0, got {self.patience}")
        for name in ("finetune_epochs", "weight_decay", "lr_decay", "label_smoothing", "warmup_epochs"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.label_smoothing < 1, f"label_smoothing must be below 1, got {self.label_smoothing}")
        _check(0 <= self.similarity_weight < 1, f"similarity_weight must be in [0, 1), got {self.similarity_weight}")
        _check(self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}")
        _check(self.lr_step_size > 0, f"lr_step_size must be positive, got {self.lr_step_size}")
        for name in ("finetune_lr_scale", "progressive_lr_decay", "lr_gamma"):
            _check(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _check(self.prediction != "heads" or self.schedule != "standard",
               "prediction=heads needs the auxiliary heads a phase-wise or progressive run trains; the standard "
               "schedule trains none (use network or auto)")
        self._validate_transfer()
        _check(
            self.start_phase == 1 or self.ckpt_dir is not None or self.resume is not None,
            f"start_phase={self.start_phase} needs --ckpt-dir with the weights of the earlier phases",
        )

    def _validate_transfer(self) -> None:
        """Per-block rates, ``init_from`` and the hierarchy options, checked before any data is read."""
        # the same rule the plan applies once the number of blocks is known
        block_lr_multipliers(len(self.block_lr_multipliers) or 1, self.block_lr_multipliers or None, self.layer_decay)
        _check(self.init_from is None or self.ckpt_dir is None,
               "init_from and ckpt_dir both give starting weights: --ckpt-dir continues the same task at "
               "--start-phase, --init-from starts a new task from an earlier one's blocks; give one")
        _check(self.init_from is not None or (self.reuse_blocks is None and not self.freeze_reused
                                              and not self.allow_partial),
               "reuse_blocks, freeze_reused and allow_partial choose among the blocks of --init-from: "
               "give --init-from too")
        _check(self.hierarchy is not None or (self.hierarchy_level is None and self.hierarchy_within is None),
               "hierarchy_level and hierarchy_within need --hierarchy FILE")
        _check(self.hierarchy_level is None or self.hierarchy_level >= 1,
               f"hierarchy_level counts from 1 (the top), got {self.hierarchy_level}")

    @property
    def learning_rate(self) -> float:
        """The learning rate in use: ``lr`` or the optimizer's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (YAML, JSON and ``torch.load(weights_only=True)`` safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from field names or seed 000's names; unknown keys are an error."""
        return cls(**_canonical_options(values))

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML (``.yaml``/``.yml``) or JSON file; ``overrides`` win over the file."""
        return cls.from_dict({**load_config_file(path), **_canonical_options(overrides)})

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML: ``TrainConfig.from_file`` reads it back."""
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read the mapping in a YAML or JSON config file (keys not yet checked); a file that is
    missing, not text or not valid YAML/JSON raises ``ConfigError`` naming it (and the line)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file; give a YAML or JSON file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; a config file is YAML or JSON") from None
    values = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_yaml(path, text)
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values")
    return values


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}, line {error.lineno}, column {error.colno}: not valid JSON: {error.msg}") from None


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None


# ----------------------------------------------------------------------------------------------
# names and types

# seed 000's flag name -> field name, where they differ
SEED_ALIASES = {
    "model_name": "model",
    "max_epoch": "max_epochs",
    "rand_seed": "seed",
    "dr": "lr_decay",
    "num_gpu": "nproc",
}
# short names of long fields (ModNet's per-block rates), as dashed flags and as config keys
SHORT_ALIASES = {"block_lr": "block_lr_multipliers"}
# seed 000's flags that are spelled like a field, with underscores
SEED_FIELD_FLAGS = ("dataset_name", "num_classes", "data_dir", "image_size", "batch_size", "ckpt_dir",
                    "start_phase", "optimizer", "lr", "use_test")


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {item.name: hints[item.name] for item in dataclasses.fields(TrainConfig)}


def _canonical_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Map seed names and dashed spellings to field names; translate ``freeze_layers``."""
    names = set(_field_types())
    options: dict[str, Any] = {}
    freeze_layers = None
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name == "freeze_layers":
            freeze_layers = parse_bool(value)
            continue
        name = SEED_ALIASES.get(name, SHORT_ALIASES.get(name, name))
        if name not in names:
            valid = sorted(names | set(SEED_ALIASES) | set(SHORT_ALIASES) | {"freeze_layers"})
            raise ConfigError(f"unknown option {key!r}; valid options: {', '.join(valid)}")
        options[name] = value
    if freeze_layers is not None:
        # seed 000: --freeze_layers false is standard end-to-end training
        schedule = options.get("schedule")
        if freeze_layers and schedule == "standard" or not freeze_layers and schedule not in (None, "standard"):
            raise ConfigError(f"freeze_layers={freeze_layers} contradicts schedule={schedule!r}")
        if not freeze_layers:
            options["schedule"] = "standard"
    return options


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Turn a command-line or file value into the field's type, or say what was expected."""
    args = typing.get_args(kind)
    optional = type(None) in args
    if optional:
        kind = next(arg for arg in args if arg is not type(None))
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
    base = typing.get_origin(kind) or kind
    try:
        if base is bool:
            return parse_bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            if not isinstance(value, (str, Path)):
                raise TypeError(f"expected text, got {type(value).__name__}")
            return str(value)
        if base is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [float(item) for item in items if str(item).strip() != ""]
        if base is dict:
            return parse_assignments(value)
    except ConfigError as error:
        raise ConfigError(f"{name}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(base, '__name__', base)}") from error
    raise TypeError(f"unsupported option type {kind} for {name}")  # a new field needs a rule above


def parse_assignments(value: Any) -> dict[str, Any]:
    """``{"a": 1}``, ``"a=1,b=true"`` or ``["a=1", "b=true"]`` -> a dict of YAML-typed values."""
    if isinstance(value, dict):
        return dict(value)
    import yaml

    items = value.split(",") if isinstance(value, str) else list(value)
    parsed = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        parsed[key.strip()] = yaml.safe_load(text)
    return parsed


# ----------------------------------------------------------------------------------------------
# command line


# `phasenets train --help` lists the options under these headings, in this order; each field's
# metadata names its group (a field without one is listed with --config)
OPTION_GROUPS = {
    "data": ("data", "the dataset folder, its image check, loading and augmentation"),
    "model": ("model and heads", "the architecture, its auxiliary heads, blocks reused from another run"),
    "plan": ("phase plan", "what each phase trains, for how many epochs, at what learning rates"),
    "optimisation": ("optimisation", "optimizer, learning rate, loss, batch size and random seed"),
    "cache": ("feature cache", "where the outputs of frozen blocks are kept for the later phases"),
    "output": ("output and logging", "the run directory, resuming a run, what is evaluated and recorded"),
    "hardware": ("processes and hardware", "device, processes, threads and numeric precision"),
}
_METAVARS = {int: "N", float: "X", bool: "BOOL", dict: "NAME=VALUE", str: "TEXT", list: "X,X,..."}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per option to ``parser``, in the groups of ``OPTION_GROUPS``.

    Each option's flag is its dashed name (``--max-epochs``); the original Keras trainer's flag names
    (``--max_epoch``, ``--freeze_layers``) are accepted beside it. Options left off the command line are
    absent from the parsed namespace (``SUPPRESS``), so ``config_from_args`` can tell "given" from
    "default" and layer the flags over a config file.
    """
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML or JSON file of options (field names as keys); flags override it")
    groups = {key: parser.add_argument_group(title, description) for key, (title, description) in OPTION_GROUPS.items()}
    original_spelling = {field_name: alias for alias, field_name in SEED_ALIASES.items()}
    for item in dataclasses.fields(TrainConfig):
        flags = ["--" + item.name.replace("_", "-")]
        if item.name in SEED_FIELD_FLAGS and "_" in item.name:
            flags.append("--" + item.name)
        if item.name in original_spelling:
            flags.append("--" + original_spelling[item.name])
        flags += ["--" + alias.replace("_", "-") for alias, name in SHORT_ALIASES.items() if name == item.name]
        kwargs: dict[str, Any] = {"dest": item.name, "default": argparse.SUPPRESS, "help": _help(item),
                                  "metavar": _metavar(item)}
        kind = _base_type(_field_types()[item.name])
        if kind is bool:
            kwargs.update(nargs="?", const="true")
        elif kind is dict:
            kwargs.update(action="append")
        groups.get(item.metadata.get("group"), parser).add_argument(*flags, **kwargs)
    groups["plan"].add_argument(
        "--freeze_layers", "--freeze-layers", dest="freeze_layers", default=argparse.SUPPRESS, nargs="?",
        const="true", metavar="BOOL",
        help="the original Keras trainer's switch: false trains end to end (--schedule standard), true phase "
             "by phase",
    )


def _base_type(kind: Any) -> Any:
    """``int`` for ``int | None`` (the only generic annotation the fields use), else ``kind``."""
    if typing.get_origin(kind) is not None:
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def _metavar(item: dataclasses.Field) -> str:
    """``{a,b,c}`` for an option with choices, else the field's own metavar or one for its type."""
    choices = item.metadata.get("choices")
    if choices:
        return "{" + ",".join(choices) + "}"
    return item.metadata.get("metavar") or _METAVARS.get(_base_type(_field_types()[item.name]), "VALUE")


def _help(item: dataclasses.Field) -> str:
    """The field's help text and its default (the choices are in the metavar)."""
    text = item.metadata["help"]
    default = item.default if item.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        default = str(default).lower()  # as the flag is written: --tensorboard false
    if default not in (None, "", [], {}):
        text += f" [default: {default}]"
    return text.replace("%", "%%")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the ``--config`` file (or a resumed run's saved config), then the flags."""
    names = set(_field_types()) | {"freeze_layers"}
    given = {name: value for name, value in vars(args).items() if name in names}
    if getattr(args, "config", None):
        return TrainConfig.from_file(args.config, **given)
    resume = given.get("resume")
    if resume is not None:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: no config.yaml there; is it a phasenets run directory?")
        return TrainConfig.from_file(saved, **given)
    return TrainConfig.from_dict(given)
