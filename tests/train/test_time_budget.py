"""The time budget: the phases share it, and a phase ends before an epoch that would overrun its share."""
from __future__ import annotations

import time

import pytest

from phasenets.config import ConfigError, TrainConfig
from phasenets.train import PhaseTrainer
from phasenets.train.loop import TimeBudget, another_epoch_overruns

from conftest import tiny_config, tiny_net


def test_each_phase_gets_an_even_share_of_the_time_left():
    started = time.perf_counter()
    budget = TimeBudget(100.0, spent_before=40.0, started=started)
    deadline = budget.phase_deadline(phases_left=3)
    spent_here = time.perf_counter() - started
    assert deadline - time.perf_counter() == pytest.approx((60.0 - spent_here) / 3, abs=0.5)
    overspent = TimeBudget(10.0, spent_before=20.0)
    assert overspent.phase_deadline(phases_left=2) <= time.perf_counter()  # nothing left: end after one epoch
    assert TimeBudget(None).phase_deadline(phases_left=1) is None


def test_an_epoch_runs_only_if_one_as_long_as_the_last_fits_before_the_deadline():
    now = time.perf_counter()
    assert not another_epoch_overruns(now + 10.0, epoch_started=now - 2.0)  # ~2 s more fits in 10
    assert another_epoch_overruns(now + 3.0, epoch_started=now - 5.0)  # ~5 s more does not fit in 3


def test_a_budget_ends_every_phase_before_its_epoch_cap_and_keeps_the_run_within_it(tiny_data, tmp_path):
    budget = 1.5
    config = tiny_config(tiny_data, tmp_path / "run", max_epochs=400, patience=0, time_budget=budget)
    result = PhaseTrainer(config, model=tiny_net()).fit()
    assert len(result.phases) == 3
    for phase in result.phases:  # patience 0 never stops: only the budget ends these phases
        assert 1 <= phase.epochs < 400
        assert 1 <= phase.best_epoch <= phase.epochs
    # each phase stops when the next epoch would not fit its share: the slack is about one epoch
    # per phase, and these epochs take a small fraction of a second
    assert sum(phase.seconds for phase in result.phases) < budget + 1.5


@pytest.mark.parametrize("seconds", [0, -5])
def test_a_time_budget_must_be_positive(seconds):
    with pytest.raises(ConfigError, match="time_budget must be positive"):
        TrainConfig(time_budget=seconds)
