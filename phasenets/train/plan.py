"""The phase plan: which blocks each phase trains, which it freezes, and at what learning rates."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from phasenets.errors import ConfigError

if TYPE_CHECKING:
    from phasenets.config import TrainConfig

__all__ = [
    "DEFAULT_EPOCHS_PER_PHASE", "DEFAULT_PATIENCE", "MIN_PATIENCE_STEPS", "MIN_STEPS_PER_PHASE", "SCHEDULES", "Phase",
    "block_lr_multipliers", "build_plan", "default_patience", "phase_epochs", "steps_per_epoch",
]

# phasewise: one block per phase with an auxiliary head, earlier blocks frozen; standard: all blocks
# in one phase; progressive (ModNet): phase k trains blocks 1..k, older ones at lower rates
SCHEDULES = ("phasewise", "standard", "progressive")
# The epochs a phase may take when --max-epochs is not given, and the epochs without validation
# improvement that end it when --patience is not given: the accuracy study's settings
# (benchmarks/ACCURACY.md), chosen at 200 images per class, where an epoch of batch 32 is 50
# optimizer steps. What early stopping judges is how much a phase has optimized, and on fewer
# images an epoch is fewer steps: at 50 per class, 4 epochs are 52 steps, and the study's phases
# and end-to-end runs stopped while still improving (ACCURACY.md, "Step-scaled defaults"). So the
# defaults keep at least the steps they stand for at 200 per class: a phase may take 750 steps and
# stops after 200 without improvement. On larger data the epoch counts bind.
DEFAULT_EPOCHS_PER_PHASE = 15
DEFAULT_PATIENCE = 4
MIN_STEPS_PER_PHASE = 750
MIN_PATIENCE_STEPS = 200


@dataclass(frozen=True)
class Phase:
    """One phase of a run.

    Blocks ``1 .. first_block - 1`` are the frozen prefix: they run in eval mode under no_grad
    and only feed the trainable part. Blocks ``first_block .. last_block`` train, followed by
    the head of ``last_block`` (an auxiliary head, or nothing when ``last_block`` is the
    network's last block, which ends in its own classifier).
    """

    index: int
    name: str
    first_block: int
    last_block: int
    block_lr_scales: tuple[float, ...]  # one factor per trainable block, first to last
    max_epochs: int

    @property
    def frozen_prefix(self) -> int:
        """How many leading blocks are frozen in this phase."""
        return self.first_block - 1

    @property
    def trainable_blocks(self) -> range:
        return range(self.first_block, self.last_block + 1)

    @property
    def head_lr_scale(self) -> float:
        """The head learns with the newest block."""
        return self.block_lr_scales[-1]


def build_plan(config: TrainConfig, num_blocks: int, steps: int | None = None) -> list[Phase]:
    """The phases of ``config.schedule`` for a network of ``num_blocks`` blocks, plus fine-tuning.

    ``steps``: optimizer steps per epoch (`steps_per_epoch`), which sets the default epochs of a
    phase on small data; None: the epoch defaults alone."""
    multipliers = block_lr_multipliers(num_blocks, config.block_lr_multipliers or None, config.layer_decay)

    def scales(first: int, last: int, extra: list[float] | None = None) -> tuple[float, ...]:
        extra = extra or [1.0] * (last - first + 1)
        return tuple(multipliers[block - 1] * factor for block, factor in zip(range(first, last + 1), extra))

    epochs = phase_epochs(config, num_blocks, steps)
    if config.schedule == "phasewise":
        plan = [Phase(k, f"phase {k}", k, k, scales(k, k), epochs) for k in range(1, num_blocks + 1)]
    elif config.schedule == "standard":
        plan = [Phase(1, "standard", 1, num_blocks, scales(1, num_blocks), epochs)]
    elif config.schedule == "progressive":
        # ModNet: the further a block is from the newest one, the smaller its learning rate
        plan = [
            Phase(k, f"phase {k}", 1, k, scales(1, k, [config.progressive_lr_decay ** (k - j) for j in range(1, k + 1)]), epochs)
            for k in range(1, num_blocks + 1)
        ]
    else:  # TrainConfig validated the name
        raise ConfigError(f"unknown schedule {config.schedule!r}")

    if config.finetune_epochs > 0:
        finetune = [config.finetune_lr_scale] * num_blocks
        plan.append(Phase(len(plan) + 1, "finetune", 1, num_blocks, scales(1, num_blocks, finetune), config.finetune_epochs))

    if config.start_phase > len(plan):
        raise ConfigError(f"start_phase={config.start_phase} but the {config.schedule} plan has {len(plan)} phases")
    return plan


def steps_per_epoch(train_images: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch over ``train_images`` (each process takes ``batch_size`` a step)."""
    return max(1, math.ceil(train_images / (batch_size * world_size)))


def phase_epochs(config: TrainConfig, num_blocks: int, steps: int | None = None) -> int:
    """The most epochs one phase of ``config``'s schedule may take: ``max_epochs`` when given, else
    `DEFAULT_EPOCHS_PER_PHASE` or enough epochs of ``steps`` optimizer steps for
    `MIN_STEPS_PER_PHASE`, whichever is more; for the standard schedule's single phase, that many
    times the blocks, so that by default end-to-end training may take as many epochs as a
    phase-wise run."""
    if config.max_epochs is not None:
        return config.max_epochs
    per_phase = DEFAULT_EPOCHS_PER_PHASE
    if steps is not None:
        per_phase = max(per_phase, math.ceil(MIN_STEPS_PER_PHASE / steps))
    return per_phase * (num_blocks if config.schedule == "standard" else 1)


def default_patience(steps: int | None = None) -> int:
    """The early-stopping patience when none is given: `DEFAULT_PATIENCE` epochs or the epochs of
    ``steps`` optimizer steps that make `MIN_PATIENCE_STEPS`, whichever is more."""
    if steps is None:
        return DEFAULT_PATIENCE
    return max(DEFAULT_PATIENCE, math.ceil(MIN_PATIENCE_STEPS / steps))


def block_lr_multipliers(
    num_blocks: int, spec: str | Sequence[float] | None = None, layer_decay: float | None = None
) -> list[float]:
    """One learning-rate factor per block, first to last.

    ``spec``: the factors themselves, ``"0.4,0.65,1"`` or a list, one per block (ModNet trained
    layer1/2/3 at 0.4, 0.65 and 1 times the rate). ``layer_decay``: block ``k`` of ``n`` trains
    at ``layer_decay ** (n - k)``, so the last block keeps the full rate and each earlier one a
    further factor less. Neither: all 1. A factor of 0 leaves a block as it is.
    """
    if spec is not None and layer_decay is not None:
        raise ConfigError("give per-block factors or a layer_decay, not both")
    if layer_decay is not None:
        if not 0 < layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1]; got {layer_decay}")
        return [layer_decay ** (num_blocks - k) for k in range(1, num_blocks + 1)]
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return [1.0] * num_blocks
    try:
        factors = [float(part) for part in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise ConfigError(f"block learning-rate factors must be numbers like 0.4,0.65,1; got {spec!r}") from None
    if len(factors) != num_blocks:
        raise ConfigError(f"{len(factors)} block learning-rate factors for {num_blocks} blocks: give one per block")
    if any(factor < 0 for factor in factors):
        raise ConfigError(f"block learning-rate factors must be >= 0; got {factors}")
    return factors
