"""Loader workers + compute threads never exceed a process's share of the cores (unless asked)."""
from __future__ import annotations

import logging

import pytest
import torch

from phasenets.train import resources
from phasenets.train import prepare_run, run_phases
from phasenets.train.resources import plan_cpu

from conftest import tiny_config, tiny_net


@pytest.mark.parametrize("cores, local, workers, threads", [
    (1, 1, 1, 1), (2, 1, 1, 1), (3, 1, 1, 2), (4, 1, 1, 3), (8, 1, 2, 6), (16, 1, 4, 12), (64, 1, 4, 60),
    (16, 4, 1, 3),  # four processes on a 16-core machine: 4 cores each
])
def test_the_default_split_fits_the_cores(monkeypatch, cores, local, workers, threads):
    monkeypatch.setattr(resources, "available_cores", lambda: cores)
    plan = plan_cpu(None, None, local)
    assert (plan.workers, plan.threads) == (workers, threads)
    assert plan.workers + plan.threads <= max(2, cores // local)  # a single core still gets one of each


def test_numbers_the_user_gives_are_kept(monkeypatch):
    monkeypatch.setattr(resources, "available_cores", lambda: 2)
    assert plan_cpu(4, 3).workers == 4 and plan_cpu(4, 3).threads == 3
    assert plan_cpu(0, None).threads == 2  # loading in the process: both cores compute


def test_a_run_uses_the_plan_says_so_and_gives_the_threads_back(tiny_data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(resources, "available_cores", lambda: 2)
    before = torch.get_num_threads()
    config = tiny_config(tiny_data, tmp_path / "run", max_epochs=1, num_workers=None, num_threads=None)
    with caplog.at_level(logging.INFO, logger="phasenets"), prepare_run(config, model=tiny_net()) as setup:
        assert torch.get_num_threads() == 1 and setup.config.num_workers == 1 and setup.config.num_threads == 1
        run_phases(setup)
    assert "cpu: 1 compute thread and 1 loader worker process, on 2 cores" in caplog.text
    assert torch.get_num_threads() == before
