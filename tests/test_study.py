"""The accuracy study: a tiny real run through the CLI, resuming, and the report built from records."""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
sys.path.insert(0, str(SCRIPT.parent))  # the study harness lives in benchmarks/, outside the package

from study import (  # noqa: E402
    REPORT_BEGIN, REPORT_END, RESULTS_FILE, RESULTS_SECTION, RunSpec, StudySettings, _append_result, _key, _record_key,
    add_study_arguments, build_study_model, command_line, format_equal_time_table, format_finetune_table, format_table,
    load_results, pareto_front, plan_runs, summarize_results, train_config, write_report,
)


def _load_script():
    loading = importlib.util.spec_from_file_location("accuracy_script", SCRIPT)
    script = importlib.util.module_from_spec(loading)
    loading.loader.exec_module(script)
    return script


def study(*argv: str, output: Path, results: Path | None = None) -> int:
    """``python benchmarks/accuracy.py --output OUTPUT ...`` with its records and report kept in
    OUTPUT (or the records in ``results``), away from the committed study."""
    results = results or output / RESULTS_FILE
    return _load_script().main(["--output", str(output), "--results", str(results),
                                "--report", str(output / "ACCURACY.md"), *argv])

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
        "model": model, "per_class": per_class,
        "schedule": schedule, "seed": seed, "test_accuracy": accuracy, "seconds": seconds,
        "phases": [{"name": "p", "epochs": 3, "seconds": 2.0}], "settings": {"epochs_per_phase": 3}, "cache": "auto",
        "machine": "test machine", "finished": "2026-01-01T00:00:00+00:00", "command": "python benchmarks/accuracy.py",
    }


def test_tiny_study_writes_results_table_and_plot_then_resumes(tmp_path, fashion_mnist, capsys):
    output = tmp_path / "study"
    assert study(*TINY, output=output) == 0
    assert "2 new runs, 2 in all" in capsys.readouterr().out

    records = load_results(output / RESULTS_FILE)
    assert sorted(record["schedule"] for record in records) == ["phasewise", "standard"]
    for record in records:
        assert 0.0 <= record["test_accuracy"] <= 1.0 and record["test_images"] == 20  # 2 per class
        assert record["seconds"] > 0 and record["command"].startswith("python benchmarks/accuracy.py --output")
    phasewise = next(record for record in records if record["schedule"] == "phasewise")
    assert [phase["name"] for phase in phasewise["phases"]] == [f"phase {k}" for k in range(1, 6)]
    # what each run predicted with; a phase-wise run also scores the other way on the same test images
    scores = phasewise["prediction_validation"]
    assert phasewise["prediction"] == ("heads" if scores["heads"] >= scores["network"] else "network")
    assert 0.0 <= phasewise["test_accuracy_other_prediction"] <= 1.0
    standard = next(record for record in records if record["schedule"] == "standard")
    assert (standard["prediction"], standard["prediction_validation"], standard["test_accuracy_other_prediction"]) == (
        "network", None, None)

    report = (output / "ACCURACY.md").read_text()
    assert "| lenet5 | 2 | phasewise | 1 |" in report and "| lenet5 | 2 | standard | 1 |" in report
    assert records[0]["command"] in report
    assert (output / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    lines_before = (output / RESULTS_FILE).read_text()
    assert study(*TINY, output=output) == 0
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
        ("phasewise", ""), ("standard", ""), ("phasewise", "head=mlp")]  # no head recorded: the default one
    table = format_table(rows)
    assert "| lenet5 | 50 | phasewise | head=mlp | 1 | 75.0 % | +25.0 pt |" in table


def test_a_variant_is_compared_with_the_standard_runs_closest_in_settings(tmp_path):
    records = [_record(accuracy=0.5), _record(accuracy=0.7), _record(schedule="phasewise", accuracy=0.8)]
    records[0]["settings"] = {"lr": 0.003, "head": "pooled_conv", "batch_size": 32}
    records[1]["settings"] = {"lr": None, "head": "pooled_conv", "batch_size": 32}
    records[2]["settings"] = {"lr": None, "head": "mlp", "batch_size": 32}
    table = format_table(summarize_results(records))
    assert "| phasewise | head=mlp | 1 | 80.0 % | +10.0 pt |" in table  # against lr=None, the default
    assert "| standard | lr=0.003 | 1 |" in table and "| standard | - | 1 | 70.0 % |" in table
    write_report(records, tmp_path / "ACCURACY.md")
    text = (tmp_path / "ACCURACY.md").read_text()
    assert 'Settings of every run: `{"batch_size": 32}`.' in text and "default (head=pooled_conv, lr=None)" in text


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
    path.write_text(json.dumps(_record(seed=0)) + "\n" + '{"model": "half a rec')
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
    assert _load_script().main(["--sizes", "fifty"]) == 2


