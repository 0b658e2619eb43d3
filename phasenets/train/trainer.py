"""``PhaseTrainer``: runs the phase plan, one flat epoch loop per phase.

Per phase: freeze the prefix, wrap the trainable blocks (+ head) for DDP, build a fresh optimizer
and schedule, then train and validate epoch by epoch with early stopping; at the end put back the
phase's best-validation weights. The trainable part reads its inputs from a feature source
(``sources.py``); every epoch ends in an atomic checkpoint that ``--resume`` continues from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from phasenets.config import ConfigError, TrainConfig
from phasenets.train.batch_norm import reestimate_batch_norm
from phasenets.train.checkpoint import (SHARED_STATE_KEY, CheckpointWriter, capture_rng_state, load_checkpoint, restore_rng_state,
                                        save_checkpoint)
from phasenets.train.curriculum import plan_around_frozen, task_record, task_splits
from phasenets.train.distributed import DistributedContext
from phasenets.train.feature_levels import CacheSettings, FeatureLevels, SplitFeed
from phasenets.train.metrics import MetricTracker, SplitMetrics, per_class_accuracy
from phasenets.train.optim import build_lr_scheduler, build_optimizer
from phasenets.train.plan import Phase, build_plan
from phasenets.train.preflight import apply_report, check_images
from phasenets.train.run_log import RunLog, truncate_metrics
from phasenets.train.sources import FrozenPrefixSource

__all__ = ["PhaseTrainer", "PhaseResult", "TrainResult", "PhaseStage"]

log = logging.getLogger("phasenets")


@dataclass
class PhaseResult:
    """How one phase went; ``validation`` and ``test`` are the metrics of its restored best weights."""

    index: int
    name: str
    epochs: int
    best_epoch: int
    validation: dict[str, Any]
    test: dict[str, Any] | None
    seconds: float
    best_checkpoint: str
    last_checkpoint: str


@dataclass
class TrainResult:
    """What ``PhaseTrainer.fit`` returns. ``final`` is the whole network on the test split (or on
    validation when there is no test split), with per-class accuracy and the confusion matrix."""

    run_dir: Path
    classes: list[str]
    phases: list[PhaseResult]
    final: dict[str, Any]
    checkpoint: Path
    seconds: float
    model: nn.Module = field(repr=False)

    @property
    def test_accuracy(self) -> float | None:
        return self.final["accuracy"] if self.final["split"] == "test" else None


class PhaseStage(nn.Module):
    """The trainable part of a phase: blocks ``first..last`` of the network, then the head of ``last``.

    It holds the network's own modules (no copies), so training it trains the network.
    """

    def __init__(self, model: nn.Module, phase: Phase):
        super().__init__()
        self.blocks = nn.ModuleList(model.blocks[k - 1] for k in phase.trainable_blocks)
        self.head = model.head(phase.last_block)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            inputs = block(inputs)
        return self.head(inputs)


@dataclass
class _EarlyStopping:
    """Tracks the best validation epoch of a phase and how long it has been since."""

    monitor: str
    patience: int
    best: float | None = None
    best_epoch: int = 0
    stale_epochs: int = 0

    def update(self, metrics: SplitMetrics, epoch: int) -> bool:
        value = metrics.accuracy if self.monitor == "accuracy" else metrics.loss
        better = self.best is None or (value > self.best if self.monitor == "accuracy" else value < self.best)
        if better:
            self.best, self.best_epoch, self.stale_epochs = value, epoch, 0
        else:
            self.stale_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale_epochs >= self.patience


@dataclass
class _StartPoint:
    """Where ``fit`` begins: a phase, and for a resumed phase its last checkpoint."""

    phase: int
    checkpoint: dict[str, Any] | None = None
    done: list[PhaseResult] = field(default_factory=list)
    mid_phase: bool = False  # the checkpoint is an unfinished epoch loop of `phase`


@dataclass
class _PhaseRun:
    """Everything one phase's epoch loop works with; ``epoch`` counts the epochs done."""

    phase: Phase
    stage: PhaseStage
    trainable: nn.Module  # `stage`, wrapped for DDP when there are several processes
    train_source: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    stopper: _EarlyStopping
    global_epoch: int  # epochs over all phases: TensorBoard's x axis
    started: float  # perf_counter at the phase's start, moved back by a resumed run's earlier time
    epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # the stage's tensors (nothing else changes in a phase)
    best_validation: SplitMetrics | None = None  # the best epoch's (None after a resume: evaluated again)

    def state(self, results: list[PhaseResult], completed: bool = False) -> dict[str, Any]:
        """The part of a checkpoint that ``--resume`` continues the phase from."""
        return {
            "epoch": self.epoch, "completed": completed, "early_stopping": asdict(self.stopper),
            "seconds": time.perf_counter() - self.started, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "results": [asdict(result) for result in results],
        }


