"""scripts/bootstrap.sh (issue 19): a second set-up does not rebuild unchanged native sources, and
numpy is in place before anything imports torch.

The script is sourced (which runs nothing) and its functions are called against a stand-in venv
whose ``pip`` only records what it was asked to install: nothing is downloaded or built here.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from phasenets import _extension

REPO_ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = REPO_ROOT / "scripts" / "bootstrap.sh"

RECORDING_PIP = """#!/usr/bin/env bash
# records each call; "installs" a package by leaving a file of its name in the venv
echo "pip $*" >>"{venv}/pip.log"
for argument in "$@"; do
    case "$argument" in -*) ;; *) touch "{venv}/installed-${{argument%%=*}}" ;; esac
done
"""


def make_venv(tmp_path: Path, python: str) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in {"python": python, "pip": RECORDING_PIP.format(venv=venv)}.items():
        path = venv / "bin" / name
        path.write_text(text)
        path.chmod(0o755)
    return venv


def run_functions(venv: Path, *calls: str) -> subprocess.CompletedProcess:
    """Source bootstrap.sh with VENV=venv, then run ``calls`` (shell lines) in that shell."""
    script = f"source {BOOTSTRAP}\n" + "\n".join(calls)
    return subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "VENV": str(venv)},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not _extension.native_available(), reason="phasenets._C is not built in this checkout")
def test_a_second_setup_does_not_rebuild_unchanged_sources(tmp_path):
    # this interpreter, which can import torch and the phasenets._C built in this checkout
    venv = make_venv(tmp_path, f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    first = run_functions(venv, "install_phasenets")
    assert first.returncode == 0, first.stderr
    assert "building phasenets" in first.stderr  # no stamp yet
    assert (venv / "pip.log").read_text().count("install") == 1

    again = run_functions(venv, "install_phasenets")
    assert again.returncode == 0, again.stderr
    assert "building" not in again.stderr, "unchanged sources and a loadable extension must not be rebuilt"
    assert (venv / "pip.log").read_text().count("install") == 1

    (venv / ".phasenets-build").write_text("a digest of other sources\n")
    changed = run_functions(venv, "install_phasenets")
    assert "building phasenets" in changed.stderr
    assert (venv / "pip.log").read_text().count("install") == 2


FRESH_PYTHON = """#!/usr/bin/env bash
# A fresh venv's interpreter: it imports only what the recording pip "installed"; importing torch
# without numpy warns as torch does.
venv="$(dirname "$(dirname "$0")")"
code="${@: -1}"
if [[ "$code" == *"import torch"* ]]; then
    [[ -e "$venv/installed-torch" ]] || exit 1
    [[ -e "$venv/installed-numpy" ]] || echo "UserWarning: Failed to initialize NumPy: No module named 'numpy'" >&2
    echo "2.13.0"
elif [[ "$code" == *"import numpy"* ]]; then
    [[ -e "$venv/installed-numpy" ]] || exit 1
fi
"""


def test_numpy_is_installed_before_torch_is_imported(tmp_path):
    venv = make_venv(tmp_path, FRESH_PYTHON)
    result = run_functions(venv, "install_torch", "write_constraints")
    assert result.returncode == 0, result.stderr
    assert "Failed to initialize NumPy" not in result.stderr
    installs = (venv / "pip.log").read_text().splitlines()
    assert installs == ["pip install -q numpy", "pip install -q torch==2.13.0"]
    assert (venv / "constraints.txt").read_text() == "torch==2.13.0\n"