# ----------------------------------------------------------------------------------------------
# the results file, parallel runs, failures, the investigation settings

OUTCOME_FIELDS = ("model", "per_class", "schedule", "seed", "settings", "test_accuracy", "test_images",
                  "validation_accuracy", "cache")


def _outcomes(path) -> dict[str, dict]:
    """What a run found, by key: everything but its times, paths, machine and command."""
    outcomes = {}
    for record in load_results(path):
        phases = [{k: v for k, v in phase.items() if k != "seconds"} for phase in record["phases"]]
        outcomes[_record_key(record)] = {**{name: record[name] for name in OUTCOME_FIELDS}, "phases": phases}
    return outcomes


def test_two_jobs_record_what_one_job_does_into_a_results_file_elsewhere(tmp_path, fashion_mnist, capsys):
    in_turn, parallel = tmp_path / "in-turn", tmp_path / "parallel"
    assert study(*TINY, output=in_turn) == 0
    results = tmp_path / "committed" / "accuracy-results.jsonl"
    assert study("--jobs", "2", *TINY, output=parallel, results=results) == 0
    assert "2 new runs, 2 in all" in capsys.readouterr().out
    assert not (parallel / RESULTS_FILE).exists()
    # on CPU with one thread per run, a run in a process of its own trains exactly as in this one
    assert _outcomes(results) == _outcomes(in_turn / RESULTS_FILE)
    assert all("--jobs 2" in record["command"] for record in load_results(results))
    report = (parallel / "ACCURACY.md").read_text()
    assert "from 2 runs" in report and "| lenet5 | 2 | standard | 1 |" in report


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_run_leaves_the_others_records_and_fails_the_study(tmp_path, fashion_mnist, capsys, caplog, jobs):
    output = tmp_path / "study"
    blocker = output / "runs" / "lenet5-2pc-standard-seed0"  # a file where the run wants its folder
    blocker.parent.mkdir(parents=True)
    blocker.touch()
    assert study("--jobs", str(jobs), *TINY, output=output) == 1
    assert "1 new runs, 1 in all; 1 failed: lenet5-2pc-standard-seed0" in capsys.readouterr().out
    assert "lenet5-2pc-standard-seed0 failed" in caplog.text and "is a file, not a folder" in caplog.text
    assert [record["schedule"] for record in load_results(output / RESULTS_FILE)] == ["phasewise"]
    assert "| lenet5 | 2 | phasewise | 1 |" in (output / "ACCURACY.md").read_text()

    blocker.unlink()  # a rerun does what failed, and only that
    assert study(*TINY, output=output) == 0
    assert "1 new runs, 2 in all" in capsys.readouterr().out


def test_investigation_settings_enter_the_key_the_variant_and_the_run():
    spec = RunSpec("lenet5", 50, "phasewise", 0)
    keys = {_key(spec, asdict(StudySettings())), _key(spec, asdict(StudySettings(precise_bn=True))),
            _key(spec, asdict(StudySettings(cache_views=4))), _key(spec, asdict(StudySettings(image_size=227)))}
    assert len(keys) == 4
    with pytest.raises(ValueError, match="cache_views must be at least 1"):
        StudySettings(cache_views=0)

    config = train_config(spec, Path("data"), Path("run"), StudySettings(cache_views=4, precise_bn=True), num_blocks=5)
    assert (config.cache_views, config.precise_bn) == (4, True)

    parser = argparse.ArgumentParser()
    add_study_arguments(parser)
    args = parser.parse_args(["--precise-bn", "--cache-views", "4", "--results", "r.jsonl", "--jobs", "2"])
    assert " --jobs 2 " in command_line(args, "study") and command_line(args, "study").endswith(
        "--cache-views 4 --precise-bn")

    records = [_record(schedule="phasewise"), _record(schedule="phasewise", accuracy=0.6),
               _record(schedule="phasewise", accuracy=0.7)]
    records[0]["settings"] = {"cache_views": None, "precise_bn": False}
    records[1]["settings"] = {"cache_views": None, "precise_bn": True}
    records[2]["settings"] = {"cache_views": 4, "precise_bn": False}
    assert [row.variant for row in summarize_results(records)] == ["", "cache_views=4", "precise_bn=True"]


