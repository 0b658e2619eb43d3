"""What a trained network predicts with: its classifier, or the mean of every phase's head, chosen
on validation by ``prediction=auto`` and recorded in the checkpoint and summary."""
from __future__ import annotations

import json

import pytest

from phasenets.config import ConfigError
from phasenets.train import PhaseTrainer
from phasenets.train.curriculum import task_splits
from phasenets.train.evaluate import evaluate_checkpoint, load_trained_model, score_samples
from phasenets.train.forgetting import forgetting_test

from conftest import IMAGE_SIZE, tiny_config


def _train(data, output, **options):
    config = tiny_config(data, output, model="lenet5", image_size=IMAGE_SIZE, patience=0, **options)
    result = PhaseTrainer(config).fit()
    return result, json.loads((output / "summary.json").read_text())["final"]


def _metrics(checkpoint, data, split, prediction):
    model, trained = load_trained_model(checkpoint)
    model.prediction = prediction
    samples = task_splits(data, trained.task).split(split)
    tracker = score_samples(model, samples, trained.normalization, batch_size=8, loader="torch", num_workers=0,
                            device="cpu")
    return tracker.compute()


def _accuracy(checkpoint, data, split, prediction):
    return _metrics(checkpoint, data, split, prediction).accuracy


def test_auto_scores_both_on_validation_and_keeps_the_heads_unless_the_network_scores_higher(tiny_data, tmp_path):
    result, final = _train(tiny_data, tmp_path / "auto")
    prediction = final["prediction"]
    scores = prediction["validation"]
    assert prediction["setting"] == "auto" and set(scores) == {"network", "heads"}
    assert prediction["chosen"] == ("heads" if scores["heads"] >= scores["network"] else "network")
    # the scores are the checkpoint's own on the validation images, each way of predicting
    for mode, score in scores.items():
        assert _accuracy(result.checkpoint, tiny_data, "validation", mode) == pytest.approx(score)
    model, _ = load_trained_model(result.checkpoint)
    assert model.prediction == prediction["chosen"] and result.model.prediction == prediction["chosen"]
    # and the run's final test score is the checkpoint's, predicting the chosen way
    evaluated = evaluate_checkpoint(result.checkpoint, tiny_data, "test", num_workers=0)
    assert evaluated["accuracy"] == pytest.approx(final["accuracy"]) and evaluated["prediction"] == prediction["chosen"]


def test_prediction_can_be_set_either_way(tiny_data, tmp_path):
    for mode in ("heads", "network"):
        result, final = _train(tiny_data, tmp_path / mode, prediction=mode)
        assert final["prediction"] == {"setting": mode, "chosen": mode, "validation": None}
        assert load_trained_model(result.checkpoint)[0].prediction == mode
        assert _accuracy(result.checkpoint, tiny_data, "test", mode) == pytest.approx(final["accuracy"])
    # the forgetting test puts blocks under the old network's classifier: it never averages the old heads
    old = tmp_path / "heads" / "checkpoints" / "final.pt"
    rows = forgetting_test(old, old, tiny_data, num_workers=0, loader="torch")
    network, heads = (_metrics(old, tiny_data, "test", mode) for mode in ("network", "heads"))
    assert network.loss != pytest.approx(heads.loss)  # (the accuracies may well agree on 12 easy images)
    assert [(row.accuracy, row.loss) for row in rows] == [(network.accuracy, pytest.approx(network.loss))] * 2


def test_a_standard_run_predicts_with_its_network(tiny_data, tmp_path):
    _, final = _train(tiny_data, tmp_path / "standard", schedule="standard")
    assert final["prediction"] == {"setting": "auto", "chosen": "network", "validation": None}  # no trained heads
    with pytest.raises(ConfigError, match="prediction=heads needs the auxiliary heads"):
        tiny_config(tiny_data, tmp_path / "forced", schedule="standard", prediction="heads")
