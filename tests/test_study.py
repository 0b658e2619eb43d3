"""The accuracy study: a tiny real run through the CLI, resuming, and the report built from records."""
from __future__ import annotations

import json

import pytest

from phasenets.cli import main
from phasenets.study import (
    REPORT_BEGIN, REPORT_END, RESULTS_FILE, _append_result, format_table, load_results, plan_runs,
    summarize_results, write_report,
)

TINY = ["--models", "lenet5", "--sizes", "2", "--seeds", "1", "--schedules", "phasewise,standard",
        "--epochs-per-phase", "1", "--test-per-class", "2", "--loader", "torch", "--num-workers", "0"]


@pytest.fixture
def fashion_mnist():
    from phasenets.data.tools import FASHION_MNIST_PACKAGE, _package_files

    try:
        _package_files(FASHION_MNIST_PACKAGE)
    except FileNotFoundError as missing:
        pytest.skip(str(missing))


def _record(model="lenet5", per_class=50, schedule="standard", seed=0, accuracy=0.5, seconds=10.0):
    return {
        "key": f"{model}-{per_class}-{schedule}-{seed}", "model": model, "per_class": per_class,
        "schedule": schedule, "seed": seed, "test_accuracy": accuracy, "seconds": seconds,
        "phases": [{"name": "p", "epochs": 3, "seconds": 2.0}], "settings": {"epochs_per_phase": 3}, "cache": "auto",
        "machine": "test machine", "finished": "2026-01-01T00:00:00+00:00", "command": "phasenets bench accuracy",
    }


def test_tiny_study_writes_results_table_and_plot_then_resumes(tmp_path, fashion_mnist, capsys):
    output = tmp_path / "study"
    assert main(["bench", "accuracy", "--output", str(output), *TINY]) == 0
    assert "2 new runs, 2 in all" in capsys.readouterr().out

    records = load_results(output / RESULTS_FILE)
    assert sorted(record["schedule"] for record in records) == ["phasewise", "standard"]
    for record in records:
        assert 0.0 <= record["test_accuracy"] <= 1.0 and record["test_images"] == 20  # 2 per class
        assert record["seconds"] > 0 and record["command"].startswith("phasenets bench accuracy --output")
    phasewise = next(record for record in records if record["schedule"] == "phasewise")
    assert [phase["name"] for phase in phasewise["phases"]] == [f"phase {k}" for k in range(1, 6)]

    report = (output / "ACCURACY.md").read_text()
    assert "| lenet5 | 2 | phasewise | 1 |" in report and "| lenet5 | 2 | standard | 1 |" in report
    assert records[0]["command"] in report
    assert (output / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    lines_before = (output / RESULTS_FILE).read_text()
    assert main(["bench", "accuracy", "--output", str(output), *TINY]) == 0
    assert "0 new runs, 2 in all" in capsys.readouterr().out
    assert (output / RESULTS_FILE).read_text() == lines_before


def test_summary_groups_seeds_and_compares_with_standard():
    records = [_record(seed=0, accuracy=0.60), _record(seed=1, accuracy=0.70),
               _record(schedule="phasewise", seed=0, accuracy=0.50, seconds=5.0),
               _record(schedule="phasewise", seed=1, accuracy=0.60, seconds=5.0)]
    rows = summarize_results(records)
    assert [(row.schedule, row.runs) for row in rows] == [("phasewise", 2), ("standard", 2)]
    assert rows[0].accuracy_mean == pytest.approx(0.55) and rows[0].accuracy_std == pytest.approx(0.0707, abs=1e-4)
    table = format_table(rows)
    assert "| lenet5 | 50 | phasewise | 2 | 55.0 ± 7.1 % | -10.0 pt | 3 | 5.0 ± 0.0 | 0.50x | 2.0 |" in table
    assert "settings" not in table  # every run shares one setting


def test_runs_with_other_settings_get_their_own_rows():
    records = [_record(), _record(schedule="phasewise"), _record(schedule="phasewise", accuracy=0.75)]
    records[2]["settings"] = {"epochs_per_phase": 3, "head": "mlp"}
    rows = summarize_results(records)
    assert [(row.schedule, row.variant) for row in rows] == [
        ("phasewise", "head=None"), ("standard", "head=None"), ("phasewise", "head=mlp")]
    table = format_table(rows)
    assert "| lenet5 | 50 | phasewise | head=mlp | 1 | 75.0 ± 0.0 % | +25.0 pt |" in table


def test_a_variant_is_compared_with_the_standard_runs_closest_in_settings():
    records = [_record(accuracy=0.5), _record(accuracy=0.7), _record(schedule="phasewise", accuracy=0.8)]
    records[0]["settings"] = {"lr": 0.003, "head": "conv"}
    records[1]["settings"] = {"lr": None, "head": "conv"}
    records[2]["settings"] = {"lr": None, "head": "mlp"}
    table = format_table(summarize_results(records))
    assert "| phasewise | head=mlp, lr=None | 1 | 80.0 ± 0.0 % | +10.0 pt |" in table  # against lr=None


def test_report_keeps_the_notes_around_its_block(tmp_path):
    report = tmp_path / "ACCURACY.md"
    report.write_text(f"# notes above\n\n{REPORT_BEGIN}\nold table\n{REPORT_END}\n\n## findings below\n")
    plot = write_report([_record(), _record(schedule="phasewise")], report)
    text = report.read_text()
    assert text.startswith("# notes above") and text.endswith("## findings below\n")
    assert "old table" not in text and "| lenet5 | 50 | phasewise |" in text and "test machine" in text
    assert plot == tmp_path / "accuracy.png" and plot.is_file()


def test_a_torn_last_line_is_dropped_and_its_run_redone(tmp_path):
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps(_record(seed=0)) + "\n" + '{"key": "half a rec')
    assert [record["seed"] for record in load_results(path)] == [0]
    _append_result(path, _record(seed=1))
    assert [record["seed"] for record in load_results(path)] == [0, 1]


def test_a_damaged_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / RESULTS_FILE
    path.write_text("not json\n" + json.dumps(_record()) + "\n")
    with pytest.raises(ValueError, match=r"results.jsonl:1 is not a JSON record"):
        load_results(path)


def test_unknown_models_and_schedules_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid: lenet5, alexnet, resnet_cifar, shathenet"):
        plan_runs(["vgg16"], [50], ["standard"], [0])
    with pytest.raises(ValueError, match="valid: phasewise, standard, phasewise\\+finetune"):
        plan_runs(["lenet5"], [50], ["greedy"], [0])
    assert main(["bench", "accuracy", "--sizes", "fifty"]) == 2
