"""``RunRecorder``: everything a run writes into its run directory, from rank 0 only.

Checkpoints go through a ``CheckpointWriter`` (on a background thread with one process, so the
loop does not wait on serialization); ``metrics.csv``, TensorBoard and the plots through a
``RunLog``; the resolved ``config.yaml`` and ``summary.json`` directly. Other ranks get a recorder
that writes nothing, so the loop calls it the same way on every rank.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from phasenets.train.checkpoint import (SHARED_STATE_KEY, Checkpoint, CheckpointWriter, ModelRecord, capture_rng_state,
                                        save_checkpoint)
from phasenets.train.metrics import SplitMetrics
from phasenets.train.plan import Phase
from phasenets.train.run_log import RunLog, truncate_metrics
from phasenets.train.rundir import RunDirectory

__all__ = ["RunIdentity", "RunRecorder"]


@dataclass(frozen=True)
class RunIdentity:
    """The part of every checkpoint that stays the same through a run."""

    model: ModelRecord
    classes: list[str]
    normalization: dict[str, list[float]]
    config: dict[str, Any]  # the resolved options
    task: dict[str, Any] | None
    frozen_blocks: list[int]

    def checkpoint(self, phase: Phase, model_state: dict[str, torch.Tensor], **progress: Any) -> Checkpoint:
        """A checkpoint of ``phase`` holding ``model_state``, with the RNG states as they are now."""
        return Checkpoint(model_state=model_state, phase=phase.index, phase_name=phase.name, rng=capture_rng_state(),
                          **asdict(self) | {"model": self.model}, **progress)


class RunRecorder:
    """Writes the run directory's files as the run goes (rank 0; see the module docstring).

    ``resumed_at``: ``(phase, epoch, completed)`` of the checkpoint a resumed run continues from:
    the ``metrics.csv`` rows written after it are dropped, since the run writes them again.
    """

    def __init__(self, run_dir: RunDirectory, identity: RunIdentity, *, is_main: bool, background: bool,
                 tensorboard: bool, monitor: str = "accuracy", resumed_at: tuple[int, int, bool] | None = None):
        self.run_dir = run_dir
        self.identity = identity
        self.is_main = is_main
        # With several processes the checkpoints are written in the loop's thread: a rank's next
        # gradient all-reduce then means rank 0 has committed the epochs before (what a failure leaves).
        # one payload in flight: a snapshot of the stage and its optimizer state is the largest thing a
        # phase holds (AlexNet's classifier phase: 225 MiB each), and an epoch outlasts its write
        self.checkpoints = CheckpointWriter(save_checkpoint, background=background, max_pending=1)
        self.log: RunLog | None = None
        if is_main:
            if resumed_at is not None:
                truncate_metrics(run_dir.metrics_file, lambda row: _written_before(row, *resumed_at))
            self.log = RunLog(run_dir, tensorboard=tensorboard, monitor=monitor)
        self._previous_shared: str | None = None  # the last phase-shared file written (save_shared)
        self._changed_since_shared: set[str] = set()  # state entries trained since it was written

    def save_phase(self, phase: Phase, kinds: tuple[str, ...], stage_state: dict[str, torch.Tensor],
                   stage_state_copied: bool = False, **progress: Any) -> None:
        """Checkpoint ``phase`` as each of ``kinds`` (one payload, written while training goes on).
        Its model state is the phase's stage only; the rest is in the phase's shared file.
        ``stage_state_copied``: the tensors are a copy of the caller's that training will not
        change (the phase's best weights), which the background write then need not copy again."""
        if not self.is_main:
            return
        payload = self.identity.checkpoint(phase, stage_state, **progress).to_payload()
        payload[SHARED_STATE_KEY] = self.run_dir.checkpoint(phase.index, "shared").name
        self.checkpoints.write([self.run_dir.checkpoint(phase.index, kind) for kind in kinds], payload,
                               owned=frozenset({"model_state"}) if stage_state_copied else frozenset())

    def save_shared(self, phase: Phase, model_state: dict[str, torch.Tensor], stage_names: frozenset[str]) -> None:
        """Write, once per phase, the weights the phase never changes (everything outside its stage).

        The first phase this process trains writes them all; each later phase writes only those
        the phases since have changed (their stages) and names the previous phase's file for the
        rest, which ``load_checkpoint`` follows. Untrained blocks are thus written once per run,
        not once per phase (they are most of AlexNet's or VGG's weights).
        """
        if not self.is_main:
            return
        shared = {name: tensor for name, tensor in model_state.items() if name not in stage_names}
        payload: dict[str, Any] = {"model_state": shared}
        if self._previous_shared is not None:
            changed = {name: tensor for name, tensor in shared.items() if name in self._changed_since_shared}
            payload = {"model_state": changed, SHARED_STATE_KEY: self._previous_shared}
        path = self.run_dir.checkpoint(phase.index, "shared")
        self.checkpoints.write([path], payload)
        self._previous_shared, self._changed_since_shared = path.name, set()

    def trained(self, stage_names: frozenset[str]) -> None:
        """Note that a phase changed these state entries (the next shared file must hold them)."""
        self._changed_since_shared.update(stage_names)

    def log_metrics(self, phase: Phase, epoch: int, split: str, metrics: SplitMetrics, lr: float | None,
                    seconds: float, step: int) -> None:
        if self.log is not None:
            self.log.log(phase.index, epoch, split, metrics, lr, seconds, step)

    def refresh_plots(self, phase_names: dict[int, str]) -> None:
        if self.log is not None:
            self.log.refresh_plots(phase_names)

    def save_config(self, config) -> None:
        """The resolved options as ``config.yaml`` (``--resume`` reads them back)."""
        if self.is_main:
            config.save(self.run_dir.config_file)

    def save_final(self, phase: Phase, model_state: dict[str, torch.Tensor], summary: dict[str, Any],
                   phase_names: dict[int, str], prediction: str = "network") -> None:
        """``final.pt`` (the whole network, predicting with ``prediction``), ``summary.json`` and the
        finished plots."""
        if not self.is_main:
            return
        identity = replace(self.identity, model=replace(self.identity.model, prediction=prediction))
        final = identity.checkpoint(phase, model_state, completed=True)
        self.checkpoints.write([self.run_dir.final_checkpoint], final.to_payload())
        self.run_dir.summary_file.write_text(json.dumps(summary, indent=2))
        self.log.refresh_plots(phase_names, final=True)
        self.log.close()
        self.log = None

    def close(self) -> None:
        """Commit the checkpoints still being written (the last epoch's is on disk before training
        returns) and close the log."""
        try:
            self.checkpoints.close()
        finally:
            if self.log is not None:
                self.log.close()


def _written_before(row: dict[str, str], phase: int, epoch: int, completed: bool) -> bool:
    """Whether a metrics.csv row was written before the checkpoint at (phase, epoch, completed)."""
    row_phase, row_epoch = int(row["phase"]), int(row["epoch"])
    if row_phase != phase:
        return row_phase < phase
    if row["split"] == "test":  # written when the phase completed
        return completed
    return row_epoch <= epoch
