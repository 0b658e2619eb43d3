"""``phasenets demo``: scikit-learn's digits, LeNet-5 trained phase-wise and end to end, side by side."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from phasenets.config import DEFAULT_HEAD, TrainConfig
from phasenets.train.trainer import PhaseTrainer, TrainResult

__all__ = ["DemoRun", "format_demo", "prepare_demo_data", "run_demo"]


@dataclass
class DemoRun:
    schedule: str
    result: TrainResult
    seconds: float


def prepare_demo_data(data_dir: str | Path) -> Path:
    """Write the digits as 32x32 PNG class folders (train/validation/test) unless already there."""
    from phasenets.data import import_dataset

    data_dir = Path(data_dir)
    if not (data_dir / "train").is_dir():
        import_dataset("digits", data_dir, image_size=32)
    return data_dir


def run_demo(data_dir: str | Path = "data/demo", output_dir: str | Path = "runs/demo", *, max_epochs: int | None = None,
             patience: int | None = None, schedules: tuple[str, ...] = ("phasewise", "standard"), num_workers: int = 1,
             loader: str = "torch", head: str = DEFAULT_HEAD) -> list[DemoRun]:
    """Train ``lenet5`` on the digits with each schedule, with `TrainConfig`'s defaults otherwise.

    Runs go to ``output_dir/<schedule>`` (replacing an earlier demo's run there). ``max_epochs``
    and ``patience`` None: the trainer's defaults (`phasenets.train.plan`: end to end may take the
    epochs of all the phase-wise phases together). One compute thread: LeNet-5 on 32 px images gains nothing from more, and the loader worker needs a core.
    """
    data_dir = prepare_demo_data(data_dir)
    runs = []
    for schedule in schedules:
        run_dir = Path(output_dir) / schedule
        shutil.rmtree(run_dir, ignore_errors=True)
        config = TrainConfig(
            data_dir=str(data_dir), dataset_name="digits", model="lenet5", schedule=schedule,
            max_epochs=max_epochs, patience=patience, batch_size=64, num_workers=num_workers, loader=loader,
            output=str(run_dir), seed=0, num_threads=1, head=head,
        )
        started = time.perf_counter()
        result = PhaseTrainer(config).fit()
        runs.append(DemoRun(schedule, result, time.perf_counter() - started))
    return runs


def format_demo(runs: list[DemoRun]) -> str:
    lines = [f"{'schedule':<10} {'test accuracy':>13} {'phases':>6} {'seconds':>8}  run directory"]
    for run in runs:
        accuracy = run.result.test_accuracy
        lines.append(f"{run.schedule:<10} {accuracy:>13.4f} {len(run.result.phases):>6} {run.seconds:>8.1f}  "
                     f"{run.result.run_dir}")
    return "\n".join(lines)
