"""`phasenets` commands end to end on small datasets written by the data tools."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from phasenets.cli import main


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a small shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """scikit-learn's digits at 16 px: 10 classes, 8 train, 3 validation and 3 test images each."""
    root = tmp_path_factory.mktemp("digits")
    assert main(["data", "import", "digits", "--out", str(root), "--per-class", "8", "--val-per-class", "3",
                 "--test-per-class", "3", "--image-size", "16"]) == 0
    return root


FAST = ["--model_name", "lenet5", "--image_size", "16", "--num-workers", "0", "--loader", "torch",
        "--tensorboard", "false", "--batch_size", "16"]


def test_train_with_seed_flags_then_eval(digits, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data_dir", str(digits), "--dataset_name", "digits", "--freeze_layers", "false",
                 "--optimizer", "Adadelta", "--max_epoch", "2", "--use_test", "true", "--rand_seed", "2",
                 "--dr", "0.001", "--output", str(run), *FAST])
    assert code == 0
    assert f"run directory: {run}" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["schedule"] == "standard" and summary["config"]["num_classes"] == 10
    assert summary["config"]["lr_schedule"] == "inverse_time"

    assert main(["eval", "--checkpoint", str(run), "--data-dir", str(digits),
                 "--num-workers", "0", "--loader", "torch", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["count"] == 30 and metrics["top5"] is not None
    assert metrics["accuracy"] == pytest.approx(summary["final"]["accuracy"])
    assert len(metrics["confusion_matrix"]) == 10


def test_train_reports_dataset_problems(digits, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(digits, broken)
    shutil.rmtree(broken / "validation")
    assert main(["train", "--data-dir", str(broken), "--output", str(tmp_path / "run"), *FAST]) == 2
    error = capsys.readouterr().err
    assert "phasenets train: error:" in error and "--val-split" in error


def test_data_check_fails_on_an_empty_class(digits, tmp_path, capsys):
    assert main(["data", "check", str(digits)]) == 0
    broken = tmp_path / "broken"
    shutil.copytree(digits, broken)
    shutil.rmtree(broken / "train" / "3")
    (broken / "train" / "3").mkdir()
    assert main(["data", "check", str(broken)]) != 0
    assert "3" in capsys.readouterr().out


def test_summary_and_its_errors(capsys):
    assert main(["summary", "--model", "lenet5", "--num-classes", "10", "--image-size", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    assert main(["summary", "--model", "lenet6", "--num-classes", "10"]) == 2
    assert "lenet5" in capsys.readouterr().err  # the valid names are listed
    assert main(["summary", "--model", "alexnet", "--num-classes", "10", "--image-size", "8"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_demo_on_a_tiny_budget(tmp_path, capsys):
    code = main(["demo", "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "runs"),
                 "--max-epochs", "1", "--num-workers", "0"])
    assert code == 0
    out = capsys.readouterr().out
    for schedule in ("phasewise", "standard"):
        assert str(tmp_path / "runs" / schedule) in out
        assert (tmp_path / "runs" / schedule / "summary.json").exists()
    for split in ("train", "validation", "test"):
        assert len(list((tmp_path / "data" / split).iterdir())) == 10
