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


def _run(tiny_data, tmp_path, mode: str, with_stderr: bool = False) -> str:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(train_tests=str(HERE), root=str(HERE.parent.parent)))
    done = subprocess.run([sys.executable, str(script), str(tiny_data), str(tmp_path / mode), mode],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr if with_stderr else done.stdout


def test_a_script_sees_the_phase_and_epoch_lines(tiny_data, tmp_path):
    out = _run(tiny_data, tmp_path, "plain", with_stderr=True)
    for line in ("phase 1/3: training blocks 1-1", "phase 1 epoch 1/1", "phase 3 epoch 1/1", "final test accuracy"):
        assert line in out
    # not on a terminal (a log file, CI): plain lines, no progress bar redrawn in place
    assert "\r" not in out and "it/s" not in out and "img/s" not in out


def test_set_verbosity_silences_them(tiny_data, tmp_path):
    assert "epoch" not in _run(tiny_data, tmp_path, "quiet")


def test_an_application_that_logs_gets_each_line_once(tiny_data, tmp_path):
    out = _run(tiny_data, tmp_path, "configured")
    lines = [line for line in out.splitlines() if "phase 2 epoch 1/1" in line]
    assert len(lines) == 1 and lines[0].startswith("app: ")


def test_on_a_terminal_long_work_shows_progress_bars(tmp_path):
    """The preflight, the cache builds and each epoch draw a progress bar where a person watches."""
    from conftest import write_dataset

    tiny_data = write_dataset(tmp_path / "data", {"train": 6, "validation": 2})  # never checked before
    import fcntl
    import os
    import pty
    import struct
    import termios

    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(train_tests=str(HERE), root=str(HERE.parent.parent)))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    process = subprocess.Popen([sys.executable, str(script), str(tiny_data), str(tmp_path / "tty"), "plain"],
                               stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=300) == 0
    text = output.decode(errors="replace")
    for bar in ("checking images", "caching level 1 (train)", "phase 1 epoch 1"):
        assert bar in text, bar
    assert "\r" in text  # redrawn in place
