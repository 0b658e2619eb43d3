"""RunLog's plots: current at the end of every run, redrawn at phase ends only while that is cheap."""
from __future__ import annotations

import pytest

from phasenets.train import run_log
from phasenets.train.metrics import SplitMetrics
from phasenets.train.run_log import RunLog
from phasenets.train.rundir import RunDirectory


@pytest.fixture
def clock_and_drawings(monkeypatch):
    """A clock the test moves by hand, and a drawing that takes 1 s of it each time."""
    now = [1000.0]
    drawings = []

    def draw(run_dir, phase_names, monitor):
        drawings.append(now[0])
        now[0] += 1.0

    monkeypatch.setattr(run_log.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(run_log, "FIRST_PLOT_SECONDS", 0.5)  # the rule under test, not the estimate
    monkeypatch.setattr(run_log, "plot_history", draw)
    return now, drawings


def _log_epoch(log: RunLog, phase: int) -> None:
    log.log(phase, 1, "train", SplitMetrics(loss=1.0, accuracy=0.5, top5=None, count=4), 0.1, 1.0, phase)


def test_phase_end_plots_wait_until_they_cost_under_five_percent(tmp_path, clock_and_drawings):
    now, drawings = clock_and_drawings
    log = RunLog(RunDirectory(tmp_path), tensorboard=False)
    _log_epoch(log, 1)
    now[0] += 5.0  # a 5 s phase: a 0.5 s drawing would be 10 % of the run
    log.refresh_plots({1: "phase 1"})
    assert drawings == []
    _log_epoch(log, 2)
    now[0] += 15.0  # 20 s in: 0.5 s is 2.5 %
    log.refresh_plots({1: "phase 1", 2: "phase 2"})
    assert len(drawings) == 1
    _log_epoch(log, 3)
    now[0] += 10.0  # 31 s in, 1 s drawn: another 1 s would be 6.5 %
    log.refresh_plots({})
    assert len(drawings) == 1
    log.refresh_plots({}, final=True)  # the run's end always draws what is new
    assert len(drawings) == 2
    log.refresh_plots({}, final=True)  # nothing new since: nothing to draw
    assert len(drawings) == 2
    log.close()


def test_the_best_epoch_of_each_phase_is_the_first_best_by_the_monitor():
    rows = [{"phase": "1", "epoch": str(e), "split": "validation", "accuracy": acc, "loss": loss}
            for e, acc, loss in ((1, "0.5", "1.0"), (2, "0.7", "0.9"), (3, "0.7", "0.8"))]
    rows.append({"phase": "1", "epoch": "3", "split": "train", "accuracy": "0.99", "loss": "0.1"})
    assert run_log.best_epochs(rows)[1]["epoch"] == "2"  # the first of two equal accuracies
    assert run_log.best_epochs(rows, "loss")[1]["epoch"] == "3"
