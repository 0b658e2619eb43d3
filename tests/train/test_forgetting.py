"""The ModNet forgetting test on two tiny LeNet-5 tasks: 3 patterns, then 2 of them from its blocks."""
from __future__ import annotations

import pytest

from phasenets.data import DatasetError
from phasenets.models import build_model
from phasenets.train import PhaseTrainer, evaluate_checkpoint
from phasenets.train.forgetting import format_forgetting, forgetting_test
from phasenets.train.transfer import init_from

from conftest import tiny_config, write_dataset


@pytest.fixture(scope="module")
def tasks(tiny_data, tmp_path_factory):
    """(old run, new run, new task's data): the new LeNet starts from blocks 1-4 of the old one."""
    root = tmp_path_factory.mktemp("forgetting")
    old = PhaseTrainer(tiny_config(tiny_data, root / "old", model="lenet5", image_size=16, schedule="standard",
                                   max_epochs=2)).fit().run_dir
    new_data = write_dataset(root / "task2", {"train": 12, "validation": 4}, classes=("ring", "stripes"), seed=3)
    model = build_model("lenet5", 2, in_channels=1, image_size=16)
    init_from(model, old, reuse_blocks="1-4")
    new = PhaseTrainer(tiny_config(new_data, root / "new", model="lenet5", image_size=16, schedule="standard",
                                   max_epochs=2), model=model).fit().run_dir
    return old, new, new_data


def test_forgetting_table(tasks, tiny_data):
    old, new, _ = tasks
    rows = forgetting_test(old, [new, old], tiny_data, num_workers=0, loader="torch")
    baseline = evaluate_checkpoint(old / "checkpoints" / "final.pt", tiny_data, "test", num_workers=0, loader="torch")
    assert rows[0].model == "old network (old)" and rows[0].new_blocks == []
    assert rows[0].accuracy == pytest.approx(baseline["accuracy"]) and rows[0].count == 3 * 4
    assert rows[1].model == "new blocks 1-4 + old head" and rows[1].new_blocks == [1, 2, 3, 4]
    assert rows[1].checkpoint.endswith("new/checkpoints/final.pt")
    # the old network's own blocks under its head are the old network
    assert rows[2].accuracy == pytest.approx(rows[0].accuracy) and rows[2].loss == pytest.approx(rows[0].loss)
    table = format_forgetting(rows)
    assert table.splitlines()[0].split() == ["model", "accuracy", "on", "old", "task"]
    assert f"new blocks 1-4 + old head  {rows[1].accuracy:.4f} (12 images)" in table


def test_chosen_blocks_and_split(tasks, tiny_data):
    old, new, _ = tasks
    rows = forgetting_test(old / "checkpoints" / "final.pt", new, tiny_data, blocks="1,3", split="validation",
                           num_workers=0, loader="torch")
    assert rows[1].model == "new blocks 1,3 + old head" and rows[1].count == 3 * 4


def test_wrong_data_or_networks(tasks, tiny_data, tmp_path):
    old, new, new_data = tasks
    with pytest.raises(DatasetError, match="give the old task's data"):
        forgetting_test(old, new, new_data, num_workers=0, loader="torch")
    other = PhaseTrainer(tiny_config(tiny_data, tmp_path / "other", model="lenet5", image_size=20,
                                     schedule="standard", max_epochs=1)).fit().run_dir
    with pytest.raises(ValueError, match="their blocks cannot be swapped"):
        forgetting_test(old, other, tiny_data, num_workers=0, loader="torch")
