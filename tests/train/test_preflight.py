"""The preflight of `PhaseTrainer`: unreadable images stop a run before it starts, or are left out."""
from __future__ import annotations

import logging
import os

import pytest

from phasenets.data import DatasetError
from phasenets.data.check import CheckReport, Problem
from phasenets.data.layout import scan_dataset
from phasenets.train import PhaseTrainer, prepare_run, run_phases
from phasenets.train import preflight
from phasenets.train.preflight import REPORT_FILE, apply_report, check_images

from conftest import tiny_config, tiny_net, write_dataset

FAST = dict(schedule="standard", max_epochs=1)


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