class PhaseTrainer:
    """Trains a network phase by phase as ``config`` describes.

    ``model``: a ready ``BlockwiseNet`` (e.g. ``BlockwiseNet.from_modules(...)``); by default the
    trainer builds ``config.model`` from the registry. ``PhaseTrainer(config).fit()`` runs the
    whole plan and returns a ``TrainResult``.
    """

    def __init__(self, config: TrainConfig, model: nn.Module | None = None):
        self.config = config
        self.model = model

    # ------------------------------------------------------------------------------------------
    # the run

    def fit(self) -> TrainResult:
        cfg = self.config
        started = time.perf_counter()
        self.dist = DistributedContext.from_environment(cfg.device, timeout_s=cfg.dist_timeout)
        if cfg.nproc > 1 and cfg.nproc != self.dist.local_world_size:
            raise ConfigError(
                f"nproc={cfg.nproc}, but this process is one of {self.dist.local_world_size} on its machine: "
                f"`phasenets train --nproc {cfg.nproc}` starts the processes itself, or under torchrun "
                "leave nproc at 1 (torchrun's --nproc_per_node decides)"
            )
        threads = torch.get_num_threads()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        self.feature_levels = None
        self._previous_shared: str | None = None  # the last phase-shared file written (_save_shared_state)
        self._changed_since_shared: set[str] = set()  # state entries trained since it was written
        # In the background with one process; with several, a rank's next gradient all-reduce
        # means rank 0 has committed the checkpoints of the epochs before (what a failure leaves).
        self.checkpoints = CheckpointWriter(save_checkpoint, background=self.dist.world_size == 1)
        try:
            result = self._fit(started)
        finally:
            self.checkpoints.close()  # the last epoch's checkpoint is on disk before fit returns
            if self.feature_levels is not None:
                self.feature_levels.close()
            torch.set_num_threads(threads)
        self.dist.close()  # after a failure the launcher stops the other ranks instead
        return result

    def _fit(self, started: float) -> TrainResult:
        cfg = self.config
        device = self.dist.device
        _seed_everything(cfg.seed, cfg.deterministic)
        self.data = self._task_data()
        self.run_dir = self._prepare_run_dir()
        start = self._start_point()
        self.model = self._build_model(start).to(device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)  # conv weights; inputs follow in _layout
        self.normalization = self._normalization(start)
        self.plan, skipped = plan_around_frozen(build_plan(cfg, self.model.num_blocks), self.frozen_blocks)
        for phase in skipped:
            self._info("%s skipped: it would train only reused frozen blocks", phase.name)
        self.loaders = {split: self._loader(split) for split in ("train", "validation", "test") if self.data.split(split)}
        self._info("data: %s images in %d classes; loader: %s", ", ".join(
            f"{len(self._samples(split))} {split}" for split in self.loaders), self.data.num_classes,
            self.loaders["train"].description)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.feature_levels = self._feature_levels()
        self.run_log = self._open_log(start) if self.dist.is_main else None
        resolved = self._resolved_config()
        self.config_record = resolved.to_dict()  # what every checkpoint and the summary record
        if self.dist.is_main:
            resolved.save(self.run_dir / "config.yaml")

        if cfg.resume is not None and start.checkpoint is not None and not start.mid_phase:
            restore_rng_state(start.checkpoint["rng"])  # as the completed phase left them
        results = list(start.done)
        for phase in self.plan:
            if phase.index < start.phase:
                continue
            resumed = start.checkpoint if start.mid_phase and phase.index == start.phase else None
            results.append(self._train_phase(phase, resumed, results))
        return self._finish(results, started)

    def _train_phase(self, phase: Phase, resumed: dict | None, done: list[PhaseResult]) -> PhaseResult:
        """Train one phase to its end and leave the network on the phase's best weights."""
        self.dist.barrier()  # every rank is done with the previous phase and its cache build
        run = self._start_phase(phase, done)
        self._save_shared_state(run)
        self._info("%s/%d: training blocks %d-%d (%d trainable parameters), %d frozen", phase.name,
                 self.plan[-1].index, phase.first_block, phase.last_block,
                 sum(p.numel() for p in run.stage.parameters() if p.requires_grad), phase.frozen_prefix)
        if resumed is not None:
            self._resume_phase(run, resumed)
        elif self._continues_previous_phase(phase):
            self._score_the_start(run, done)
        while run.epoch < phase.max_epochs and not run.stopper.should_stop:
            run.epoch += 1
            epoch_started = time.perf_counter()
            self.model.train()  # frozen blocks stay in eval mode
            train_metrics = self._train_epoch(run)
            train_seconds = time.perf_counter() - epoch_started
            val_metrics = self._evaluate(run.stage, self._source("validation", phase)).compute()
            run.global_epoch += 1
            self._log_metrics(run, "train", train_metrics, train_seconds)
            self._log_metrics(run, "validation", val_metrics, time.perf_counter() - epoch_started - train_seconds)
            improved = run.stopper.update(val_metrics, run.epoch)
            self._info("%s epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  %.1fs", phase.name,
                     run.epoch, phase.max_epochs, train_metrics.loss, train_metrics.accuracy, val_metrics.loss,
                     val_metrics.accuracy, " *" if improved else "", time.perf_counter() - epoch_started)
            if improved:
                run.best_state, run.best_validation = self._stage_state(run), val_metrics
            # best first, then last: a resume never sees a last newer than its best
            kinds = ("best", "last") if improved else ("last",)
            self._save(run, kinds, run.state(done))  # its RNG state is where the next epoch starts
        return self._end_phase(run, done)

    def _start_phase(self, phase: Phase, done: list[PhaseResult]) -> _PhaseRun:
        """Freeze all but the phase's blocks; a fresh optimizer and schedule for them and their head."""
        cfg, model = self.config, self.model
        for block in range(1, model.num_blocks + 1):
            trains = block in phase.trainable_blocks and block not in self.frozen_blocks
            (model.unfreeze_block if trains else model.freeze_block)(block)
        stage = PhaseStage(model, phase)
        optimizer = build_optimizer(
            cfg, [(model.blocks[k - 1], scale) for k, scale in zip(phase.trainable_blocks, phase.block_lr_scales)]
            + [(stage.head, phase.head_lr_scale)],
        )
        train_source = self._source("train", phase)
        return _PhaseRun(
            phase=phase, stage=stage, trainable=self.dist.wrap(stage, compile=cfg.compile), train_source=train_source,
            optimizer=optimizer, scheduler=build_lr_scheduler(cfg, optimizer, len(train_source), phase.max_epochs),
            scaler=torch.amp.GradScaler(self.dist.device.type, enabled=cfg.amp == "fp16"),
            criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
            stopper=_EarlyStopping(cfg.monitor, cfg.patience), global_epoch=sum(r.epochs for r in done),
            started=time.perf_counter(),
        )

    def _continues_previous_phase(self, phase: Phase) -> bool:
        """Whether ``phase`` ends in the head the phase before it trained (fine-tuning after the
        last block's phase, or after ``standard``): it then starts from that phase's network."""
        position = self.plan.index(phase)
        return position > 0 and self.plan[position - 1].last_block == phase.last_block

    def _score_the_start(self, run: _PhaseRun, done: list[PhaseResult]) -> None:
        """Validate the network the phase starts from as its epoch 0, so that the phase keeps it
        unless an epoch beats it: fine-tuning every block can then only help on validation (at a
        too-high rate its first epochs would otherwise replace a better network)."""
        metrics = self._evaluate(run.stage, self._source("validation", run.phase)).compute()
        self._log_metrics(run, "validation", metrics, 0.0, epoch=0)
        run.stopper.update(metrics, 0)
        run.best_state, run.best_validation = self._stage_state(run), metrics
        self._save(run, ("best",), run.state(done))  # what a resume restores if no epoch beats it
        self._info("%s epoch 0 (the network it starts from): val loss %.4f acc %.4f", run.phase.name,
                   metrics.loss, metrics.accuracy)

    def _resume_phase(self, run: _PhaseRun, checkpoint: dict[str, Any]) -> None:
        """Put back the state of the phase as its last checkpoint saw it."""
        self.model.load_state_dict(checkpoint["model_state"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.scheduler.load_state_dict(checkpoint["scheduler"])
        run.scaler.load_state_dict(checkpoint["scaler"])
        run.stopper = _EarlyStopping(**checkpoint["early_stopping"])
        run.best_state = load_checkpoint(self._checkpoint_path(run.phase, "best"))["model_state"]
        run.epoch = checkpoint["epoch"]
        run.global_epoch += checkpoint["epoch"]
        run.started -= checkpoint["seconds"]
        restore_rng_state(checkpoint["rng"])
        self._info("resuming %s after epoch %d", run.phase.name, run.epoch)

    def _end_phase(self, run: _PhaseRun, done: list[PhaseResult]) -> PhaseResult:
        """Restore the best weights (they are what later phases build on), re-estimate their batch-norm
        statistics (``precise_bn``), test, checkpoint, plot."""
        phase = run.phase
        self.model.load_state_dict(run.best_state, strict=False)  # the stage's tensors, or all of them
        self._changed_since_shared.update(self._stage_state(run, copy=False))
        val_metrics = run.best_validation  # evaluation is deterministic: the same weights score the same
        reestimated = self.config.precise_bn and self._precise_batch_norm(run)
        if reestimated:
            val_metrics = None  # the best epoch's scores were those of its old statistics
        if val_metrics is None:
            val_metrics = self._evaluate(run.stage, self._source("validation", phase)).compute()
        test_metrics = None
        if self.config.use_test and "test" in self.loaders:
            test_metrics = self._evaluate(run.stage, self._source("test", phase)).compute()
            self._log_metrics(run, "test", test_metrics, 0.0, epoch=run.stopper.best_epoch)
            self._info("%s test loss %.4f acc %.4f", phase.name, test_metrics.loss, test_metrics.accuracy)
        result = PhaseResult(
            index=phase.index, name=phase.name, epochs=run.epoch, best_epoch=run.stopper.best_epoch,
            validation=val_metrics.as_dict(), test=None if test_metrics is None else test_metrics.as_dict(),
            seconds=time.perf_counter() - run.started, best_checkpoint=str(self._checkpoint_path(phase, "best")),
            last_checkpoint=str(self._checkpoint_path(phase, "last")),
        )
        # "best" too where the statistics changed: --ckpt-dir and --init-from build on it
        self._save(run, ("best", "last") if reestimated else ("last",), run.state([*done, result], completed=True))
        if self.run_log is not None:
            self.run_log.refresh_plots(self._phase_names)
        return result

    def _precise_batch_norm(self, run: _PhaseRun) -> bool:
        """Re-estimate the batch-norm statistics of the blocks this phase trained with one pass over
        its training inputs, the same on every rank (batch_norm.py); False where they have none."""
        trained = [block for k, block in zip(run.phase.trainable_blocks, run.stage.blocks)
                   if k not in self.frozen_blocks]  # a reused block kept frozen stays as it came
        run.train_source.set_epoch(run.epoch - 1)  # the last epoch's views, also after a resume that reaches here
        inputs = (self._layout(batch) for batch, _, _ in run.train_source)
        images = reestimate_batch_norm(trained, inputs, self.dist.all_reduce_sum, self._autocast)
        if images:
            self._info("%s: batch-norm statistics re-estimated over %d images", run.phase.name, images)
        return images > 0

    @property
    def _phase_names(self) -> dict[int, str]:
        return {phase.index: phase.name for phase in self.plan}

    def _info(self, message: str, *args: Any) -> None:
        """Progress lines come from rank 0 only."""
        if self.dist.is_main:
            log.info(message, *args)

    def _log_metrics(self, run: _PhaseRun, split: str, metrics: SplitMetrics, seconds: float,
                     epoch: int | None = None) -> None:
        if self.run_log is not None:
            lr = run.optimizer.param_groups[-1]["lr"]  # the newest block's
            epoch = run.epoch if epoch is None else epoch
            self.run_log.log(run.phase.index, epoch, split, metrics, lr, seconds, run.global_epoch)

    def _train_epoch(self, run: _PhaseRun) -> SplitMetrics:
        tracker = MetricTracker(self.model.num_classes, self.dist.device)
        run.train_source.set_epoch(run.epoch - 1)
        show = self.dist.is_main and sys.stdout.isatty()
        batches = tqdm(run.train_source, desc=f"{run.phase.name} epoch {run.epoch}", leave=False, disable=not show)
        for step, (inputs, labels, _) in enumerate(batches):
            if step == 0:
                # Dropout draws from a stream of its own per (rank, phase, epoch): ranks do not
                # share masks, and a resumed epoch draws what it drew the first time. Seeded once
                # the first batch is in, because a DataLoader draws its workers' seed from the
                # global generator when its iterator starts: once per run with persistent
                # workers, so a resumed run would otherwise be one draw off.
                torch.manual_seed(_epoch_seed(self.config.seed, self.dist.rank, run.phase.index, run.epoch))
            with self._autocast():
                logits = run.trainable(self._layout(inputs)).float()
            loss = run.criterion(logits, labels)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            tracker.update(logits, labels, loss)
        tracker.reduce(self.dist.all_reduce_sum)
        return tracker.compute()

    @torch.no_grad()
    def _evaluate(self, forward: nn.Module, source) -> MetricTracker:
        was_training = self.model.training
        self.model.eval()
        criterion = nn.CrossEntropyLoss()
        tracker = MetricTracker(self.model.num_classes, self.dist.device)
        for inputs, labels, _ in source:
            with self._autocast():
                logits = forward(self._layout(inputs)).float()
            tracker.update(logits, labels, criterion(logits, labels))
        tracker.reduce(self.dist.all_reduce_sum)
        self.model.train(was_training)
        return tracker

    def _finish(self, results: list[PhaseResult], started: float) -> TrainResult:
        """Evaluate the whole network, write the final checkpoint, summary and plots."""
        split = "test" if "test" in self.loaders else "validation"
        source = FrozenPrefixSource(self.loaders[split], self.model, 0, self.dist.device, self._autocast)
        tracker = self._evaluate(self.model, source)
        metrics = tracker.compute()
        final = {
            "split": split, **metrics.as_dict(),
            "per_class_accuracy": dict(zip(self.data.classes, per_class_accuracy(tracker.confusion.cpu()))),
            "confusion_matrix": tracker.confusion.cpu().tolist(),
        }
        checkpoint = self.run_dir / "checkpoints" / "final.pt"
        self._info("final %s accuracy %.4f (%d images)", split, metrics.accuracy, metrics.count)
        if self.dist.is_main:
            self.checkpoints.write([checkpoint], self._payload(self.plan[-1], {"completed": True}))
            summary = {
                "config": self.config_record, "classes": self.data.classes,
                "model": self._model_record(), "phases": [asdict(r) for r in results], "final": final,
                "seconds": time.perf_counter() - started, "checkpoint": str(checkpoint),
            }
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            self.run_log.refresh_plots(self._phase_names, final=True)
            self.run_log.close()
        self.dist.barrier()
        return TrainResult(self.run_dir, self.data.classes, results, final, checkpoint,
                           time.perf_counter() - started, self.model)

    # ------------------------------------------------------------------------------------------
    # setup

    def _task_data(self):
        """The dataset as this task sees it (``--hierarchy``), after the preflight (rank 0 checks)."""
        cfg = self.config
        if cfg.data_dir is None:
            raise ConfigError("data_dir is required: the folder holding train/ and validation/ (--data-dir DIR)")
        self.task = task_record(cfg)
        splits = task_splits(cfg.data_dir, self.task, val_split=cfg.val_split, seed=cfg.seed)
        if cfg.skip_preflight:
            self._info("preflight skipped (--skip-preflight): an unreadable image stops training when reached")
            return splits
        kept_in = cfg.resume or cfg.output  # where an earlier start of this run kept its report
        report = check_images(splits, cfg.image_size, Path(kept_in) if kept_in else None) if self.dist.is_main else None
        return apply_report(splits, self.dist.broadcast_object(report), cfg.on_bad_image)

    def _prepare_run_dir(self) -> Path:
        cfg = self.config
        if cfg.resume is not None:
            run_dir = Path(cfg.resume)
            if not (run_dir / "checkpoints").is_dir():
                raise ConfigError(f"--resume {run_dir}: no checkpoints/ there; is it a phasenets run directory?")
            return run_dir
        if cfg.output is not None:
            run_dir = Path(cfg.output)
            if (run_dir / "checkpoints").exists():
                raise ConfigError(f"{run_dir} already holds a run: continue it with --resume {run_dir} "
                                  "or choose another --output")
        else:
            stamp = self.dist.broadcast_object(datetime.now().strftime("%Y%m%d-%H%M%S"))
            run_dir = Path("runs") / f"{cfg.model}-{cfg.schedule}-{stamp}"
        self.dist.barrier()  # every rank has checked the folder before rank 0 creates it
        if self.dist.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        return run_dir

    def _start_point(self) -> _StartPoint:
        """From scratch, from ``--ckpt-dir`` weights at ``start_phase``, or from a resumed run."""
        cfg = self.config
        if cfg.resume is not None:
            found = sorted(Path(cfg.resume, "checkpoints").glob("phase*-last.pt"), key=_phase_number)
            if not found:
                return _StartPoint(1)
            checkpoint = load_checkpoint(found[-1])
            done = [PhaseResult(**r) for r in checkpoint["results"]]
            if checkpoint["completed"]:
                return _StartPoint(checkpoint["phase"] + 1, checkpoint, done)
            return _StartPoint(checkpoint["phase"], checkpoint, done, mid_phase=True)
        if cfg.ckpt_dir is not None:
            return _StartPoint(cfg.start_phase, load_checkpoint(_initial_checkpoint(Path(cfg.ckpt_dir), cfg.start_phase)))
        return _StartPoint(1)

    def _build_model(self, start: _StartPoint) -> nn.Module:
        cfg = self.config
        num_classes = self.data.num_classes
        if cfg.num_classes is not None and cfg.num_classes != num_classes:
            raise ConfigError(f"num_classes={cfg.num_classes} but {cfg.data_dir}/train has {num_classes} class "
                              f"folders: {', '.join(self.data.classes)}")
        model = self.model
        if model is None:
            from phasenets.models import build_model

            model = build_model(cfg.model, num_classes, in_channels=cfg.in_channels, image_size=cfg.image_size,
                                head=cfg.head)
        elif model.num_classes != num_classes or cfg.in_channels not in (None, model.input_shape[0]):
            raise ConfigError(f"the model takes {model.input_shape[0]} channels and predicts {model.num_classes} "
                              f"classes; the config says {cfg.in_channels} channels and the data has {num_classes}")
        if start.checkpoint is not None:
            if list(start.checkpoint["classes"]) != self.data.classes:
                raise ConfigError(f"the checkpoint was trained on classes {start.checkpoint['classes']}, "
                                  f"the data has {self.data.classes}")
            model.load_state_dict(start.checkpoint["model_state"])
        self._reuse_blocks(model, start)
        return model

    def _reuse_blocks(self, model: nn.Module, start: _StartPoint) -> None:
        """``--init-from``: copy an earlier task's blocks into a new model; decide which blocks never train.

        A continued run (``--resume``, ``--ckpt-dir``) has its weights already and keeps the frozen
        blocks its checkpoint lists (freezing is not part of a state dict).
        """
        from phasenets.train.transfer import init_from

        self.transfer = None
        self.frozen_blocks: list[int] = []
        if start.checkpoint is not None:
            self.frozen_blocks = list(start.checkpoint.get("frozen_blocks", []))
        elif self.config.init_from is not None:
            cfg = self.config
            self.transfer = init_from(model, cfg.init_from, cfg.reuse_blocks, cfg.freeze_reused)
            self.frozen_blocks = self.transfer.frozen
            self._info("%s", self.transfer.format())

    def _normalization(self, start: _StartPoint):
        from phasenets.data.transforms import Normalization, compute_normalization

        if start.checkpoint is not None:  # keep the statistics the earlier weights were trained with
            return Normalization(**start.checkpoint["normalization"])
        reused = self.transfer.source_normalization if self.transfer is not None and 1 in self.transfer.blocks else None
        if reused is not None and len(reused["mean"]) == self.in_channels:
            self._info("normalization of %s (block 1 comes from it): mean %s std %s", self.transfer.source,
                       reused["mean"], reused["std"])
            return Normalization(**reused)
        return compute_normalization(self.data.train, self.config.normalization, self.image_size, self.in_channels)

    @property
    def image_size(self) -> int:
        return self.model.input_shape[-1]

    @property
    def in_channels(self) -> int:
        return self.model.input_shape[0]

    def _augment(self, split: str):
        from phasenets.data.transforms import AugmentConfig

        if split != "train":
            return None
        augment = AugmentConfig.preset(self.config.augment)
        if self.config.augment_options:
            augment = _replace_augment(augment, self.config.augment_options)
        return augment

    def _batching(self, split: str) -> dict[str, Any]:
        """How the training loop batches ``split`` (a cached source batches the same way)."""
        cfg = self.config
        training = split == "train"
        return dict(
            batch_size=cfg.batch_size, shuffle=training, seed=self.dist.rank_seed(cfg.seed),
            # a last batch of one image would break batch norm in training mode
            drop_last=training and len(self._samples(split)) % cfg.batch_size == 1,
            rank=0, world_size=1,  # the samples are this rank's shard already
        )

    def _samples(self, split: str) -> list:
        """This process's fixed shard of ``split`` (all of it in one process), the same every epoch
        so that a rank can cache its own shard; a training shard is padded to equal length so
        that every rank takes the same number of steps (distributed.py)."""
        return self.dist.shard(self.data.split(split), pad=split == "train")

    def _loader(self, split: str, every_sample: bool = False):
        """The loader of ``split``; ``every_sample``: one pass over the whole split in one process
        (building a cache), shuffled so that an int8 cache sets its scale from a typical batch."""
        from phasenets.data import build_loader

        cfg = self.config
        batching = self._batching(split)
        if every_sample:
            batching.update(shuffle=True, drop_last=False, rank=0, world_size=1)
        return build_loader(
            self._samples(split), kind=cfg.loader, image_size=self.image_size, in_channels=self.in_channels,
            augment=self._augment(split), normalization=self.normalization, num_workers=cfg.num_workers, **batching,
        )

    def _feature_levels(self) -> FeatureLevels:
        """The level caches later phases read their frozen prefix from (see feature_levels.py)."""
        cfg = self.config
        # the test split is read through the cache only by the per-phase test passes of --use-test
        feeds = {split: self._split_feed(split, loader) for split, loader in self.loaders.items()
                 if split != "test" or cfg.use_test}
        settings = CacheSettings.from_config(cfg, self.run_dir, feeds["train"].augmented)
        return FeatureLevels(self.model, feeds, settings, self.plan, self.dist.device, autocast=self._autocast,
                             seed=cfg.seed, rank_tag=self.dist.rank_tag, local_world_size=self.dist.local_world_size,
                             info=self._info, show_progress=self.dist.is_main and sys.stdout.isatty())

    def _split_feed(self, split: str, loader) -> SplitFeed:
        from phasenets.cache import dataset_manifest

        augment = self._augment(split)
        augmented = augment is not None and augment.enabled
        preprocessing = {  # everything that makes the images (the augmentation seed only where it matters)
            "image_size": self.image_size, "in_channels": self.in_channels, "normalization": self.normalization,
            "augment": augment, "seed": self.config.seed if augmented else None, "amp": self.config.amp,
            "loader": type(loader).__name__,
        }
        samples = self._samples(split)  # what this rank caches: its shard, padded as it trains on it
        return SplitFeed(labels=torch.tensor([sample.label for sample in samples]),
                         manifest=dataset_manifest(sample.path for sample in samples),
                         make_loader=functools.partial(self._loader, split, True),
                         batching=self._batching(split), preprocessing=preprocessing, augmented=augmented)

    def _source(self, split: str, phase: Phase):
        """Phase ``phase``'s inputs: read from a level cache where there is one, else recomputed."""
        cached = self.feature_levels.source(split, phase)
        if cached is not None:
            return cached
        return FrozenPrefixSource(self.loaders[split], self.model, phase.frozen_prefix, self.dist.device, self._autocast)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)

    def _layout(self, inputs: torch.Tensor) -> torch.Tensor:
        """Channels-last inputs where asked (4-D only: flat features have no channel layout)."""
        if self.config.channels_last and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def _open_log(self, start: _StartPoint) -> RunLog:
        csv_path = self.run_dir / "metrics.csv"
        if start.checkpoint is not None and self.config.resume is not None:
            # rows written after the last checkpoint will be written again
            point = (start.checkpoint["phase"], start.checkpoint["epoch"], start.checkpoint["completed"])
            truncate_metrics(csv_path, lambda row: _written_before(row, *point))
        return RunLog(self.run_dir, tensorboard=self.config.tensorboard)

    def _resolved_config(self) -> TrainConfig:
        cfg = self.config
        return TrainConfig.from_dict({
            **cfg.to_dict(), "num_classes": self.data.num_classes, "image_size": self.image_size, "in_channels": self.in_channels,
            "lr": cfg.learning_rate, "output": str(self.run_dir), "resume": None,
        })

    def _model_record(self) -> dict[str, Any]:
        """What ``phasenets eval`` needs to rebuild the network."""
        options = {}
        if dataclasses.is_dataclass(getattr(self.model, "config", None)):  # architecture options, e.g. dropout
            options = {key: value for key, value in dataclasses.asdict(self.model.config).items()
                       if key not in ("num_classes", "in_channels", "image_size")}
        return {"name": getattr(self.model, "name", "custom"), "num_classes": self.model.num_classes,
                "in_channels": self.in_channels, "image_size": self.image_size, "head": self.config.head,
                "options": options}

    def _checkpoint_path(self, phase: Phase, kind: str) -> Path:
        return self.run_dir / "checkpoints" / f"phase{phase.index}-{kind}.pt"

    def _payload(self, phase: Phase, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "model_state": self.model.state_dict(), "model": self._model_record(), "classes": self.data.classes,
            "normalization": {"mean": list(self.normalization.mean), "std": list(self.normalization.std)},
            "config": self.config_record, "phase": phase.index, "phase_name": phase.name,
            "task": self.task, "frozen_blocks": self.frozen_blocks, "rng": capture_rng_state(), **state,
        }

    def _save(self, run: _PhaseRun, kinds: tuple[str, ...], state: dict[str, Any]) -> None:
        """Checkpoint the phase as each of ``kinds`` (one payload, written while training goes on),
        its model state cut to the stage's tensors; the rest is in the phase's shared-state file."""
        if self.dist.is_main:
            payload = self._payload(run.phase, state)
            payload["model_state"] = self._stage_state(run, copy=False)
            payload[SHARED_STATE_KEY] = self._checkpoint_path(run.phase, "shared").name
            self.checkpoints.write([self._checkpoint_path(run.phase, kind) for kind in kinds], payload)

    def _save_shared_state(self, run: _PhaseRun) -> None:
        """Write, once per phase, the weights the phase never changes (everything outside its stage).

        The first phase this process trains writes them all; each later phase writes only those
        the phases since have changed (their stages) and names the previous phase's file for the
        rest, which ``load_checkpoint`` follows. Untrained blocks are thus written once per run,
        not once per phase (they are most of AlexNet's or VGG's weights).
        """
        if self.dist.is_main:
            stage = self._stage_state(run, copy=False)
            shared = {name: tensor for name, tensor in self.model.state_dict().items() if name not in stage}
            payload: dict[str, Any] = {"model_state": shared}
            if self._previous_shared is not None:
                changed = {name: tensor for name, tensor in shared.items() if name in self._changed_since_shared}
                payload = {"model_state": changed, SHARED_STATE_KEY: self._previous_shared}
            path = self._checkpoint_path(run.phase, "shared")
            self.checkpoints.write([path], payload)
            self._previous_shared, self._changed_since_shared = path.name, set()

    def _stage_state(self, run: _PhaseRun, copy: bool = True) -> dict[str, torch.Tensor]:
        """The entries of ``model.state_dict()`` that belong to the phase's stage: the only weights
        (and batch-norm buffers) a phase changes. ``copy``: cloned, so training cannot change them."""
        state = self.model.state_dict()
        changing = {tensor.data_ptr() for tensor in run.stage.state_dict().values()}
        return {name: tensor.clone() if copy else tensor for name, tensor in state.items()
                if tensor.data_ptr() in changing}


# ----------------------------------------------------------------------------------------------
# helpers


def _epoch_seed(seed: int, rank: int, phase: int, epoch: int) -> int:
    """A torch seed for one epoch of one rank, distinct for every (seed, rank, phase, epoch)."""
    return int(np.random.SeedSequence([seed, rank, phase, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _replace_augment(augment, options: dict[str, Any]):
    valid = {item.name for item in dataclasses.fields(augment)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"unknown augmentation option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return dataclasses.replace(augment, **options)


def _phase_number(path: Path) -> int:
    return int(path.name.removeprefix("phase").split("-")[0])


def _initial_checkpoint(ckpt_dir: Path, start_phase: int) -> Path:
    """The checkpoint holding the weights ``start_phase`` builds on: a file, or a run directory."""
    if ckpt_dir.is_file():
        return ckpt_dir
    checkpoints = ckpt_dir / "checkpoints" if (ckpt_dir / "checkpoints").is_dir() else ckpt_dir
    candidates = [checkpoints / f"phase{start_phase - 1}-best.pt", checkpoints / "final.pt"]
    for candidate in candidates if start_phase > 1 else candidates[1:]:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"--ckpt-dir {ckpt_dir}: none of {', '.join(c.name for c in candidates)} found there")


def _written_before(row: dict[str, str], phase: int, epoch: int, completed: bool) -> bool:
    """Whether a metrics.csv row was written before the checkpoint at (phase, epoch, completed)."""
    row_phase, row_epoch = int(row["phase"]), int(row["epoch"])
    if row_phase != phase:
        return row_phase < phase
    if row["split"] == "test":  # written when the phase completed
        return completed
    return row_epoch <= epoch
