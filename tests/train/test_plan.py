"""The phase plan of each schedule."""
from __future__ import annotations

import pytest

from phasenets.config import ConfigError, TrainConfig
from phasenets.train import build_plan
from phasenets.train.plan import default_patience, phase_epochs, steps_per_epoch


def blocks(plan):
    return [(phase.first_block, phase.last_block) for phase in plan]


def test_phasewise_trains_one_block_per_phase():
    plan = build_plan(TrainConfig(), 5)
    assert blocks(plan) == [(k, k) for k in range(1, 6)]
    assert [phase.frozen_prefix for phase in plan] == [0, 1, 2, 3, 4]
    assert all(phase.block_lr_scales == (1.0,) for phase in plan)


def test_standard_is_one_phase_over_everything():
    plan = build_plan(TrainConfig(schedule="standard", max_epochs=7), 4)
    assert blocks(plan) == [(1, 4)] and plan[0].max_epochs == 7 and plan[0].frozen_prefix == 0


def test_steps_per_epoch_counts_every_process_batch():
    assert steps_per_epoch(400, 32) == 13  # the last, partial batch is a step too
    assert steps_per_epoch(1600, 32) == 50
    assert steps_per_epoch(1600, 32, world_size=2) == 25
    assert steps_per_epoch(3, 32) == 1


def test_short_epochs_get_the_default_steps_not_the_default_epochs():
    # 50 steps an epoch (200 images per class, batch 32): the epoch defaults hold as they are
    assert phase_epochs(TrainConfig(), 5, steps=50) == 15 and default_patience(50) == 4
    assert phase_epochs(TrainConfig(schedule="standard"), 5, steps=50) == 75
    # 13 steps an epoch (50 per class): 750 steps a phase, 200 steps of patience
    assert phase_epochs(TrainConfig(), 5, steps=13) == 58 and default_patience(13) == 16
    assert phase_epochs(TrainConfig(schedule="standard"), 5, steps=13) == 5 * 58
    assert [phase.max_epochs for phase in build_plan(TrainConfig(), 3, steps=13)] == [58] * 3
    # long epochs never lower the defaults, and given values are kept whatever the epoch
    assert phase_epochs(TrainConfig(), 5, steps=250) == 15 and default_patience(250) == 4
    assert phase_epochs(TrainConfig(max_epochs=3), 5, steps=1) == 3
    assert phase_epochs(TrainConfig(), 5) == 15 and default_patience() == 4


def test_progressive_slows_older_blocks():
    plan = build_plan(TrainConfig(schedule="progressive", progressive_lr_decay=0.5), 3)
    assert blocks(plan) == [(1, 1), (1, 2), (1, 3)]
    assert plan[2].block_lr_scales == (0.25, 0.5, 1.0)
    assert plan[2].head_lr_scale == 1.0


def test_finetune_phase_and_block_multipliers():
    config = TrainConfig(finetune_epochs=2, finetune_lr_scale=0.1, block_lr_multipliers=[1, 2, 4])
    plan = build_plan(config, 3)
    assert [phase.name for phase in plan] == ["phase 1", "phase 2", "phase 3", "finetune"]
    assert plan[1].block_lr_scales == (2.0,)
    assert plan[3].block_lr_scales == pytest.approx((0.1, 0.2, 0.4))
    assert plan[3].max_epochs == 2 and plan[3].frozen_prefix == 0


def test_plan_errors():
    with pytest.raises(ConfigError, match="3 block learning-rate factors for 5 blocks"):
        build_plan(TrainConfig(block_lr_multipliers=[1, 1, 1]), 5)
    with pytest.raises(ConfigError, match="start_phase=6 but the phasewise plan has 5 phases"):
        build_plan(TrainConfig(start_phase=6, ckpt_dir="x"), 5)
