"""Every command of the README is run by a test, so the README cannot drift from the code.

The shell commands of its ```bash blocks run as written, block by block, each block in a scratch
folder of its own (a command may refuse an output folder an earlier block filled). The few that
need what this machine or a test cannot have are checked another way, and say so in ``ELSEWHERE``:
the set-up commands are what ``scripts/bootstrap.sh`` runs and CI runs the two first commands; the
multi-GPU and multi-machine lines are parsed by the CLI's own parser. The ```python blocks run as
scripts, and the commands the prose names (eval, export, viz, plot, the frozen-backbone example)
run on the training block's run.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PHASENETS = [sys.executable, "-m", "phasenets"]

# commands checked another way than by running them here, and how
ELSEWHERE = {
    "bash scripts/bootstrap.sh demo": "ci",
    "bash scripts/bootstrap.sh test": "ci",
    "pip install --no-build-isolation -e .": "bootstrap",
    "pip install nvidia-dali-cuda130": "bootstrap",
    "phasenets train --data-dir DATA --model alexnet --nproc 4 --amp bf16": "parse",
    "torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m phasenets train "
    "--data-dir DATA --model alexnet --amp bf16": "parse",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def commands(block: str) -> list[str]:
    """A block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line.split("#", 1)[0].strip() for line in joined.splitlines()]
    return [" ".join(line.split()) for line in lines if line]


def optional_variants(command: str) -> list[str]:
    """``[--json]``-style optional parts: the command without them, then with all of them."""
    bare = re.sub(r"\s*\[[^\]]*\]", "", command)
    full = re.sub(r"\[([^\]]*)\]", r"\1", command)
    return [bare] if bare == full else [bare, full]


def run(command: str, cwd: Path, **substitutions: str) -> subprocess.CompletedProcess:
    for placeholder, value in substitutions.items():
        command = re.sub(rf"\b{placeholder}\b", value, command)
    argv = shlex.split(command)
    if argv[0] == "phasenets":
        argv = PHASENETS + argv[1:]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def fashion_mnist():
    from phasenets.data.tools import FASHION_MNIST_PACKAGE, _package_files

    try:
        _package_files(FASHION_MNIST_PACKAGE)
    except FileNotFoundError as missing:
        pytest.skip(str(missing))


def test_every_readme_command_is_run_or_accounted_for():
    """A command added to the README must be run below or named in ELSEWHERE with a reason."""
    run_here = {command for block in blocks("bash") for command in commands(block)} - set(ELSEWHERE)
    assert run_here == {command for block in (TRAINING, ORIGINAL_FLAGS, DATA, SUMMARY) for command in commands(block)}
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(command in ci for command, how in ELSEWHERE.items() if how == "ci")
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "--no-build-isolation" in bootstrap and "-e ." in bootstrap and "nvidia-dali-cuda130" in bootstrap


def _block_with(text: str) -> str:
    [block] = [block for block in blocks("bash") if text in block]
    return block


TRAINING = _block_with("phasenets data import digits --output data/digits --image-size 32     #")
ORIGINAL_FLAGS = _block_with("--freeze_layers false")
DATA = _block_with("phasenets data check DATA")
SUMMARY = _block_with("phasenets summary --model alexnet")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The training block, as a new user runs it."""
    folder = tmp_path_factory.mktemp("readme-training")
    for command in commands(TRAINING):
        run(command, folder)
    return folder


def test_the_training_block(trained):
    summary = (trained / "runs" / "digits" / "summary.json").read_text()
    assert '"split": "test"' in summary


def test_the_commands_the_prose_names_run_on_that_run(trained):
    run("phasenets eval --checkpoint RUN_OR_CKPT --data-dir DATA --split test", trained,
        RUN_OR_CKPT="runs/digits", DATA="data/digits")
    run("phasenets export --checkpoint runs/digits --format onnx", trained)
    run("phasenets viz filters --checkpoint runs/digits", trained)
    run("phasenets plot RUN_DIR", trained, RUN_DIR="runs/digits")
    example = ROOT / "examples" / "frozen_backbone.py"  # `python examples/frozen_backbone.py`, from anywhere
    first = run(f"python {example} --epochs 2", trained)
    again = run(f"python {example} --epochs 2", trained)
    assert "running blocks 1..2" in first.stdout and "found the committed cache" in again.stdout


def test_the_python_blocks_run_as_scripts(trained):
    for number, script in enumerate(blocks("python")):
        path = trained / f"readme_{number}.py"
        path.write_text(script)
        run(f"python {path}", trained)


def test_the_original_flags_block(tmp_path, fashion_mnist):
    for command in commands(ORIGINAL_FLAGS):
        run(command, tmp_path)
    assert '"schedule": "standard"' in next(tmp_path.glob("runs/lenet5-standard-*/summary.json")).read_text()


def test_the_data_block(trained, tmp_path, fashion_mnist):
    (tmp_path / "SRC").symlink_to(trained / "data" / "digits" / "train")  # one folder of class folders
    for command in commands(DATA):
        run(command, tmp_path, DATA=str(trained / "data" / "digits"))
    assert (tmp_path / "OUT" / "train_balanced").is_dir() and (tmp_path / "data" / "fm" / "train").is_dir()


def test_the_summary_block(tmp_path):
    for command in commands(SUMMARY):
        for variant in optional_variants(command):
            run(variant, tmp_path)


@pytest.mark.parametrize("command", [command for command, how in ELSEWHERE.items() if how == "parse"])
def test_the_multi_gpu_lines_parse(command, tmp_path):
    """A GPU per process and several machines are not here (the two-machine line runs with one
    process per "machine" in tests/train/test_distributed.py): the lines' options must be valid."""
    from phasenets.cli import build_parser
    from phasenets.config import config_from_args

    argv = shlex.split(command.replace("DATA", str(tmp_path)))
    argv = argv[argv.index("train"):] if argv[0] == "torchrun" else argv[1:]
    config = config_from_args(build_parser().parse_args(argv))
    assert config.model == "alexnet" and config.amp == "bf16"
