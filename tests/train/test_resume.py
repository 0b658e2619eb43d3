"""A run killed with SIGKILL in the middle of a phase and resumed ends with bitwise the same weights,
the similarity term's projection (weights of the phase's own, outside the network) included."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from phasenets.train.checkpoint import load_checkpoint

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

# Trains the tiny net (batch norm, dropout) phase-wise with Keras-style lr decay, deterministically;
# with "resume" it continues the run in RUN_DIR instead.
SCRIPT = f"""
import sys
from pathlib import Path
sys.path[:0] = [{str(HERE)!r}, {str(ROOT)!r}]
import torch
from conftest import tiny_config, tiny_net
from phasenets.config import TrainConfig
from phasenets.train import PhaseTrainer

data_dir, run_dir, mode, similarity = sys.argv[1:5]
if mode == "resume":
    config = TrainConfig.from_file(Path(run_dir) / "config.yaml", resume=run_dir)
else:
    config = tiny_config(data_dir, run_dir, deterministic=True, max_epochs=5, patience=0, optimizer="adadelta",
                         lr=None, lr_decay=0.01, similarity_weight=float(similarity))
torch.manual_seed(0)  # the same initial weights in both runs
PhaseTrainer(config, model=tiny_net()).fit()
"""


def _train(script: Path, data: Path, run: Path, mode: str, similarity: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(data), str(run), mode, str(similarity)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rows(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    if not path.exists():
        return []
    # everything but the wall-clock time must match
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(open(path))]


def _finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 0, errors


@pytest.mark.parametrize("similarity", [0.0, 0.9])
def test_kill_and_resume_matches_an_uninterrupted_run(tiny_data, tmp_path, similarity):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    reference = _train(script, tiny_data, uninterrupted, "train", similarity)

    victim = _train(script, tiny_data, interrupted, "train", similarity)
    deadline = time.monotonic() + 120
    while not any(row["phase"] == "2" and row["epoch"] == "3" for row in _rows(interrupted)):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never reached phase 2, epoch 3"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (interrupted / "checkpoints" / "final.pt").exists()

    if similarity:  # the phase it resumes trains a projection, which its checkpoints hold
        assert load_checkpoint(interrupted / "checkpoints" / "phase2-last.pt")["criterion"]
    _finish(_train(script, tiny_data, interrupted, "resume", similarity))
    _finish(reference)

    expected = load_checkpoint(uninterrupted / "checkpoints" / "final.pt")["model_state"]
    resumed = load_checkpoint(interrupted / "checkpoints" / "final.pt")["model_state"]
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert _rows(interrupted) == _rows(uninterrupted)