def test_the_script_keeps_its_records_in_the_committed_file_but_a_quick_run_does_not(monkeypatch):
    script = _load_script()
    seen = []

    class Outcome:
        failed: list = []

        def summary(self) -> str:
            return ""

    monkeypatch.setattr(script, "run_from_args",
                        lambda args, program, also_into: seen.append((args, also_into)) or Outcome())
    committed = ["--results", str(SCRIPT.with_name("accuracy-results.jsonl"))]  # as the recorded commands spell it
    for argv in ([], ["--quick"], committed, ["--report", "elsewhere.md"]):
        assert script.main(argv) == 0
    (full, into), (quick, quick_into), (_, committed_into), (_, elsewhere_into) = seen
    assert Path(full.results).resolve() == SCRIPT.with_name("accuracy-results.jsonl")
    assert Path(full.report).resolve() == SCRIPT.with_name("ACCURACY.md")
    assert [Path(path).resolve() for path in into] == [SCRIPT.with_name("RESULTS.md")]
    assert (quick.results, quick.report, quick_into) == (None, None, [])  # its output folder's, as the CLI's --quick
    assert committed_into == into and elsewhere_into == []  # only the committed study's table goes into RESULTS.md


def test_the_table_is_copied_into_another_file_under_its_heading_and_replaced_there(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n| target |\n")
    write_report([_record(accuracy=0.5)], tmp_path / "ACCURACY.md", also_into=[results])
    first = results.read_text()
    assert first.startswith("# Benchmark results\n\n| target |\n\n" + RESULTS_SECTION + "\n")
    assert "| 1 | 50.0 % |" in first and "(accuracy.png)" in first
    write_report([_record(accuracy=0.75)], tmp_path / "ACCURACY.md", also_into=[results])
    second = results.read_text()
    assert second.count(RESULTS_SECTION) == 1 and second.count(REPORT_BEGIN) == 1
    assert "| 1 | 75.0 % |" in second and "50.0 %" not in second
    assert (tmp_path / "ACCURACY.md").read_text().count(REPORT_BEGIN) == 1


def test_the_benchmark_report_keeps_the_sections_after_its_table_when_it_rewrites_the_file(tmp_path, monkeypatch):
    loading = importlib.util.spec_from_file_location("report_script", SCRIPT.with_name("report.py"))
    report = importlib.util.module_from_spec(loading)
    loading.loader.exec_module(report)
    section = ("\n## Scale runs\n\nfull-size numbers\n"
               "\n" + RESULTS_SECTION + "\n\n" + REPORT_BEGIN + "\nthe table\n" + REPORT_END + "\n")
    monkeypatch.setattr(report, "RESULTS", tmp_path / "RESULTS.md")
    report.RESULTS.write_text("# Benchmark results\n\nold rows\n" + section)
    empty = tmp_path / "latest.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    assert report.main(["--from-json", str(empty)]) == 0
    text = report.RESULTS.read_text()
    assert "old rows" not in text and "no benchmark reported a target" in text
    assert text.endswith(section) and text.count(RESULTS_SECTION) == 1
    assert report.kept_sections("# Benchmark results\n") == ""


def test_a_record_from_before_a_setting_existed_still_counts_as_done():
    spec = RunSpec("lenet5", 50, "phasewise", 0)
    current = asdict(StudySettings())
    older = {name: value for name, value in current.items() if name != "image_size"}  # predates the setting
    record = {**asdict(spec), "settings": older}
    assert _record_key(record) == _key(spec, current)
    assert _record_key({**record, "settings": {**older, "lr": 1e-4}}) != _key(spec, current)


def test_image_size_feeds_every_model_that_size(tmp_path, fashion_mnist, capsys):
    settings = StudySettings(image_size=40)
    for model in ("lenet5", "alexnet"):
        spec = RunSpec(model, 2, "phasewise", 0)
        assert build_study_model(spec, settings).input_shape == (1, 40, 40)
        assert train_config(spec, Path("data"), Path("run"), settings, num_blocks=5).image_size == 40
    assert build_study_model(RunSpec("alexnet", 2, "phasewise", 0), StudySettings()).input_shape == (1, 64, 64)
    with pytest.raises(ValueError, match="image_size must be positive"):
        StudySettings(image_size=0)

    output = tmp_path / "study"
    tiny = [*TINY, "--schedules", "phasewise", "--epochs-per-phase", "1"]
    assert study(*tiny, "--image-size", "40", output=output) == 0
    record, = load_results(output / RESULTS_FILE)
    assert record["settings"]["image_size"] == 40 and record["command"].endswith("--image-size 40")


def _phases(*validation, seconds=2.0):
    return [{"name": f"phase {k}", "epochs": 3, "validation_accuracy": v, "seconds": seconds}
            for k, v in enumerate(validation, 1)]


def test_the_finetune_table_reads_the_phase_inside_each_run_and_against_same_machine_twins(tmp_path):
    twin0 = {**_record(schedule="phasewise", seed=0, accuracy=0.80), "phases": _phases(0.5, 0.7)}
    twin1 = {**_record(schedule="phasewise", seed=1, accuracy=0.70), "phases": _phases(0.5, 0.7),
             "machine": "another machine"}
    tuned0 = {**_record(schedule="phasewise+finetune", seed=0, accuracy=0.83),
              "phases": [*_phases(0.5, 0.7), {"name": "finetune", "epochs": 5, "validation_accuracy": 0.75,
                                              "seconds": 4.0}]}
    tuned1 = {**_record(schedule="phasewise+finetune", seed=1, accuracy=0.76), "phases": _phases(0.5, 0.7, 0.7)}
    records = [twin0, twin1, tuned0, tuned1]
    table = format_finetune_table(records)
    # seed 0: +5 pt validation, +3 pt test against its twin; seed 1 kept phase 5, and its twin ran elsewhere
    assert "| lenet5 | 50 | 2 | 1 | +5.00, 0 | +3.00, - | 42 % |" in table  # (4/8 + 2/6) / 2
    assert format_finetune_table(records[:2]) == ""
    write_report(records, tmp_path / "ACCURACY.md")
    assert table in (tmp_path / "ACCURACY.md").read_text()
    write_report(records[:2], tmp_path / "WITHOUT.md")
    assert "The fine-tuning phase on its own" not in (tmp_path / "WITHOUT.md").read_text()


def test_an_equal_time_run_trains_end_to_end_for_the_seconds_its_phasewise_twin_took(tmp_path, fashion_mnist,
                                                                                      capsys):
    output = tmp_path / "study"
    equal_time = [*TINY, "--schedules", "standard-equal-time,phasewise"]  # listed first, run last
    assert study(*equal_time, output=output) == 0
    assert "2 new runs, 2 in all" in capsys.readouterr().out
    records = load_results(output / RESULTS_FILE)
    assert [record["schedule"] for record in records] == ["phasewise", "standard-equal-time"]
    twin, fair = records
    assert fair["time_budget"] == max(twin["seconds"], 1.0)  # no standard twin: nothing to take off
    (phase,) = fair["phases"]  # end to end: one phase, ended by the budget alone
    assert phase["epochs"] < 10_000 and 1 <= phase["best_epoch"] <= phase["epochs"]
    report = (output / "ACCURACY.md").read_text()
    assert "Budget-fair" in report and "| lenet5 | 2 | 1 |" in report
    assert (output / "accuracy-time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_equal_time_run_without_its_phasewise_twin_fails_and_says_why(tmp_path, fashion_mnist, capsys, caplog):
    output = tmp_path / "study"
    assert study(*TINY, "--schedules", "standard-equal-time", output=output) == 1
    assert "1 failed: lenet5-2pc-standard-equal-time-seed0" in capsys.readouterr().out
    assert "takes its time budget from lenet5-2pc-phasewise-seed0" in caplog.text


def test_an_equal_time_config_has_the_budget_and_neither_an_epoch_cap_nor_early_stopping():
    spec = RunSpec("lenet5", 50, "standard-equal-time", 0)
    config = train_config(spec, Path("data"), Path("run"), StudySettings(), num_blocks=5, time_budget=12.5)
    assert (config.schedule, config.time_budget, config.patience) == ("standard", 12.5, 0)
    assert config.max_epochs >= 1000
    with pytest.raises(ValueError, match="needs a time budget"):
        train_config(spec, Path("data"), Path("run"), StudySettings(), num_blocks=5)


def test_the_pareto_front_keeps_what_nothing_else_beats_on_both_time_and_accuracy():
    points = [(10.0, 70.0), (5.0, 60.0), (20.0, 65.0), (10.0, 72.0), (40.0, 80.0), (3.0, 50.0)]
    assert pareto_front(points) == [(3.0, 50.0), (5.0, 60.0), (10.0, 72.0), (40.0, 80.0)]
    assert pareto_front([]) == []


def test_the_equal_time_table_sets_phasewise_against_end_to_end_in_the_same_time():
    records = [_record(schedule="phasewise", accuracy=0.80, seconds=30.0),
               _record(schedule="standard-equal-time", accuracy=0.75, seconds=31.0),
               _record(schedule="standard", accuracy=0.70, seconds=12.0)]
    table = format_equal_time_table(summarize_results(records))
    assert "| lenet5 | 50 | 1 | 80.0 | 75.0 | +5.0 pt | 30 | 31 | 3 |" in table
    assert format_equal_time_table(summarize_results(records[1:])) == ""  # no phase-wise twin: no row


def test_an_equal_time_budget_leaves_out_the_fixed_costs_its_standard_twin_measured(tmp_path):
    from study import _Study

    results = tmp_path / "results.jsonl"
    settings = StudySettings()
    phasewise = {**_record(schedule="phasewise", seconds=100.0), "settings": asdict(settings)}
    standard = {**_record(schedule="standard", seconds=60.0), "settings": asdict(settings),
                "phases": [{"name": "standard", "epochs": 12, "seconds": 45.0}]}  # 15 s outside its phase
    _append_result(results, phasewise)
    study_ = _Study(tmp_path, settings, results, tmp_path / "ACCURACY.md", "", False, total=1)
    spec = RunSpec("lenet5", 50, "standard-equal-time", 0)
    assert study_._time_budget(spec) == 100.0  # no standard twin yet: the phase-wise seconds whole
    _append_result(results, standard)
    assert study_._time_budget(spec) == 85.0
    assert study_._time_budget(RunSpec("lenet5", 50, "standard", 0)) is None
    with pytest.raises(LookupError, match="add phasewise to --schedules"):
        study_._time_budget(RunSpec("lenet5", 50, "standard-equal-time", 1))


def test_a_setting_added_after_a_record_was_made_reads_as_its_default_in_the_table():
    old = _record(schedule="phasewise")  # made before the study had `similarity_weight`
    new = {**_record(schedule="phasewise", seed=1), "settings": {**old["settings"], "similarity_weight": 0.0}}
    varied = {**_record(schedule="phasewise", seed=2), "settings": {**old["settings"], "similarity_weight": 0.9}}
    rows = summarize_results([old, new, varied])
    assert [(row.variant, row.runs) for row in rows] == [("", 2), ("similarity_weight=0.9", 1)]


def test_a_record_from_before_the_warm_up_existed_ran_without_one():
    """The study's warm-up default became the trainer's 1 epoch after records without the setting
    were made; those ran with none, so they match a study asked for none, not today's default."""
    spec = RunSpec("lenet5", 50, "phasewise", 0)
    current = asdict(StudySettings())
    older = {name: value for name, value in current.items() if name != "warmup_epochs"}
    assert _record_key({**asdict(spec), "settings": older}) == _key(spec, asdict(StudySettings(warmup_epochs=0.0)))
    assert _record_key({**asdict(spec), "settings": older}) != _key(spec, current)
    rows = summarize_results([{**_record(schedule="phasewise"), "settings": older},
                              {**_record(schedule="phasewise", seed=1), "settings": current}])
    assert [row.variant for row in rows] == ["", "warmup_epochs=0.0"]


def test_a_record_from_before_prediction_existed_predicted_with_the_network():
    spec = RunSpec("lenet5", 50, "phasewise", 0)
    current = asdict(StudySettings())
    older = {name: value for name, value in current.items() if name != "prediction"}
    assert _record_key({**asdict(spec), "settings": older}) == _key(spec, asdict(StudySettings(prediction="network")))
    assert _record_key({**asdict(spec), "settings": older}) != _key(spec, current)


def test_unset_epochs_and_patience_are_the_trainers_for_the_subsets_epoch_length():
    settings = StudySettings()
    assert (settings.epochs_per_phase, settings.patience, settings.warmup_epochs) == (None, None, 1.0)
    for schedule in ("phasewise", "standard", "phasewise+finetune"):
        config = train_config(RunSpec("lenet5", 50, schedule, 0), Path("data"), Path("run"), settings, num_blocks=5)
        assert (config.max_epochs, config.patience, config.warmup_epochs) == (None, None, 1.0)
    # 50 images per class in batches of 32: 16 steps an epoch, so 750 steps take 47 epochs
    finetune = train_config(RunSpec("lenet5", 50, "phasewise+finetune", 0), Path("data"), Path("run"), settings, 5)
    assert finetune.finetune_epochs == 47
    fixed = train_config(RunSpec("lenet5", 50, "standard", 0), Path("data"), Path("run"),
                         StudySettings(epochs_per_phase=15, patience=4), num_blocks=5)
    assert (fixed.max_epochs, fixed.patience) == (75, 4)
