"""The trainer loop: freezing, gradients, early stopping, best-weights restore and run artifacts."""
from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from phasenets.config import TrainConfig
from phasenets.data import DatasetError
from phasenets.train import PhaseTrainer
from phasenets.train.checkpoint import SHARED_STATE_KEY, load_checkpoint
from phasenets.train.plan import MIN_PATIENCE_STEPS

from conftest import CLASSES, tiny_config, tiny_net, write_dataset

STEPS_PER_EPOCH = 5  # 36 training images in batches of 8
EPOCHS = 2


def _block_entries(state: dict, block: int) -> dict:
    prefix = f"blocks.{block - 1}."
    return {name: value for name, value in state.items() if name.startswith(prefix)}


def _assert_equal_states(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_frozen_blocks_stay_bitwise_unchanged(phasewise_run):
    result, initial, _ = phasewise_run
    run = result.run_dir / "checkpoints"
    final = load_checkpoint(run / "final.pt")["model_state"]
    for phase in (1, 2, 3):
        trained = load_checkpoint(run / f"phase{phase}-last.pt")["model_state"]
        # the block trained in this phase and those before it (weights and batch-norm statistics)
        # never move again
        for earlier in range(1, phase + 1):
            _assert_equal_states(_block_entries(trained, earlier), _block_entries(final, earlier))
        # and the blocks after it were untouched while it trained
        for later in range(phase + 1, 4):
            _assert_equal_states(_block_entries(trained, later), _block_entries(initial, later))


def test_weights_outside_the_trained_stages_are_written_once(phasewise_run):
    """phase1-shared.pt holds every weight phase 1 does not train; each later phase's shared file
    holds only what the phase before it trained and names that phase's file for the rest, and
    every phase checkpoint still loads whole."""
    result, _, _ = phasewise_run
    run = result.run_dir / "checkpoints"
    raw = {path.name: torch.load(path, weights_only=True) for path in run.glob("phase*.pt")}
    final = load_checkpoint(run / "final.pt")["model_state"]
    assert SHARED_STATE_KEY not in raw["phase1-shared.pt"]
    assert raw["phase1-shared.pt"]["model_state"].keys() == final.keys() - raw["phase1-last.pt"]["model_state"].keys()
    for phase in (2, 3):
        shared = raw[f"phase{phase}-shared.pt"]
        assert shared[SHARED_STATE_KEY] == f"phase{phase - 1}-shared.pt"
        previous_stage = raw[f"phase{phase - 1}-last.pt"]["model_state"].keys()
        assert shared["model_state"].keys() == previous_stage - raw[f"phase{phase}-last.pt"]["model_state"].keys()
        assert load_checkpoint(run / f"phase{phase}-last.pt")["model_state"].keys() == final.keys()


def test_only_the_current_phase_gets_gradients(phasewise_run):
    _, _, counts = phasewise_run
    steps = EPOCHS * STEPS_PER_EPOCH
    for name, count in counts.items():
        # every block and every auxiliary head trains in exactly one phase
        assert count == steps, f"{name} got {count} gradients, expected {steps}"


def test_run_directory_contents(phasewise_run):
    result, _, _ = phasewise_run
    run = result.run_dir
    for name in ("config.yaml", "metrics.csv", "summary.json", "accuracy.png", "loss.png"):
        assert (run / name).stat().st_size > 0, name
    assert TrainConfig.from_file(run / "config.yaml").num_classes == len(CLASSES)

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert list(rows[0]) == ["phase", "epoch", "split", "loss", "accuracy", "top5", "lr", "seconds"]
    assert [(r["phase"], r["epoch"], r["split"]) for r in rows if r["split"] != "test"] == [
        (str(p), str(e), s) for p in (1, 2, 3) for e in (1, 2) for s in ("train", "validation")
    ]
    assert len([r for r in rows if r["split"] == "test"]) == 3
    assert all(r["top5"] == "" for r in rows)  # 3 classes: top-5 is meaningless

    checkpoint = load_checkpoint(run / "checkpoints" / "phase2-last.pt")
    assert checkpoint["classes"] == sorted(CLASSES)
    assert checkpoint["phase"] == 2 and checkpoint["epoch"] == EPOCHS and checkpoint["completed"]
    for key in ("rng", "config", "normalization", "results", "early_stopping"):
        assert key in checkpoint
    # a completed phase is not continued: its closing checkpoint leaves the optimizer state out,
    # which a checkpoint in the middle of a phase keeps
    assert not {"optimizer", "scheduler", "scaler"} & checkpoint.keys()
    mid_phase = load_checkpoint(run / "checkpoints" / "phase2-best.pt")
    assert not mid_phase["completed"] and {"optimizer", "scheduler", "scaler"} <= mid_phase.keys()

    summary = json.loads((run / "summary.json").read_text())
    assert [phase["index"] for phase in summary["phases"]] == [1, 2, 3]
    confusion = summary["final"]["confusion_matrix"]
    assert len(confusion) == 3 and sum(map(sum, confusion)) == 4 * 3
    assert result.test_accuracy == summary["final"]["accuracy"]
    assert set(summary["final"]["per_class_accuracy"]) == set(CLASSES)


def test_the_last_phase_and_the_run_report_one_test_score(phasewise_run):
    """The last phase's network is the whole network: its test score is the run's, computed once,
    and the summary, the metrics file and the result say the same, naming the weights it belongs to."""
    result, _, _ = phasewise_run
    summary = json.loads((result.run_dir / "summary.json").read_text())
    last = result.phases[-1]
    assert last.test == {key: result.final[key] for key in ("loss", "accuracy", "top5", "count")}
    assert summary["phases"][-1]["test"] == last.test
    assert summary["final"]["weights"] == {"phase": 3, "best_epoch": last.best_epoch}
    rows = [r for r in csv.DictReader(open(result.run_dir / "metrics.csv")) if r["split"] == "test"]
    assert [(r["phase"], r["epoch"]) for r in rows][-1] == ("3", str(last.best_epoch))
    assert float(rows[-1]["accuracy"]) == pytest.approx(result.test_accuracy, abs=1e-6) and rows[-1]["lr"] == ""


def test_default_patience_follows_the_steps_of_an_epoch(tiny_data, tmp_path):
    """Without --patience a run waits 200 optimizer steps' worth of epochs (5 steps each here), and
    records the patience it used; a given patience is kept."""
    derived = PhaseTrainer(tiny_config(tiny_data, tmp_path / "derived", schedule="standard", max_epochs=1),
                           model=tiny_net()).fit()
    assert TrainConfig.from_file(derived.run_dir / "config.yaml").patience == math.ceil(
        MIN_PATIENCE_STEPS / STEPS_PER_EPOCH) == 40
    given = PhaseTrainer(tiny_config(tiny_data, tmp_path / "given", schedule="standard", max_epochs=1, patience=3),
                         model=tiny_net()).fit()
    assert TrainConfig.from_file(given.run_dir / "config.yaml").patience == 3


def test_early_stopping_restores_best_weights(tmp_path):
    # validation labels are a permutation of the train labels: the better the network learns,
    # the worse it validates, so the first epoch is the best and patience runs out after it
    data = write_dataset(tmp_path / "data", {"train": 12}, seed=1)
    swapped = dict(zip(CLASSES, CLASSES[1:] + CLASSES[:1]))
    write_dataset(tmp_path / "patterns", {"validation": 4}, seed=2)
    for source, target in swapped.items():
        shutil.copytree(tmp_path / "patterns" / "validation" / source, data / "validation" / target)
    config = tiny_config(data, tmp_path / "run", schedule="standard", max_epochs=8, patience=2, monitor="loss")
    result = PhaseTrainer(config, model=tiny_net()).fit()

    phase = result.phases[0]
    assert phase.epochs == phase.best_epoch + 2 < 8
    best = load_checkpoint(result.run_dir / "checkpoints" / "phase1-best.pt")
    assert best["epoch"] == phase.best_epoch
    _assert_equal_states(best["model_state"], result.model.state_dict())
    rows = [r for r in csv.DictReader(open(result.run_dir / "metrics.csv")) if r["split"] == "validation"]
    losses = [float(r["loss"]) for r in rows]
    assert losses.index(min(losses)) + 1 == phase.best_epoch
    assert phase.validation["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_start_phase_from_an_earlier_run(phasewise_run, tmp_path):
    earlier, _, _ = phasewise_run
    config = tiny_config(TrainConfig.from_file(earlier.run_dir / "config.yaml").data_dir, tmp_path / "run",
                         start_phase=3, ckpt_dir=str(earlier.run_dir), max_epochs=1)
    result = PhaseTrainer(config, model=tiny_net()).fit()
    assert [phase.index for phase in result.phases] == [3]
    before = load_checkpoint(earlier.run_dir / "checkpoints" / "phase2-best.pt")["model_state"]
    for block in (1, 2):
        _assert_equal_states(_block_entries(before, block), _block_entries(result.model.state_dict(), block))


def test_progressive_with_finetuning_and_bf16(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "run", schedule="progressive", finetune_epochs=1, max_epochs=1,
                         finetune_lr_scale=0.5, amp="bf16", lr_schedule="cosine")
    result = PhaseTrainer(config, model=tiny_net()).fit()
    assert [phase.name for phase in result.phases] == ["phase 1", "phase 2", "phase 3", "finetune"]
    assert result.final["count"] == 12


@pytest.mark.parametrize("problem, message", [
    ("no_validation", "validation"),
    ("empty_class", "square"),
    ("class_sets", "extra"),
])
def test_dataset_problems_stop_before_training(tmp_path, problem, message):
    data = write_dataset(tmp_path / "data", {"train": 3, "validation": 2})
    if problem == "no_validation":
        shutil.rmtree(data / "validation")
    elif problem == "empty_class":
        shutil.rmtree(data / "train" / "square")
        (data / "train" / "square").mkdir()
    else:
        shutil.copytree(data / "validation" / "ring", data / "validation" / "extra")
    with pytest.raises(DatasetError, match=message):
        PhaseTrainer(tiny_config(data, tmp_path / "run"), model=tiny_net()).fit()
    assert not (tmp_path / "run").exists()


def test_the_log_says_what_data_and_which_loader_a_run_uses(tiny_data, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="phasenets"):
        PhaseTrainer(tiny_config(tiny_data, tmp_path / "run", schedule="standard", max_epochs=1), model=tiny_net()).fit()
    assert "data: 36 train, 12 validation, 12 test images in 3 classes; loader: PIL + DataLoader, in this process" \
        in caplog.text
    assert "epochs: 5 optimizer steps each; at most 1 a phase, ending after 40 without validation improvement" \
        in caplog.text


def test_fine_tuning_keeps_the_network_it_started_from_unless_an_epoch_beats_it(tiny_data, tmp_path):
    """The fine-tuning phase ends in the last block's own classifier, like the phase before it:
    its starting network is validated as epoch 0 and kept when every epoch does worse (here a
    rate 10^4 times too high wrecks the weights at the first step)."""
    torch.manual_seed(0)
    # cache off: phase 3 then scores the very computation the fine-tuning phase starts from
    config = tiny_config(tiny_data, tmp_path / "run", patience=0, finetune_epochs=2, finetune_lr_scale=1e4,
                         cache="off")
    result = PhaseTrainer(config, model=tiny_net()).fit()
    phase3, finetune = result.phases[2], result.phases[3]
    assert finetune.name == "finetune" and finetune.epochs == 2 and finetune.best_epoch == 0
    assert finetune.validation == phase3.validation
    before = load_checkpoint(result.run_dir / "checkpoints" / "phase3-last.pt")["model_state"]
    _assert_equal_states(result.model.state_dict(), before)
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    assert [row["epoch"] for row in rows if row["phase"] == "4" and row["split"] == "validation"] == ["0", "1", "2"]


def test_model_options_reach_the_registry_and_the_run_config(tiny_data, tmp_path):
    from phasenets.train import prepare_run

    config = tiny_config(tiny_data, tmp_path / "run", model="lenet5", image_size=28,
                         model_options={"downsample": "invertible"})
    setup = prepare_run(config)
    try:
        assert setup.model.block_output_shapes[:2] == [(24, 12, 12), (64, 4, 4)]
        assert setup.model.config.downsample == "invertible"
    finally:
        setup.close()
    assert "downsample: invertible" in (tmp_path / "run" / "config.yaml").read_text()
