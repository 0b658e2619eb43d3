"""The phase plan: which blocks each phase trains, which it freezes, and at what learning rates."""
from __future__ import annotations

from dataclasses import dataclass

from phasenets.config import ConfigError, TrainConfig
from phasenets.train.transfer import block_lr_multipliers

__all__ = ["Phase", "build_plan"]


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


def build_plan(config: TrainConfig, num_blocks: int) -> list[Phase]:
    """The phases of ``config.schedule`` for a network of ``num_blocks`` blocks, plus fine-tuning."""
    try:
        multipliers = block_lr_multipliers(num_blocks, config.block_lr_multipliers or None, config.layer_decay)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    def scales(first: int, last: int, extra: list[float] | None = None) -> tuple[float, ...]:
        extra = extra or [1.0] * (last - first + 1)
        return tuple(multipliers[block - 1] * factor for block, factor in zip(range(first, last + 1), extra))

    epochs = config.max_epochs
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
