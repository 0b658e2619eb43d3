"""What a run leaves behind besides checkpoints: ``metrics.csv``, TensorBoard events and plots."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Callable

from phasenets.train.metrics import SplitMetrics
from phasenets.train.rundir import RunDirectory

__all__ = ["CSV_FIELDS", "RunLog", "best_epochs", "read_metrics", "truncate_metrics", "plot_history"]

CSV_FIELDS = ["phase", "epoch", "split", "loss", "accuracy", "top5", "lr", "seconds"]
# Plots are redrawn at a phase end only while drawing them has cost under this share of the run's
# time: a long run's curves stay current, a run of seconds is not slowed by five redraws.
PLOT_TIME_SHARE = 0.05
FIRST_PLOT_SECONDS = 1.5  # what the first drawing is assumed to cost (measured 1.2-2.8 s with matplotlib's import)


class RunLog:
    """Appends one row per (phase, epoch, split) to ``metrics.csv`` and mirrors it to TensorBoard.

    Only rank 0 makes one; the CSV is flushed after every row so a killed run keeps its history.
    """

    def __init__(self, run_dir: RunDirectory, tensorboard: bool = True, monitor: str = "accuracy"):
        self.run_dir = run_dir
        self.monitor = monitor  # what picks a phase's best epoch, marked in the plots
        self.csv_path = run_dir.metrics_file
        self._opened = time.perf_counter()
        self._rows = 0  # rows logged by this process
        self._rows_plotted: int | None = None  # how many of them the plots on disk show
        self._plot_seconds = 0.0  # drawing time so far
        self._last_plot_seconds = FIRST_PLOT_SECONDS
        new_file = not self.csv_path.exists()
        self._file = open(self.csv_path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_FIELDS)
        if new_file:
            self._writer.writeheader()
            self._file.flush()
        self._tensorboard = _open_tensorboard(run_dir.tensorboard_dir) if tensorboard else None

    def log(self, phase: int, epoch: int, split: str, metrics: SplitMetrics, lr: float | None, seconds: float,
            step: int) -> None:
        """Record one pass over ``split``; ``step`` is the x axis in TensorBoard (epochs over all phases);
        ``lr`` None for a pass that trains nothing (a test)."""
        self._writer.writerow({
            "phase": phase, "epoch": epoch, "split": split, "loss": f"{metrics.loss:.6g}",
            "accuracy": f"{metrics.accuracy:.6g}", "top5": "" if metrics.top5 is None else f"{metrics.top5:.6g}",
            "lr": "" if lr is None else f"{lr:.6g}", "seconds": f"{seconds:.3f}",
        })
        self._file.flush()
        self._rows += 1
        if self._tensorboard is not None:
            self._tensorboard.add_scalar(f"{split}/loss", metrics.loss, step)
            self._tensorboard.add_scalar(f"{split}/accuracy", metrics.accuracy, step)
            if metrics.top5 is not None:
                self._tensorboard.add_scalar(f"{split}/top5", metrics.top5, step)
            if split == "train" and lr is not None:
                self._tensorboard.add_scalar("lr", lr, step)
            self._tensorboard.flush()

    def refresh_plots(self, phase_names: dict[int, str], *, final: bool = False) -> None:
        """Redraw ``accuracy.png`` and ``loss.png`` (``plot_history``) if they are out of date: at
        the run's end always, at a phase end only while the drawing stays under PLOT_TIME_SHARE
        of the run's time (``phasenets plot RUN_DIR`` draws them any time)."""
        if self._rows_plotted == self._rows:
            return
        elapsed = time.perf_counter() - self._opened
        if not final and self._plot_seconds + self._last_plot_seconds > PLOT_TIME_SHARE * elapsed:
            return
        started = time.perf_counter()
        plot_history(self.run_dir, phase_names, self.monitor)
        self._last_plot_seconds = time.perf_counter() - started
        self._plot_seconds += self._last_plot_seconds
        self._rows_plotted = self._rows

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _open_tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(csv_path: str | Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def truncate_metrics(csv_path: Path, keep: Callable[[dict[str, str]], bool]) -> None:
    """Drop the rows a resumed run will write again (those after its last checkpoint)."""
    if not csv_path.exists():
        return
    rows = [row for row in read_metrics(csv_path) if keep(row)]
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(csv_path)


def best_epochs(rows: list[dict[str, str]], monitor: str = "accuracy") -> dict[int, dict[str, str]]:
    """Each phase's validation row of its best epoch: the highest accuracy or the lowest loss,
    the earliest of equals (early stopping keeps the first best)."""
    best: dict[int, dict[str, str]] = {}
    sign = 1.0 if monitor == "accuracy" else -1.0
    for row in rows:
        if row["split"] != "validation":
            continue
        phase = int(row["phase"])
        if phase not in best or sign * float(row[monitor]) > sign * float(best[phase][monitor]):
            best[phase] = row
    return best


def plot_history(run_dir: RunDirectory, phase_names: dict[int, str], monitor: str = "accuracy") -> list[Path]:
    """``accuracy.png`` and ``loss.png``: every epoch of every phase on one axis, phases marked.

    Train and validation are lines; each phase's best validation epoch (by ``monitor``: the
    weights the phase keeps) is a star, and a phase's test evaluation a dot at that epoch. The
    title names the run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir.metrics_file)
    last_epoch: dict[int, int] = {}
    for row in rows:
        phase = int(row["phase"])
        last_epoch[phase] = max(last_epoch.get(phase, 0), int(row["epoch"]))
    offsets, start = {}, 0
    for phase in sorted(last_epoch):
        offsets[phase] = start
        start += last_epoch[phase]

    best = best_epochs(rows, monitor)
    paths = []
    for metric, label in (("accuracy", "top-1 accuracy"), ("loss", "loss")):
        figure, axes = plt.subplots(figsize=(8, 4.5))
        kept = [(offsets[phase] + int(row["epoch"]), float(row[metric])) for phase, row in best.items()]
        if kept:
            xs, ys = zip(*kept)
            axes.plot(xs, ys, "*", color="C1", markersize=11, label=f"best validation {monitor} (kept)", zorder=3)
        for split, style, color in (("train", "-", "C0"), ("validation", "-", "C1"), ("test", "o", "C2")):
            legend = split  # once per split, not once per phase
            for phase, offset in offsets.items():  # lines break at phase boundaries
                points = [(offset + int(r["epoch"]), float(r[metric])) for r in rows
                          if r["split"] == split and int(r["phase"]) == phase]
                if points:
                    xs, ys = zip(*points)
                    axes.plot(xs, ys, style, color=color, label=legend)
                    legend = None
        for phase, offset in offsets.items():
            if offset > 0:
                axes.axvline(offset + 0.5, color="gray", linestyle="--", linewidth=0.8)
            axes.text(offset + 0.6, 0.98, phase_names.get(phase, f"phase {phase}"), transform=axes.get_xaxis_transform(),
                      fontsize=8, va="top", color="gray")
        axes.set_xlim(0.5, start + 0.5)
        axes.set_xlabel("epoch (all phases)")
        axes.set_ylabel(label)
        axes.set_title(f"{run_dir.path.name}: {label}")
        axes.legend(loc="best")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = run_dir.plot_file(metric)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths
