"""scripts/gpu_checks.sh and its T2 report, as far as a machine without a GPU can check them: the
script prepares everything that needs no GPU (data, command lines) before it stops for the lack
of one, and the report turns the runs' summaries into T2."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _nvcc() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs every check (minutes)")
@pytest.mark.skipif(not _nvcc(), reason="without nvcc the script stops before it looks for a GPU")
def test_gpu_checks_prepare_everything_then_stop_for_want_of_a_gpu(tmp_path):
    environment = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    run = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_checks.sh")], env=environment,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "ready after" in run.stdout and "data, command lines" in run.stdout
    assert "no CUDA GPU here" in run.stderr


def _level(level: int, tier: str, dtype: str) -> dict:
    return {"level": level, "split": "train", "tier": tier, "dtype": dtype, "views": 1, "nbytes": 1000, "reused": False}


def _summary(schedule: str, cache: str, seconds: float, accuracy: float, phases: int, levels=()) -> dict:
    config = {"schedule": schedule, "cache": cache, "cache_dtype": "fp16", "augment": "none", "amp": "bf16",
              "image_size": 224, "batch_size": 32, "max_epochs": 2}
    return {"config": config, "phases": [{"epochs": 2}] * phases, "seconds": seconds,
            "final": {"split": "test", "accuracy": accuracy},
            "cache": {"enabled": cache != "off", "builds": len(levels), "reuses": 0, "levels": list(levels),
                      "wait_fractions": {}}}


def test_t2_report_judges_the_cached_run_against_standard_training(tmp_path):
    # the cache column reads what each run held: the images (level 0) in float32, features in fp16
    runs = {"phasewise-cache-cuda": _summary("phasewise", "cuda", 30.0, 0.71, 5,
                                             [_level(0, "cuda", "fp32")] + [_level(k, "cuda", "fp16") for k in (1, 2)]),
            "phasewise-recompute": _summary("phasewise", "off", 45.0, 0.70, 5),
            "standard": _summary("standard", "auto", 40.0, 0.65, 1, [_level(0, "host", "fp32")]),
            "augmented": _summary("phasewise", "auto", 50.0, 0.60, 5, [_level(1, "cuda", "fp16")])}
    for name, summary in runs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps(summary))
    steps = "".join(f"{name}\tok\t{seconds}\t120\n" for name, seconds in
                    [("build", 50.2), ("phasewise-cache-cuda", 41.5), ("phasewise-recompute", 55.0), ("standard", 48.0),
                     ("augmented", 60.0)])
    (tmp_path / "steps.tsv").write_text(steps)
    command = [sys.executable, str(REPO_ROOT / "scripts" / "gpu_t2_report.py"), "--out", str(tmp_path / "out"),
               "--runs", str(tmp_path / "runs"), "--steps", str(tmp_path / "steps.tsv"), *runs, "missing-run"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)

    report = json.loads((tmp_path / "out" / "t2-gpu.json").read_text())
    assert report["t2"] == {"ratio": 0.75, "target": 1.0, "met": True,
                            "note": "phasewise-cache-cuda / standard, training seconds"}
    cached = report["runs"]["phasewise-cache-cuda"]
    assert (cached["wall_seconds"], cached["train_seconds"], cached["epochs"], cached["final_accuracy"]) == (41.5, 30.0, 10, 0.71)
    assert report["runs"]["missing-run"] == {"status": "not run", "wall_seconds": None}
    assert report["device"]["gpu"]  # the GPU's name, or that there was none
    table = (tmp_path / "out" / "t2-gpu.md").read_text()
    assert ("| phasewise-cache-cuda | phasewise | cuda (features fp16, images fp32) | bf16 | 224 | 32 | 5 | 10 | ok | 41.5 | "
            "30.0 | 0.710 (test) |") in table
    assert "| standard | standard | host (images fp32) |" in table
    assert "| augmented | phasewise | cuda (features fp16) |" in table
    assert "| phasewise-recompute | phasewise | off |" in table
    assert "**T2**: 0.75x (target <= 1.0x): met" in table
