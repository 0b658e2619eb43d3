"""The run directory: every file a run writes, named once, and the rules for finding its checkpoints.

Layout (README "What a run leaves behind")::

    RUN/
      config.yaml          the resolved options; --resume reads them back
      preflight.json       the image check's report
      metrics.csv          one row per (phase, epoch, split)
      summary.json         the finished run: phases, final metrics, per-class accuracy, confusion,
                           the level caches it held (tier, dtype, size)
      accuracy.png         train/validation curves over all phases (loss.png likewise)
      tensorboard/         TensorBoard events, when tensorboard is installed
      checkpoints/
        phase<k>-best.pt   phase k at its best validation epoch (what later phases build on)
        phase<k>-last.pt   phase k after its latest epoch (what --resume continues)
        phase<k>-shared.pt the weights phase k never changes, shared by its best and last
        final.pt           the whole trained network, self-contained
      cache/               disk-tier feature caches (the default --cache-dir)
      viz/                 what `phasenets viz` draws

A folder holds a run once it has ``checkpoints/``; a run directory is created only when its run
really starts. ``trained_checkpoint`` is the one rule for "the network this run trained":
``final.pt``, else the latest phase's best.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from phasenets.errors import CheckpointError, ConfigError

__all__ = ["CHECKPOINT_KINDS", "RunDirectory", "resolve_checkpoint"]

CHECKPOINT_KINDS = ("best", "last", "shared")
_PHASE_FILE = re.compile(r"phase(\d+)-(best|last|shared)\.pt")


@dataclass(frozen=True)
class RunDirectory:
    """One run's folder; its properties name every file in it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------ the files

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def preflight_file(self) -> Path:
        return self.path / "preflight.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def plot_file(self, metric: str) -> Path:
        """``accuracy.png`` or ``loss.png``."""
        return self.path / f"{metric}.png"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def cache_dir(self) -> Path:
        """Where disk-tier caches go unless ``--cache-dir`` says otherwise."""
        return self.path / "cache"

    @property
    def viz_dir(self) -> Path:
        return self.path / "viz"

    def checkpoint(self, phase: int, kind: str) -> Path:
        """``checkpoints/phase<phase>-<kind>.pt``; ``kind`` is one of :data:`CHECKPOINT_KINDS`."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, got {kind!r}")
        return self.checkpoints_dir / f"phase{phase}-{kind}.pt"

    @property
    def final_checkpoint(self) -> Path:
        return self.checkpoints_dir / "final.pt"

    # ------------------------------------------------------------------ what is there

    @property
    def holds_run(self) -> bool:
        """Whether a run has started here (its checkpoints folder exists)."""
        return self.checkpoints_dir.is_dir()

    def phase_checkpoints(self, kind: str) -> list[Path]:
        """The ``phase<k>-<kind>.pt`` files present, by phase number."""
        found = [(int(match[1]), path) for path in self.checkpoints_dir.glob(f"phase*-{kind}.pt")
                 if (match := _PHASE_FILE.fullmatch(path.name))]
        return [path for _, path in sorted(found)]

    def resume_candidates(self) -> list[Path]:
        """Where ``--resume`` may continue from, newest first: each phase's ``last`` then ``best``
        checkpoint, from the latest phase back (an earlier one serves where a newer is damaged)."""
        phases = {int(match[1]) for path in self.checkpoints_dir.glob("phase*.pt")
                  if (match := _PHASE_FILE.fullmatch(path.name))}
        return [path for phase in sorted(phases, reverse=True) for kind in ("last", "best")
                if (path := self.checkpoint(phase, kind)).is_file()]

    def trained_checkpoint(self) -> Path:
        """The network this run trained: ``final.pt``, else its latest phase's best."""
        if not self.holds_run:
            raise CheckpointError(f"{self.path} has no checkpoints/ folder; is it a phasenets run directory?")
        if self.final_checkpoint.is_file():
            return self.final_checkpoint
        best = self.phase_checkpoints("best")
        if not best:
            raise CheckpointError(f"{self.checkpoints_dir} holds neither final.pt nor any phase<k>-best.pt: "
                                  "the run trained nothing yet")
        return best[-1]

    def start_checkpoint(self, start_phase: int) -> Path:
        """The weights phase ``start_phase`` builds on (``--ckpt-dir``): phase ``start_phase - 1``'s
        best, or ``final.pt``."""
        candidates = [self.checkpoint(start_phase - 1, "best")] if start_phase > 1 else []
        candidates.append(self.final_checkpoint)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise ConfigError(f"--ckpt-dir {self.path}: none of {', '.join(c.name for c in candidates)} found there")

    # ------------------------------------------------------------------ making one

    @classmethod
    def for_new_run(cls, output: str | Path | None, model: str, schedule: str, stamp: str | None = None) -> RunDirectory:
        """``output``, or ``runs/<model>-<schedule>-<timestamp>``; refuses a folder holding a run."""
        if output is None:
            stamp = stamp or datetime.now().strftime("%Y%m%d-%H%M%S")
            return cls(Path("runs") / f"{model}-{schedule}-{stamp}")
        run_dir = cls(output)
        if run_dir.holds_run:
            raise ConfigError(f"{run_dir.path} already holds a run: continue it with --resume {run_dir.path} "
                              "or choose another --output")
        if run_dir.path.exists() and not run_dir.path.is_dir():
            raise ConfigError(f"--output {run_dir.path} is a file, not a folder: choose another --output")
        existing = next(folder for folder in (run_dir.path, *run_dir.path.absolute().parents) if folder.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"--output {run_dir.path}: {existing} cannot be written to; choose another --output")
        return run_dir

    @classmethod
    def for_resume(cls, path: str | Path) -> RunDirectory:
        run_dir = cls(path)
        if not run_dir.holds_run:
            raise ConfigError(f"--resume {run_dir.path}: no checkpoints/ there; is it a phasenets run directory?")
        return run_dir

    def create(self) -> None:
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDirectory:
        """The run a checkpoint file belongs to (the folder itself for a run directory, the file's
        folder for a loose checkpoint)."""
        checkpoint = Path(checkpoint)
        if checkpoint.is_dir():
            return cls(checkpoint)
        return cls(checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent)


def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint file as given, or the trained network of a run directory."""
    source = Path(source)
    return RunDirectory(source).trained_checkpoint() if source.is_dir() else source
