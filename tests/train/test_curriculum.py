"""ModNet task chaining through the trainer: a hierarchy's level 1, then level 2 from its frozen blocks."""
from __future__ import annotations

import pytest
import torch

from phasenets.config import ConfigError, TrainConfig
from phasenets.train import PhaseTrainer, build_plan, evaluate_checkpoint
from phasenets.train.checkpoint import load_checkpoint
from phasenets.train.curriculum import plan_around_frozen
from phasenets.train.forgetting import forgetting_test

from conftest import tiny_config

# level 1: round vs angular; level 2 inside angular: lines vs box
HIERARCHY = "round: [ring]\nangular:\n  lines: [stripes]\n  box: [square]\n"
LENET = dict(model="lenet5", image_size=16, max_epochs=1, patience=0)


@pytest.fixture(scope="module")
def curriculum(tiny_data, tmp_path_factory):
    """(level-1 run, level-2 run): level 2 reuses blocks 1-2 of level 1, frozen, phase-wise."""
    root = tmp_path_factory.mktemp("curriculum")
    hierarchy = root / "hierarchy.yaml"
    hierarchy.write_text(HIERARCHY)
    level1 = PhaseTrainer(tiny_config(tiny_data, root / "level1", hierarchy=str(hierarchy), schedule="standard",
                                      **LENET)).fit()
    level2 = PhaseTrainer(tiny_config(
        tiny_data, root / "level2", hierarchy=str(hierarchy), hierarchy_within="angular", init_from=str(level1.run_dir),
        reuse_blocks="1-2", freeze_reused=True, **LENET)).fit()
    return level1, level2


def test_levels_relabel_the_same_folder(curriculum):
    level1, level2 = curriculum
    assert level1.classes == ["angular", "round"] and level2.classes == ["box", "lines"]
    assert level1.final["count"] == 3 * 4 and level2.final["count"] == 2 * 4  # test images of the task's classes


def test_reused_frozen_blocks_never_change_and_their_phases_are_skipped(curriculum):
    level1, level2 = curriculum
    assert [phase.index for phase in level2.phases] == [3, 4, 5]
    old = load_checkpoint(level1.checkpoint)["model_state"]
    new = load_checkpoint(level2.checkpoint)
    for key, value in new["model_state"].items():
        if key.startswith(("blocks.0.", "blocks.1.")):
            assert torch.equal(value, old[key]), key  # bit for bit, through three phases
    assert new["frozen_blocks"] == [1, 2]
    # block 1 reads inputs the way it was trained to: the level-1 run's statistics
    assert new["normalization"] == load_checkpoint(level1.checkpoint)["normalization"]
    first_trained = load_checkpoint(level2.run_dir / "checkpoints" / "phase3-best.pt")
    assert first_trained["task"]["within"] == "angular"


def test_a_continued_run_keeps_reused_blocks_frozen(curriculum, tiny_data, tmp_path):
    """Freezing is not in a state dict: a run continued from a checkpoint (--ckpt-dir, or --resume)
    freezes the blocks the checkpoint lists, even in a schedule that trains every block."""
    level1, level2 = curriculum
    saved = load_checkpoint(level2.checkpoint)
    continued = PhaseTrainer(tiny_config(tiny_data, tmp_path / "continued", hierarchy=saved["config"]["hierarchy"],
                                         hierarchy_within="angular", ckpt_dir=str(level2.run_dir),
                                         schedule="standard", **LENET)).fit()
    final = load_checkpoint(continued.checkpoint)
    assert final["frozen_blocks"] == [1, 2]
    old = load_checkpoint(level1.checkpoint)["model_state"]
    for key, value in final["model_state"].items():
        if key.startswith(("blocks.0.", "blocks.1.")):
            assert torch.equal(value, old[key]), key
        elif key.startswith("blocks.2.") and key.endswith("weight"):
            assert not torch.equal(value, saved["model_state"][key]), f"{key} should have trained"


def test_runs_evaluate_and_compare_through_their_hierarchy(curriculum, tiny_data):
    level1, level2 = curriculum
    metrics = evaluate_checkpoint(level1.run_dir, tiny_data, "test", num_workers=0, loader="torch")
    assert metrics["accuracy"] == pytest.approx(level1.final["accuracy"])
    assert list(metrics["per_class_accuracy"]) == ["angular", "round"]
    rows = forgetting_test(level1.run_dir, level2.run_dir, tiny_data, num_workers=0, loader="torch")
    assert rows[0].accuracy == pytest.approx(level1.final["accuracy"]) and rows[0].count == 12
    assert rows[1].new_blocks == [1, 2, 3, 4] and rows[1].count == 12


def test_plan_around_frozen_blocks():
    standard = build_plan(TrainConfig(schedule="standard", block_lr_multipliers=[0.1, 0.2, 0.5, 1]), 4)
    (phase,), skipped = plan_around_frozen(standard, {1, 2})
    assert (phase.first_block, phase.frozen_prefix, phase.block_lr_scales, skipped) == (3, 2, (0.5, 1.0), [])
    (phase,), _ = plan_around_frozen(standard, {2})  # a frozen block inside the range stays in it, untrained
    assert phase.first_block == 1 and len(phase.block_lr_scales) == 4
    phasewise = build_plan(TrainConfig(finetune_epochs=1), 3)
    kept, skipped = plan_around_frozen(phasewise, {1, 2})
    assert [p.name for p in kept] == ["phase 3", "finetune"] and [p.index for p in skipped] == [1, 2]
    assert kept[1].first_block == 3
    with pytest.raises(ConfigError, match="nothing is left to train"):
        plan_around_frozen(build_plan(TrainConfig(), 2), {1, 2})


def test_block_lr_flags():
    assert TrainConfig.from_dict({"block-lr": "0.4,0.65,1"}).block_lr_multipliers == [0.4, 0.65, 1.0]
    assert [p.block_lr_scales for p in build_plan(TrainConfig(layer_decay=0.5, schedule="standard"), 3)] == [
        (0.25, 0.5, 1.0)]
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(layer_decay=0.5, block_lr_multipliers=[1, 1])
    with pytest.raises(ConfigError, match="give --init-from too"):
        TrainConfig(freeze_reused=True)
    with pytest.raises(ConfigError, match="give one"):
        TrainConfig(init_from="a", ckpt_dir="b")
