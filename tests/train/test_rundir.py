"""The run directory: one name per file, one rule for a run's trained checkpoint, and the checks
that keep a run from writing over another."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from phasenets.errors import CheckpointError, ConfigError
from phasenets.train.rundir import RunDirectory, resolve_checkpoint


def test_a_run_directory_names_every_file_a_run_writes(tmp_path):
    run = RunDirectory(tmp_path)
    names = {run.config_file, run.preflight_file, run.metrics_file, run.summary_file, run.plot_file("accuracy"),
             run.plot_file("loss"), run.tensorboard_dir, run.cache_dir, run.viz_dir, run.final_checkpoint,
             run.checkpoint(2, "best"), run.checkpoint(2, "last"), run.checkpoint(2, "shared")}
    assert len(names) == 13 and all(path.is_relative_to(tmp_path) for path in names)
    assert run.checkpoint(2, "shared").name == "phase2-shared.pt"
    with pytest.raises(ValueError, match="checkpoint kind"):
        run.checkpoint(2, "latest")


def test_the_trained_checkpoint_is_final_else_the_latest_best(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints/ folder"):
        resolve_checkpoint(tmp_path)
    run = RunDirectory(tmp_path)
    run.create()
    with pytest.raises(CheckpointError, match="neither final.pt nor any phase<k>-best.pt"):
        run.trained_checkpoint()
    for name in ("phase2-best.pt", "phase10-best.pt", "phase3-last.pt", "phase11-shared.pt"):
        (run.checkpoints_dir / name).touch()
    assert resolve_checkpoint(tmp_path).name == "phase10-best.pt"  # by number, not by name
    assert [path.name for path in run.resume_candidates()] == ["phase10-best.pt", "phase3-last.pt", "phase2-best.pt"]
    run.final_checkpoint.touch()
    assert resolve_checkpoint(tmp_path) == run.final_checkpoint
    assert resolve_checkpoint(run.checkpoint(2, "best")) == run.checkpoint(2, "best")  # a file is itself


def test_a_new_run_refuses_a_folder_holding_a_run_and_resume_needs_one(tmp_path):
    assert RunDirectory.for_new_run(tmp_path / "new", "lenet5", "phasewise").path == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # claimed, not created: a failed start leaves nothing behind
    stamped = RunDirectory.for_new_run(None, "lenet5", "phasewise", stamp="20260101-000000")
    assert stamped.path.as_posix() == "runs/lenet5-phasewise-20260101-000000"
    with pytest.raises(ConfigError, match="no checkpoints/ there"):
        RunDirectory.for_resume(tmp_path / "new")
    RunDirectory(tmp_path / "new").create()
    with pytest.raises(ConfigError, match="already holds a run: continue it with --resume"):
        RunDirectory.for_new_run(tmp_path / "new", "lenet5", "phasewise")
    assert RunDirectory.for_resume(tmp_path / "new").holds_run


def test_the_start_checkpoint_of_a_later_phase_is_the_one_before_it(tmp_path):
    run = RunDirectory(tmp_path)
    run.create()
    with pytest.raises(ConfigError, match="none of phase2-best.pt, final.pt"):
        run.start_checkpoint(3)
    run.final_checkpoint.touch()
    assert run.start_checkpoint(3) == run.final_checkpoint
    run.checkpoint(2, "best").touch()
    assert run.start_checkpoint(3) == run.checkpoint(2, "best")
    assert run.start_checkpoint(1) == run.final_checkpoint


def test_a_checkpoint_belongs_to_the_run_above_its_folder(tmp_path):
    run = RunDirectory(tmp_path / "run")
    assert RunDirectory.of_checkpoint(run.checkpoint(1, "best")) == run
    assert RunDirectory.of_checkpoint(tmp_path / "loose.pt").path == tmp_path


def test_an_output_that_is_a_file_or_unwritable_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        RunDirectory.for_new_run(tmp_path / "taken", "lenet5", "phasewise")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):  # root writes anyway: a folder of a read-only file system, then
        locked = Path("/proc/sys")
        if os.access(locked, os.W_OK):
            pytest.skip("no folder this user cannot write to")
    with pytest.raises(ConfigError, match="cannot be written to"):
        RunDirectory.for_new_run(locked / "run", "lenet5", "phasewise")
