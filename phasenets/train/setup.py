"""``prepare_run(config) -> RunSetup``: everything a run needs, assembled once, before any phase.

Each piece is made by a plain function below, in the order ``prepare_run`` reads top to bottom:
the processes, the run directory (checked, not yet created), the data after the preflight, where
the run starts (fresh, ``--ckpt-dir`` weights, or ``--resume``), the network and the blocks it
reuses frozen, the input normalization, the phase plan, the inputs (loaders and level caches),
and the recorder that writes the run directory. The result is a frozen :class:`RunSetup`; the
phase loop (``loop.py``) is a set of functions over it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from phasenets.data import DatasetSplits, Normalization, compute_normalization
from phasenets._atomic import remove_stale_temporaries
from phasenets._extension import set_flush_denormal
from phasenets.errors import CheckpointError, ConfigError
from phasenets.train.checkpoint import Checkpoint, ModelRecord
from phasenets.train.curriculum import plan_around_frozen, task_record, task_splits
from phasenets.train.distributed import DistributedContext
from phasenets.train.inputs import ImageFeed, PhaseInputs
from phasenets.train.plan import Phase, build_plan, default_patience, steps_per_epoch
from phasenets.train.precision import Precision
from phasenets.train.preflight import apply_report, check_images
from phasenets.train.recorder import RunIdentity, RunRecorder
from phasenets.train.resources import CpuPlan, plan_cpu
from phasenets.train.results import PhaseResult
from phasenets.train.rundir import RunDirectory

if TYPE_CHECKING:
    from phasenets.config import TrainConfig
    from phasenets.train.transfer import TransferReport

__all__ = ["RunSetup", "StartPoint", "prepare_run"]

log = logging.getLogger("phasenets")


@dataclass(frozen=True)
class StartPoint:
    """Where training begins: a phase, and the checkpoint it continues from (``--resume``: the
    latest ``last`` checkpoint; ``--ckpt-dir``: the weights the phase builds on)."""

    phase: int
    checkpoint: Checkpoint | None = None
    done: tuple[PhaseResult, ...] = ()  # the phases a resumed run has finished
    mid_phase: bool = False  # the checkpoint is an unfinished epoch loop of `phase`
    resumed: bool = False  # --resume (not --ckpt-dir)
    best_state: dict[str, torch.Tensor] | None = None  # mid-phase: the phase's best weights so far


@dataclass(frozen=True)
class RunSetup:
    """One run, ready to train: made by :func:`prepare_run`, read by the phase loop.

    ``config`` is resolved (the class count, image size, channels, learning rate and run
    directory filled in). ``frozen_blocks`` are the blocks reused frozen from an earlier task,
    which no phase trains. Close it (or use it as a context manager) to release the loaders'
    workers, the caches and the recorder's writer.
    """

    config: TrainConfig
    dist: DistributedContext
    run_dir: RunDirectory
    data: DatasetSplits
    model: nn.Module
    frozen_blocks: tuple[int, ...]
    plan: tuple[Phase, ...]
    start: StartPoint
    precision: Precision
    inputs: PhaseInputs
    recorder: RunRecorder
    cpu: CpuPlan
    threads_before: int  # torch's compute threads before the run took them: put back at close

    def info(self, message: str, *args: Any) -> None:
        """A progress line, from rank 0 only."""
        if self.dist.is_main:
            log.info(message, *args)

    @property
    def phase_names(self) -> dict[int, str]:
        return {phase.index: phase.name for phase in self.plan}

    def close(self, succeeded: bool = True) -> None:
        """Release what the run holds. The process group is left only after a run that ended well
        on this rank: tearing down a group whose other ranks are inside a collective can block,
        and after a failure the launcher stops them anyway."""
        try:
            self.recorder.close()
        finally:
            self.inputs.close()
            torch.set_num_threads(self.threads_before)
            set_flush_denormal(False)  # torch's default
        if succeeded:
            self.dist.close()

    def __enter__(self) -> RunSetup:
        return self

    def __exit__(self, kind, *_) -> None:
        self.close(succeeded=kind is None)


def prepare_run(config: TrainConfig, model: nn.Module | None = None) -> RunSetup:
    """Assemble a run of ``config``: its data, network, plan, inputs and run directory.

    ``model``: a ready ``BlockwiseNet`` (e.g. ``BlockwiseNet.from_modules(...)``); by default
    ``config.model`` is built from the registry. Options, the model name and the output folder
    are checked before the images are; the run directory is created last.
    """
    dist = join_processes(config)
    cpu = plan_cpu(config.num_workers, config.num_threads, dist.local_world_size)
    run_dir = claim_run_dir(config, dist)
    _check_model_name(config, model)
    seed_everything(config.seed, config.deterministic)
    task = task_record(config)
    data = read_data(config, task, run_dir, dist, _input_size(config, model))
    start = find_start(config, run_dir, dist)
    model = build_network(config, data, start, model)
    frozen_blocks, transfer = reused_blocks(config, model, start, dist)
    model = model.to(dist.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # conv weights; inputs follow in Precision.layout
    normalization = choose_normalization(config, data, model, start, transfer, dist)
    steps = steps_per_epoch(len(data.train), config.batch_size, dist.world_size)
    plan = plan_phases(config, model, frozen_blocks, dist, steps)
    precision = Precision(dist.device, config.amp, config.channels_last)
    images = ImageFeed(config, data, dist, model.input_shape[-1], model.input_shape[0], normalization, cpu.workers)
    resolved = resolve_config(config, data, model, run_dir, cpu, steps)
    _create_run_dir(run_dir, dist)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cpu.threads)
    # Values below float32's normal range cost a CPU about ten times more per operation. They arise
    # in training: a unit that stopped firing gets zero gradients, and Adam's first moment then
    # decays by 0.9 a step into that range within a few hundred steps. Measured on 2 cores, a fused
    # Adam step over a 4096 x 4096 layer took 286 ms with such moments against 32 ms, and AlexNet's
    # phase-5 epochs grew from 21 to 69 s. Flushing them to zero changes no result that matters
    # (they are below 1.2e-38); it is set in every compute thread and put back when the run closes.
    set_flush_denormal(True)
    inputs = PhaseInputs.build(images, model, plan, run_dir, precision, _rank0_info(dist))
    if dist.is_main:
        log.info("data: %s images in %d classes; loader: %s", ", ".join(
            f"{len(images.samples(split))} {split}" for split in inputs.loaders), data.num_classes,
            inputs.loaders["train"].description)
        log.info("cpu: %s", cpu.describe())
        log.info("epochs: %d optimizer steps each; at most %s a phase, ending after %s without validation improvement",
                 steps, "/".join(str(phase.max_epochs) for phase in plan),
                 resolved.patience or "any number (patience 0)")
    identity = RunIdentity(model=model_record(model, config.head), classes=data.classes,
                           normalization={"mean": list(normalization.mean), "std": list(normalization.std)},
                           config=resolved.to_dict(), task=task, frozen_blocks=list(frozen_blocks))
    recorder = RunRecorder(run_dir, identity, is_main=dist.is_main, background=dist.world_size == 1,
                           tensorboard=config.tensorboard, monitor=config.monitor, resumed_at=_resumed_at(start))
    recorder.save_config(resolved)
    return RunSetup(resolved, dist, run_dir, data, model, frozen_blocks, tuple(plan), start, precision, inputs,
                    recorder, cpu, threads_before)


# ----------------------------------------------------------------------------------------------
# the pieces, in the order prepare_run makes them


def join_processes(config: TrainConfig) -> DistributedContext:
    """This process's place among the run's processes (torchrun's environment; one by default)."""
    dist = DistributedContext.from_environment(config.device, timeout_s=config.dist_timeout)
    if config.nproc > 1 and config.nproc != dist.local_world_size:
        raise ConfigError(
            f"nproc={config.nproc}, but this process is one of {dist.local_world_size} on its machine: "
            f"`phasenets train --nproc {config.nproc}` starts the processes itself, or under torchrun "
            "leave nproc at 1 (torchrun's --nproc_per_node decides)"
        )
    return dist


def claim_run_dir(config: TrainConfig, dist: DistributedContext) -> RunDirectory:
    """The run directory: ``--resume``'s, ``--output`` (which must not hold a run yet), or a new
    timestamped one that every rank agrees on. Nothing is created here."""
    if config.resume is not None:
        return RunDirectory.for_resume(config.resume)
    if config.output is None:  # rank 0's clock names it
        return dist.broadcast_object(RunDirectory.for_new_run(None, config.model, config.schedule))
    return RunDirectory.for_new_run(config.output, config.model, config.schedule)


def _check_model_name(config: TrainConfig, model: nn.Module | None) -> None:
    """An unknown architecture is reported before the images are checked."""
    if model is None:
        from phasenets.models import list_models

        if config.model not in list_models():
            raise ConfigError(f"unknown model {config.model!r}; registered: {', '.join(list_models())}")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def read_data(config: TrainConfig, task: dict | None, run_dir: RunDirectory, dist: DistributedContext,
              image_size: int) -> DatasetSplits:
    """The dataset as this task sees it (``--hierarchy``), after the preflight (rank 0 checks;
    ``image_size``, the network's input side, sets what counts as a tiny image)."""
    if config.data_dir is None:
        raise ConfigError("data_dir is required: the folder holding train/ and validation/ (--data-dir DIR)")
    splits = task_splits(config.data_dir, task, val_split=config.val_split, seed=config.seed)
    if config.skip_preflight:
        if dist.is_main:
            log.info("preflight skipped (--skip-preflight): an unreadable image stops training when reached")
            if splits.not_files:
                log.warning("left out %d entries named like images that are no regular file:\n%s", len(splits.not_files),
                            "\n".join(f"  {path}: {why}" for path, why in splits.not_files.items()))
        return splits
    report = check_images(splits, image_size, run_dir.path) if dist.is_main else None
    return apply_report(splits, dist.broadcast_object(report), config.on_bad_image)


def _input_size(config: TrainConfig, model: nn.Module | None) -> int:
    """The side of the network's input: the option, the given network's, or the architecture's default."""
    if config.image_size is not None:
        return config.image_size
    if model is not None:
        return model.input_shape[-1]
    from phasenets.models import model_options

    return model_options(config.model)["image_size"]


def find_start(config: TrainConfig, run_dir: RunDirectory, dist: DistributedContext) -> StartPoint:
    """From scratch, from ``--ckpt-dir`` weights at ``start_phase``, or from a resumed run."""
    if config.resume is not None:
        return _resume_point(run_dir, dist)
    if config.ckpt_dir is not None:
        source = Path(config.ckpt_dir)
        path = source if source.is_file() else _checkpoints_folder(source).start_checkpoint(config.start_phase)
        return StartPoint(config.start_phase, Checkpoint.load(path))
    return StartPoint(1)


def _resume_point(run_dir: RunDirectory, dist: DistributedContext) -> StartPoint:
    """Where ``--resume`` continues: the newest checkpoint that reads back intact (a damaged one
    is skipped with a warning, never trained on), after a phase's latest epoch if it can."""
    if dist.is_main:
        for stale in remove_stale_temporaries(run_dir.checkpoints_dir):
            log.info("resume: removed %s, a checkpoint a killed process did not finish writing", stale.name)
    candidates = run_dir.resume_candidates()
    for path in candidates:
        try:
            checkpoint = Checkpoint.load(path)
            # a phase continued mid-way also needs its best weights so far
            best = None if checkpoint.completed else Checkpoint.load(run_dir.checkpoint(checkpoint.phase, "best"))
        except CheckpointError as error:
            if dist.is_main:
                log.warning("resume: %s; trying the checkpoint before it", error)
            continue
        if path != candidates[0] and dist.is_main:
            log.warning("resume: continuing from %s (phase %d, epoch %s), the newest checkpoint that is intact",
                        path.name, checkpoint.phase, checkpoint.epoch)
        done = tuple(PhaseResult(**result) for result in checkpoint.results)
        if checkpoint.completed:
            return StartPoint(checkpoint.phase + 1, checkpoint, done, resumed=True)
        return StartPoint(checkpoint.phase, checkpoint, done, mid_phase=True, resumed=True,
                          best_state=best.model_state)
    if candidates:
        raise CheckpointError(f"--resume {run_dir.path}: none of its {len(candidates)} checkpoints reads back intact "
                              "(see the warnings above); start the run again with another --output")
    return StartPoint(1, resumed=True)


def _checkpoints_folder(path: Path) -> RunDirectory:
    """A run directory, or a bare folder of checkpoints (``--ckpt-dir run/checkpoints``)."""
    return RunDirectory(path.parent) if path.name == "checkpoints" and not (path / "checkpoints").is_dir() \
        else RunDirectory(path)


def build_network(config: TrainConfig, data: DatasetSplits, start: StartPoint, model: nn.Module | None) -> nn.Module:
    """``model``, or ``config.model`` from the registry, with the start checkpoint's weights."""
    num_classes = data.num_classes
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ConfigError(f"num_classes={config.num_classes} but {config.data_dir}/train has {num_classes} class "
                          f"folders: {', '.join(data.classes)}")
    if model is None:
        from phasenets.models import build_model

        model = build_model(config.model, num_classes, in_channels=config.in_channels, image_size=config.image_size,
                            head=config.head, **config.model_options)
    elif model.num_classes != num_classes or config.in_channels not in (None, model.input_shape[0]):
        raise ConfigError(f"the model takes {model.input_shape[0]} channels and predicts {model.num_classes} "
                          f"classes; the config says {config.in_channels} channels and the data has {num_classes}")
    if start.checkpoint is not None:
        if list(start.checkpoint.classes) != data.classes:
            raise ConfigError(f"the checkpoint was trained on classes {start.checkpoint.classes}, "
                              f"the data has {data.classes}")
        model.load_state_dict(start.checkpoint.model_state)
    return model


def reused_blocks(config: TrainConfig, model: nn.Module, start: StartPoint,
                  dist: DistributedContext) -> tuple[tuple[int, ...], TransferReport | None]:
    """``--init-from``: copy an earlier task's blocks into ``model``; return the blocks no phase
    trains (and the transfer's report).

    A continued run (``--resume``, ``--ckpt-dir``) has its weights already and keeps the frozen
    blocks its checkpoint lists (freezing is not part of a state dict).
    """
    if start.checkpoint is not None:
        return tuple(start.checkpoint.frozen_blocks), None
    if config.init_from is None:
        return (), None
    from phasenets.train.transfer import init_from

    transfer = init_from(model, config.init_from, config.reuse_blocks, config.freeze_reused,
                         allow_partial=config.allow_partial)
    if dist.is_main:
        log.info("%s", transfer.format())
    return tuple(transfer.frozen), transfer


def choose_normalization(config: TrainConfig, data: DatasetSplits, model: nn.Module, start: StartPoint,
                         transfer: TransferReport | None, dist: DistributedContext) -> Normalization:
    """The input statistics: a continued run's, those block 1's source was trained with, or the data's."""
    if start.checkpoint is not None:  # keep the statistics the earlier weights were trained with
        return Normalization(**start.checkpoint.normalization)
    in_channels = model.input_shape[0]
    reused = transfer.source_normalization if transfer is not None and 1 in transfer.blocks else None
    if reused is not None and len(reused["mean"]) == in_channels:
        if dist.is_main:
            log.info("normalization of %s (block 1 comes from it): mean %s std %s", transfer.source,
                     reused["mean"], reused["std"])
        return Normalization(**reused)
    return compute_normalization(data.train, config.normalization, model.input_shape[-1], in_channels)


def plan_phases(config: TrainConfig, model: nn.Module, frozen_blocks: tuple[int, ...],
                dist: DistributedContext, steps: int) -> list[Phase]:
    """The schedule's phases for epochs of ``steps`` optimizer steps, without those that would
    train only reused frozen blocks."""
    plan, skipped = plan_around_frozen(build_plan(config, model.num_blocks, steps), frozen_blocks)
    for phase in skipped:
        if dist.is_main:
            log.info("%s skipped: it would train only reused frozen blocks", phase.name)
    return plan


def resolve_config(config: TrainConfig, data: DatasetSplits, model: nn.Module, run_dir: RunDirectory,
                   cpu: CpuPlan, steps: int) -> TrainConfig:
    """``config`` with what the run derived filled in: what ``config.yaml`` and every checkpoint
    record. ``steps``: optimizer steps per epoch, which set the default patience."""
    patience = default_patience(steps) if config.patience is None else config.patience
    return dataclasses.replace(config, num_classes=data.num_classes, image_size=model.input_shape[-1],
                               in_channels=model.input_shape[0], lr=config.learning_rate, output=str(run_dir.path),
                               resume=None, num_workers=cpu.workers, num_threads=cpu.threads, patience=patience)


def model_record(model: nn.Module, head: str) -> ModelRecord:
    """What ``phasenets eval`` needs to rebuild the network."""
    options = {}
    if dataclasses.is_dataclass(getattr(model, "config", None)):  # architecture options, e.g. dropout
        options = {key: value for key, value in dataclasses.asdict(model.config).items()
                   if key not in ("num_classes", "in_channels", "image_size")}
    return ModelRecord(name=getattr(model, "name", "custom"), num_classes=model.num_classes,
                       in_channels=model.input_shape[0], image_size=model.input_shape[-1], head=head, options=options)


def _create_run_dir(run_dir: RunDirectory, dist: DistributedContext) -> None:
    dist.barrier()  # every rank has checked the folder before rank 0 creates it
    if dist.is_main:
        run_dir.create()
    dist.barrier()


def _rank0_info(dist: DistributedContext):
    def info(message: str, *args: Any) -> None:
        if dist.is_main:
            log.info(message, *args)
    return info


def _resumed_at(start: StartPoint) -> tuple[int, int, bool] | None:
    """Where a resumed run's metrics.csv must be cut back to (see ``RunRecorder``)."""
    if not start.resumed or start.checkpoint is None:
        return None
    checkpoint = start.checkpoint
    return checkpoint.phase, checkpoint.epoch, checkpoint.completed
