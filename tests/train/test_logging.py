"""What a script that calls the trainer prints: the CLI's per-phase and per-epoch lines by default,
nothing with ``set_verbosity("warning")``, and each line once when the script configures logging."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


HERE = Path(__file__).parent  # tests/train, whose conftest the script imports

SCRIPT = textwrap.dedent("""
    import logging, sys
    sys.path[:0] = [{train_tests!r}, {root!r}]
    import phasenets
    from conftest import tiny_config, tiny_net
    from phasenets import PhaseTrainer

    data_dir, run_dir, mode = sys.argv[1:4]
    if mode == "quiet":
        phasenets.set_verbosity("warning")
    elif mode == "configured":
        logging.basicConfig(level=logging.INFO, format="app: %(message)s", stream=sys.stdout)
    PhaseTrainer(tiny_config(data_dir, run_dir, max_epochs=1), model=tiny_net()).fit()
""")


def _run(tiny_data, tmp_path, mode: str) -> str:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(train_tests=str(HERE), root=str(HERE.parent.parent)))
    done = subprocess.run([sys.executable, str(script), str(tiny_data), str(tmp_path / mode), mode],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_script_sees_the_phase_and_epoch_lines(tiny_data, tmp_path):
    out = _run(tiny_data, tmp_path, "plain")
    for line in ("phase 1/3: training blocks 1-1", "phase 1 epoch 1/1", "phase 3 epoch 1/1", "final test accuracy"):
        assert line in out


def test_set_verbosity_silences_them(tiny_data, tmp_path):
    assert "epoch" not in _run(tiny_data, tmp_path, "quiet")


def test_an_application_that_logs_gets_each_line_once(tiny_data, tmp_path):
    out = _run(tiny_data, tmp_path, "configured")
    lines = [line for line in out.splitlines() if "phase 2 epoch 1/1" in line]
    assert len(lines) == 1 and lines[0].startswith("app: ")
