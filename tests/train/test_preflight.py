"""The preflight of `PhaseTrainer`: unreadable images stop a run before it starts, or are left out;
a dataset is checked once, whichever run comes next."""
from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

from phasenets.cli import main
from phasenets.data import DatasetError, images
from phasenets.data.check import CheckReport, Problem
from phasenets.data.layout import scan_dataset
from phasenets.train import PhaseTrainer, prepare_run, run_phases
from phasenets.train import preflight
from phasenets.train.preflight import REPORT_FILE, apply_report, cache_dir, check_images
from tests.data.corpus import BAD_ENTRIES, HANG_GUARD, HUGE_FILE_BYTES, plant_bad_entry, write_image

from conftest import tiny_config, tiny_net, write_dataset

FAST = dict(schedule="standard", max_epochs=1)


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Each test keeps its preflight reports in its own cache folder, never the user's."""
    monkeypatch.setenv("PHASENETS_CACHE_DIR", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache" / "preflight"


@pytest.fixture
def count_checks(monkeypatch):
    """A list that gets one entry per fresh check of a dataset."""
    checks = []

    def counted(root, **options):
        checks.append(root)
        return check_dataset(root, **options)

    check_dataset = preflight.check_dataset
    monkeypatch.setattr(preflight, "check_dataset", counted)
    return checks


@pytest.fixture
def broken_data(tmp_path):
    """The tiny dataset with a truncated PNG and a zero-byte file among the training rings."""
    root = write_dataset(tmp_path / "data", {"train": 6, "validation": 2})
    ring = root / "train" / "ring"
    (ring / "truncated.png").write_bytes((ring / "0.png").read_bytes()[:60])
    (ring / "empty.png").write_bytes(b"")
    return root


def test_bad_images_stop_the_run_before_it_starts(broken_data, tmp_path):
    output = tmp_path / "run"
    with pytest.raises(DatasetError) as error:
        PhaseTrainer(tiny_config(broken_data, output, **FAST), model=tiny_net()).fit()
    message = str(error.value)
    assert "2 unreadable image(s)" in message and "--on-bad-image skip" in message
    assert "[corrupt] train/ring/truncated.png" in message and "[empty_file] train/ring/empty.png" in message
    assert not (output / "checkpoints").exists()  # the same --output can be used once the files are fixed


def test_skip_leaves_bad_images_out(broken_data, tmp_path, caplog):
    config = tiny_config(broken_data, tmp_path / "run", on_bad_image="skip", **FAST)
    with caplog.at_level(logging.INFO, logger="phasenets"), prepare_run(config, model=tiny_net()) as setup:
        run_phases(setup)
    assert len(setup.data.train) == 3 * 6  # the two bad files are not among the 18 good ones
    assert all(os.path.getsize(sample.path) > 60 for sample in setup.data.train)
    assert "leaving out 2 unreadable image(s)" in caplog.text
    assert (tmp_path / "run" / REPORT_FILE).is_file()


def test_a_kept_report_is_reused_until_a_file_changes(broken_data, tmp_path, monkeypatch):
    splits = scan_dataset(broken_data)
    first = check_images(splits, run_dir=tmp_path / "run")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the kept report should have been reused")

    monkeypatch.setattr(preflight, "check_dataset", must_not_run)
    assert check_images(splits, run_dir=tmp_path / "run") == first
    (broken_data / "train" / "ring" / "empty.png").write_bytes((broken_data / "train" / "ring" / "1.png").read_bytes())
    with pytest.raises(AssertionError, match="should have been reused"):
        check_images(scan_dataset(broken_data), run_dir=tmp_path / "run")


def test_skip_preflight_checks_nothing(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(preflight, "check_dataset", lambda *args, **kwargs: pytest.fail("preflight ran"))
    PhaseTrainer(tiny_config(tiny_data, tmp_path / "run", skip_preflight=True, **FAST), model=tiny_net()).fit()
    assert not (tmp_path / "run" / REPORT_FILE).exists()


def test_only_the_tasks_images_count(tiny_data):
    splits = scan_dataset(tiny_data)
    elsewhere = Problem(str(tiny_data / "unused.png"), "corrupt", "cannot be decoded", "fatal", skippable=True)
    report = CheckReport(str(tiny_data), 10, [elsewhere])
    assert apply_report(splits, report) is splits  # e.g. a class a hierarchy leaves out
    blocking = Problem(str(tiny_data / "train" / "ring"), "empty_class", "no images", "fatal")
    with pytest.raises(DatasetError, match="problem.s. that stop training"):
        apply_report(splits, CheckReport(str(tiny_data), 10, [blocking]), on_bad_image="skip")


# ----------------------------------------------------------------------------------------------
# entries no loader may open, through `phasenets train`

CLI_FAST = ["--model", "lenet5", "--image-size", "16", "--in-channels", "1", "--max-epochs", "1", "--loader", "torch",
            "--num-workers", "0", "--schedule", "standard", "--batch-size", "8", "--tensorboard", "false"]


@pytest.fixture
def small_file_limit(monkeypatch):
    """A byte limit the 4 MiB sparse file exceeds: the tests need not make files of GiBs."""
    monkeypatch.setattr(images, "MAX_FILE_BYTES", HUGE_FILE_BYTES // 4)


@pytest.fixture
def data_with(tmp_path):
    """``case -> (data root, planted path, kind, phrase)``: the tiny dataset (4 training images a
    class) with one bad entry among the rings."""
    def plant(case):
        root = write_dataset(tmp_path / "data", {"train": 4, "validation": 2})
        return (root, *plant_bad_entry(root / "train" / "ring", case))
    return plant


@HANG_GUARD
@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_train_stops_before_training_naming_the_bad_entry(case, data_with, tmp_path, capsys, small_file_limit):
    root, path, kind, phrase = data_with(case)
    rings = sorted(os.listdir(root / "train" / "ring"))
    assert main(["train", "--data-dir", str(root), "--output", str(tmp_path / "run"), *CLI_FAST]) == 2
    error = capsys.readouterr().err
    name = os.path.relpath(path, root)
    assert f"1 unreadable image(s) in {root}:\n  [{kind}] {name}: " in error and phrase in error
    assert error.count(name) == 1 and "--on-bad-image skip" in error
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert sorted(os.listdir(root / "train" / "ring")) == rings  # nothing removed


@HANG_GUARD
@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_train_with_skip_trains_on_the_other_images(case, data_with, tmp_path, caplog, small_file_limit):
    root, path, kind, phrase = data_with(case)
    with caplog.at_level(logging.INFO, logger="phasenets"):
        code = main(["train", "--data-dir", str(root), "--output", str(tmp_path / "run"), "--on-bad-image", "skip",
                     *CLI_FAST])
    assert code == 0
    name = os.path.relpath(path, root)
    assert f"leaving out 1 unreadable image(s) (--on-bad-image skip):\n  [{kind}] {name}: " in caplog.text
    assert phrase in caplog.text and caplog.text.count(name) == 1
    assert "data: 12 train, 6 validation images" in caplog.text
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / REPORT_FILE).is_file()
    assert os.path.lexists(path)


@HANG_GUARD
@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_skip_preflight_never_hangs_on_a_bad_entry(case, data_with, tmp_path, capsys, small_file_limit):
    """The scan leaves out what is no regular file; a regular file over a limit stops the run by name."""
    root, path, kind, phrase = data_with(case)
    code = main(["train", "--data-dir", str(root), "--output", str(tmp_path / "run"), "--skip-preflight", *CLI_FAST])
    if kind == "not_a_file":
        assert code == 0 and (tmp_path / "run" / "summary.json").is_file()
    else:
        assert code == 2 and not (tmp_path / "run" / "summary.json").exists()
        error = capsys.readouterr().err
        assert error.startswith(f"phasenets train: error: {path}: ") and phrase in error and error.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# one check per dataset state, whichever run comes next


def test_a_new_run_on_an_unchanged_dataset_reuses_the_report(broken_data, tmp_path, user_cache, count_checks, caplog):
    splits = scan_dataset(broken_data)
    first = check_images(splits, 16, tmp_path / "run-1")
    with caplog.at_level(logging.INFO, logger="phasenets"):
        second = check_images(splits, 16, tmp_path / "run-2")  # a new run directory: a new run
    assert second == first and len(count_checks) == 1
    [kept] = user_cache.glob("*.json")
    assert f"reusing the report of an unchanged dataset ({first.num_images} images, from {kept})" in caplog.text
    assert (tmp_path / "run-1" / REPORT_FILE).read_text() == (tmp_path / "run-2" / REPORT_FILE).read_text() \
        == kept.read_text()
    kept.unlink()  # the user cache cleared: the run directory's report stands, and fills it again
    assert check_images(splits, 16, tmp_path / "run-1") == first and kept.is_file() and len(count_checks) == 1
    assert check_images(splits) == first and len(count_checks) == 1  # no image size: the same too-small threshold
    assert check_images(splits, 32) != first and len(count_checks) == 2  # another threshold


def test_every_change_to_the_dataset_means_a_fresh_check(broken_data, count_checks, monkeypatch):
    ring = broken_data / "train" / "ring"

    def check() -> list[str]:
        problems = check_images(scan_dataset(broken_data), 16).problems
        return sorted(os.path.basename(p.path) for p in problems if os.path.dirname(p.path) == str(ring))

    assert check() == ["empty.png", "truncated.png"]
    changes = [  # (change, the report's problems after it, a fresh check?)
        (lambda: os.utime(ring / "0.png", ns=(1, 1)), ["empty.png", "truncated.png"], True),
        (lambda: plant_bad_entry(ring, "fifo"), ["empty.png", "pipe.png", "truncated.png"], True),
        (lambda: os.remove(ring / "pipe.png"), ["empty.png", "truncated.png"], False),  # the state before: its report
        (lambda: shutil.copy(ring / "1.png", ring / "empty.png"), ["truncated.png"], True),
        (lambda: (ring / "notes.txt").write_text("x"), ["notes.txt", "truncated.png"], True),
        (lambda: monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200), ["0.png", "1.png", "2.png"], True),
    ]
    for change, problems, fresh in changes:
        checks = len(count_checks)
        change()
        assert check()[:len(problems)] == problems
        assert check()[:len(problems)] == problems  # unchanged since the line above: reused
        assert len(count_checks) == checks + fresh


def test_a_kept_report_that_cannot_be_read_means_a_fresh_check(tiny_data, user_cache, count_checks, caplog):
    splits = scan_dataset(tiny_data)
    report = check_images(splits, 16)
    [kept] = user_cache.glob("*.json")
    for damage in ('{"key": "' + kept.stem + '", "report": {"root": 3}}', "{not json", ""):
        kept.write_text(damage)
        with caplog.at_level(logging.INFO, logger="phasenets"):
            assert check_images(splits, 16) == report
        assert f"ignoring the kept report {kept}, which cannot be read" in caplog.text
        assert json.loads(kept.read_text())["key"] == kept.stem  # rewritten whole
        caplog.clear()
    assert len(count_checks) == 4


def test_a_cache_folder_that_cannot_be_written_costs_only_the_reuse(tiny_data, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PHASENETS_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.INFO, logger="phasenets"):
        report = check_images(scan_dataset(tiny_data), 16, tmp_path / "run")
    assert report.ok and f"cannot keep the report in {blocker / 'preflight'}" in caplog.text
    assert json.loads((tmp_path / "run" / REPORT_FILE).read_text())["report"]["num_images"] == report.num_images


def test_the_cache_folder_follows_xdg_unless_overridden(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "user-cache" / "preflight"
    monkeypatch.delenv("PHASENETS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "phasenets" / "preflight"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "phasenets" / "preflight"


# ----------------------------------------------------------------------------------------------
# what the log says


def test_the_preflight_line_names_the_warned_files(tmp_path, caplog):
    root = write_dataset(tmp_path / "data", {"train": 4, "validation": 2})
    shutil.copy(root / "train" / "ring" / "0.png", root / "validation" / "ring" / "leak.png")
    for seed in range(12):
        write_image(root / "train" / "square" / f"small_{seed:02d}.png", size=(6, 6), mode="L", seed=seed)
    splits = scan_dataset(root)
    with caplog.at_level(logging.INFO, logger="phasenets"):
        apply_report(splits, check_images(splits, 32))
    assert ("preflight: 31 images checked, 0 left out, 0 converted, 13 warnings (too small: under 16 px on a side):\n"
            "  [duplicate] train/ring/0.png: identical to validation/ring/leak.png (one image in train and validation")\
        in caplog.text
    assert "  [too_small] train/square/small_00.png: 6x6 pixels, smaller than 16 on a side" in caplog.text
    assert f"  ... and 3 more: phasenets data check {root} --image-size 32 lists them all" in caplog.text
    assert caplog.text.count("[duplicate]") == 1 and caplog.text.count("[too_small]") == 9
