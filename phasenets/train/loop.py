"""The phase loop: functions over a ``RunSetup``, read top to bottom.

``run_phases`` trains every phase of the plan that is not done yet and then ``finish``es the run.
A phase (``train_phase``) freezes all but its blocks, builds a fresh optimizer and schedule for
them and their head, then trains and validates epoch by epoch with early stopping, checkpointing
after every epoch; at the end it puts back its best-validation weights, which later phases build
on. Its inputs come from ``setup.inputs`` (a level cache or the recomputed frozen prefix).

A time budget (``TrainConfig.time_budget``) is shared by the phases still to train: each phase's
share is the time left divided by the phases left (one that stops early leaves its time to the
next), and a phase ends before an epoch that the last one's duration says would overrun its share.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from phasenets.errors import CheckpointError
from phasenets.models.blockwise import PREDICTIONS, mean_of_log_probs
from phasenets.train.batch_norm import reestimate_batch_norm
from phasenets.train.checkpoint import restore_rng_state
from phasenets.train.early_stopping import EarlyStopping
from phasenets.train.losses import LocalLoss, OutputTap
from phasenets.train.metrics import MetricTracker, SplitMetrics, per_class_accuracy
from phasenets.train.optim import build_lr_scheduler, build_optimizer
from phasenets.train.plan import Phase
from phasenets.train.results import PhaseResult, TrainResult
from phasenets.train.setup import RunSetup, StartPoint

__all__ = ["PhaseStage", "PhaseState", "evaluate", "run_phases", "train_phase"]


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


@dataclass(frozen=True)
class TimeBudget:
    """The run's wall-clock budget (``None``: none) and the time it had spent before this process."""

    seconds: float | None
    spent_before: float = 0.0  # a resumed run's earlier phases and the epochs of its phase in progress
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def phase_deadline(self, phases_left: int) -> float | None:
        """When the phase starting now must end: now plus its even share of the time left."""
        if self.seconds is None:
            return None
        now = time.perf_counter()
        left = self.seconds - self.spent_before - (now - self.started)
        return now + max(left, 0.0) / phases_left


@dataclass
class PhaseState:
    """Everything one phase's epoch loop works with; ``epoch`` counts the epochs done."""

    phase: Phase
    stage: PhaseStage
    stage_names: frozenset[str]  # the entries of model.state_dict() the stage holds: all a phase changes
    trainable: nn.Module  # `stage`, wrapped for DDP (and torch.compile) where asked
    train_source: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: LocalLoss
    stopper: EarlyStopping
    global_epoch: int  # epochs over all phases: TensorBoard's x axis
    started: float  # perf_counter at the phase's start, moved back by a resumed run's earlier time
    epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # the stage's tensors (nothing else changes in a phase)
    best_validation: SplitMetrics | None = None  # the best epoch's (None after a resume: evaluated again)
    deadline: float | None = None  # perf_counter time the phase's share of the time budget ends
    out_of_time: bool = False  # another epoch would overrun the deadline (rank 0's word on every rank)
    tap: OutputTap | None = None  # the trained block's output, for the similarity term of the loss

    def progress(self, results: list[PhaseResult], completed: bool = False) -> dict[str, Any]:
        """The checkpoint fields that ``--resume`` continues the phase from. A completed phase is
        not continued (the next one starts with a fresh optimizer): its optimizer state, the
        largest part of a checkpoint after the weights (Adam's: twice them), is left out."""
        progress = {"epoch": self.epoch, "completed": completed, "early_stopping": asdict(self.stopper),
                    "seconds": time.perf_counter() - self.started, "results": [asdict(result) for result in results]}
        if not completed:
            progress.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                            scaler=self.scaler.state_dict())
            if self.criterion.projection is not None:  # weights of the phase's own, outside the network
                progress.update(criterion=self.criterion.state_dict())  # the checkpoint writer snapshots it
        return progress

    def stage_state(self, model: nn.Module, copy: bool = True) -> dict[str, torch.Tensor]:
        """The stage's entries of ``model.state_dict()``; ``copy``: cloned, so training cannot change them."""
        return {name: tensor.clone() if copy else tensor for name, tensor in model.state_dict().items()
                if name in self.stage_names}


# ----------------------------------------------------------------------------------------------
# the run


def run_phases(setup: RunSetup, started: float | None = None) -> TrainResult:
    """Train every phase not done yet, then evaluate the whole network and write the run's summary."""
    started = time.perf_counter() if started is None else started
    start = setup.start
    if start.resumed and start.checkpoint is not None and not start.mid_phase:
        restore_rng_state(start.checkpoint.rng)  # as the completed phase left them
    results = list(start.done)
    spent = sum(result.seconds for result in results)
    if start.mid_phase:
        spent += start.checkpoint.seconds
    budget = TimeBudget(setup.config.time_budget, spent)
    for position, phase in enumerate(setup.plan):
        if phase.index < start.phase:
            continue
        resumed = start if start.mid_phase and phase.index == start.phase else None
        deadline = budget.phase_deadline(phases_left=len(setup.plan) - position)
        results.append(train_phase(setup, phase, results, resumed, deadline))
    return finish(setup, results, started)


def train_phase(setup: RunSetup, phase: Phase, done: list[PhaseResult],
                resumed: StartPoint | None = None, deadline: float | None = None) -> PhaseResult:
    """Train one phase to its end and leave the network on the phase's best weights. ``deadline``:
    the perf_counter time by which its epochs must be done (its share of the time budget)."""
    setup.dist.barrier()  # every rank is done with the previous phase
    state = start_phase(setup, phase, done)
    state.deadline = deadline
    setup.recorder.save_shared(phase, setup.model.state_dict(), state.stage_names)
    setup.info("%s/%d: training blocks %d-%d (%d trainable parameters), %d frozen", phase.name, setup.plan[-1].index,
               phase.first_block, phase.last_block,
               sum(p.numel() for p in state.stage.parameters() if p.requires_grad), phase.frozen_prefix)
    if resumed is not None:
        resume_phase(setup, state, resumed)
    elif continues_previous_phase(setup.plan, phase):
        score_the_start(setup, state, done)
    while state.epoch < phase.max_epochs and not state.stopper.should_stop and not state.out_of_time:
        run_epoch(setup, state, done)
    return end_phase(setup, state, done)


def start_phase(setup: RunSetup, phase: Phase, done: list[PhaseResult]) -> PhaseState:
    """Freeze all but the phase's blocks; a fresh optimizer and schedule for them and their head."""
    config, model = setup.config, setup.model
    for block in range(1, model.num_blocks + 1):
        trains = block in phase.trainable_blocks and block not in setup.frozen_blocks
        (model.unfreeze_block if trains else model.freeze_block)(block)
    stage = PhaseStage(model, phase)
    # the similarity term shapes a hidden output: not the network's own logits
    similarity = config.similarity_weight if phase.last_block < model.num_blocks else 0.0
    # The similarity projection's initial weights come from a generator of their own: the same on
    # every rank (DDP broadcasts only the stage it wraps), and the run's other draws stay as without it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_projection_seed(config.seed, phase.index))
        criterion = LocalLoss(model.num_classes, similarity, label_smoothing=config.label_smoothing,
                              feature_shape=model.block_output_shapes[phase.last_block - 1]).to(setup.dist.device)
    optimizer = build_optimizer(  # the criterion's similarity projection, where there is one, trains like the head
        config, [(model.blocks[k - 1], scale) for k, scale in zip(phase.trainable_blocks, phase.block_lr_scales)]
        + [(stage.head, phase.head_lr_scale), (criterion, phase.head_lr_scale)],
    )
    train_source = setup.inputs.source("train", phase)
    stage_tensors = {tensor.data_ptr() for tensor in stage.state_dict().values()}
    return PhaseState(
        phase=phase, stage=stage,
        stage_names=frozenset(name for name, tensor in model.state_dict().items() if tensor.data_ptr() in stage_tensors),
        trainable=setup.dist.wrap(stage, compile=config.compile), train_source=train_source, optimizer=optimizer,
        scheduler=build_lr_scheduler(config, optimizer, len(train_source), phase.max_epochs),
        scaler=setup.precision.grad_scaler(),
        criterion=criterion,
        tap=OutputTap(stage.blocks[-1]) if similarity > 0 else None,
        stopper=EarlyStopping(config.monitor, config.patience), global_epoch=sum(r.epochs for r in done),
        started=time.perf_counter(),
    )


def continues_previous_phase(plan: tuple[Phase, ...], phase: Phase) -> bool:
    """Whether ``phase`` ends in the head the phase before it trained (fine-tuning after the
    last block's phase, or after ``standard``): it then starts from that phase's network."""
    position = plan.index(phase)
    return position > 0 and plan[position - 1].last_block == phase.last_block


def score_the_start(setup: RunSetup, state: PhaseState, done: list[PhaseResult]) -> None:
    """Validate the network the phase starts from as its epoch 0, so that the phase keeps it
    unless an epoch beats it: fine-tuning every block can then only help on validation (at a
    too-high rate its first epochs would otherwise replace a better network)."""
    metrics = evaluate(setup, state.stage, setup.inputs.source("validation", state.phase)).compute()
    _log_metrics(setup, state, "validation", metrics, 0.0, epoch=0)
    state.stopper.update(metrics, 0)
    state.best_state, state.best_validation = state.stage_state(setup.model), metrics
    setup.recorder.save_phase(state.phase, ("best",), state.stage_state(setup.model, copy=False),
                              **state.progress(done))  # what a resume restores if no epoch beats it
    setup.info("%s epoch 0 (the network it starts from): val loss %.4f acc %.4f", state.phase.name,
               metrics.loss, metrics.accuracy)


def resume_phase(setup: RunSetup, state: PhaseState, start: StartPoint) -> None:
    """Put back the state of the phase as its last checkpoint saw it."""
    checkpoint = start.checkpoint
    setup.model.load_state_dict(checkpoint.model_state)
    state.optimizer.load_state_dict(checkpoint.optimizer)
    state.scheduler.load_state_dict(checkpoint.scheduler)
    state.scaler.load_state_dict(checkpoint.scaler)
    if state.criterion.projection is not None:
        if checkpoint.criterion is None:
            raise CheckpointError(f"the checkpoint of {state.phase.name} holds no similarity projection to resume "
                                  "with: it was written by a phasenets without one (start the run again)")
        state.criterion.load_state_dict(checkpoint.criterion)
    state.stopper = EarlyStopping(**checkpoint.early_stopping)
    state.best_state = start.best_state
    state.epoch = checkpoint.epoch
    state.global_epoch += checkpoint.epoch
    state.started -= checkpoint.seconds
    restore_rng_state(checkpoint.rng)
    setup.info("resuming %s after epoch %d", state.phase.name, state.epoch)


def run_epoch(setup: RunSetup, state: PhaseState, done: list[PhaseResult]) -> None:
    """One epoch: train, validate, log, keep the weights if they are the best yet, checkpoint."""
    phase = state.phase
    state.epoch += 1
    epoch_started = time.perf_counter()
    setup.model.train()  # frozen blocks stay in eval mode
    train_metrics = train_epoch(setup, state)
    train_seconds = time.perf_counter() - epoch_started
    val_metrics = evaluate(setup, state.stage, setup.inputs.source("validation", phase)).compute()
    state.global_epoch += 1
    _log_metrics(setup, state, "train", train_metrics, train_seconds)
    _log_metrics(setup, state, "validation", val_metrics, time.perf_counter() - epoch_started - train_seconds)
    improved = state.stopper.update(val_metrics, state.epoch)
    setup.info("%s epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  %.1fs", phase.name, state.epoch,
               phase.max_epochs, train_metrics.loss, train_metrics.accuracy, val_metrics.loss, val_metrics.accuracy,
               " *" if improved else "", time.perf_counter() - epoch_started)
    if state.deadline is not None:  # rank 0's clock decides for all: the ranks must stop together
        state.out_of_time = setup.dist.broadcast_object(another_epoch_overruns(state.deadline, epoch_started))
    if state.out_of_time and state.epoch < phase.max_epochs and not state.stopper.should_stop:
        setup.info("%s: stopping after epoch %d: another would overrun the phase's share of the time budget",
                   phase.name, state.epoch)
    # The phase's last epoch leaves "last" to the phase's closing checkpoint, written right after it.
    ending = state.epoch >= phase.max_epochs or state.stopper.should_stop or state.out_of_time
    if improved:  # the copy kept as the best weights is also what the checkpoint writes
        state.best_state, state.best_validation = state.stage_state(setup.model), val_metrics
        # best first, then last: a resume never sees a last newer than its best
        setup.recorder.save_phase(phase, ("best",) if ending else ("best", "last"), state.best_state,
                                  stage_state_copied=True, **state.progress(done))
    elif not ending:
        setup.recorder.save_phase(phase, ("last",), state.stage_state(setup.model, copy=False), **state.progress(done))


def another_epoch_overruns(deadline: float, epoch_started: float) -> bool:
    """Whether an epoch as long as the one that started at ``epoch_started`` and is ending now
    would, started now, end past ``deadline``."""
    now = time.perf_counter()
    return now + (now - epoch_started) > deadline


def train_epoch(setup: RunSetup, state: PhaseState) -> SplitMetrics:
    tracker = MetricTracker(setup.model.num_classes, setup.dist.device)
    state.train_source.set_epoch(state.epoch - 1)
    show = setup.dist.is_main and _on_terminal()
    batches = tqdm(state.train_source, desc=f"{state.phase.name} epoch {state.epoch}", leave=False, disable=not show)
    for step, (inputs, labels, _) in enumerate(batches):
        if step == 0:
            # Dropout draws from a stream of its own per (rank, phase, epoch): ranks do not share
            # masks, and a resumed epoch draws what it drew the first time. Seeded once the first
            # batch is in, because a DataLoader draws its workers' seed from the global generator
            # when its iterator starts: once per run with persistent workers, so a resumed run
            # would otherwise be one draw off.
            torch.manual_seed(_epoch_seed(setup.config.seed, setup.dist.rank, state.phase.index, state.epoch))
        with setup.precision.autocast():
            logits = state.trainable(setup.precision.layout(inputs)).float()
        loss = state.criterion(logits, labels, None if state.tap is None else state.tap.take())
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if state.criterion.projection is not None:  # outside DDP's module: its gradients are averaged here
            average_gradients(setup, state.criterion.projection)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        tracker.update(logits, labels, loss)
    tracker.reduce(setup.dist.all_reduce_sum)
    return tracker.compute()


@torch.no_grad()
def evaluate(setup: RunSetup, forward: nn.Module, source) -> MetricTracker:
    """``forward`` over every batch of ``source`` in eval mode, totalled over the processes."""
    return evaluate_outputs(setup, lambda inputs: {"": forward(inputs)}, source, [""])[""]


def evaluate_outputs(setup: RunSetup, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], source,
                     names: Sequence[str]) -> dict[str, MetricTracker]:
    """Like `evaluate`, for a ``forward`` that returns several named logits (``names``) per batch:
    one tracker each, from one pass over ``source``."""
    model = setup.model
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss()
    trackers = {name: MetricTracker(model.num_classes, setup.dist.device) for name in names}
    for inputs, labels, _ in source:
        with setup.precision.autocast():
            outputs = forward(setup.precision.layout(inputs))
        for name, tracker in trackers.items():
            logits = outputs[name].float()
            tracker.update(logits, labels, criterion(logits, labels))
    for tracker in trackers.values():
        tracker.reduce(setup.dist.all_reduce_sum)
    model.train(was_training)
    return trackers


def end_phase(setup: RunSetup, state: PhaseState, done: list[PhaseResult]) -> PhaseResult:
    """Restore the best weights (they are what later phases build on), re-estimate their batch-norm
    statistics (``precise_bn``), test, checkpoint, plot."""
    phase, recorder = state.phase, setup.recorder
    if state.tap is not None:
        state.tap.close()
    setup.model.load_state_dict(state.best_state, strict=False)  # the stage's tensors, or all of them
    recorder.trained(state.stage_names)
    val_metrics = state.best_validation  # evaluation is deterministic: the same weights score the same
    reestimated = setup.config.precise_bn and precise_batch_norm(setup, state)
    if reestimated or val_metrics is None:  # new statistics, or a resumed phase: score the weights again
        val_metrics = evaluate(setup, state.stage, setup.inputs.source("validation", phase)).compute()
    test_metrics = None
    # the last phase's network is the whole network: its test score is the final one (finish)
    if setup.config.use_test and "test" in setup.inputs.loaders and phase != setup.plan[-1]:
        test_metrics = evaluate(setup, state.stage, setup.inputs.source("test", phase)).compute()
        setup.recorder.log_metrics(phase, state.stopper.best_epoch, "test", test_metrics, None, 0.0,
                                   state.global_epoch)
        setup.info("%s test loss %.4f acc %.4f", phase.name, test_metrics.loss, test_metrics.accuracy)
    waited = setup.inputs.wait_fraction(phase.name)
    if waited is not None:
        setup.info("%s waited %.1f%% of its training time on cached batches", phase.name, 100 * waited)
    result = PhaseResult(
        index=phase.index, name=phase.name, epochs=state.epoch, best_epoch=state.stopper.best_epoch,
        validation=val_metrics.as_dict(), test=None if test_metrics is None else test_metrics.as_dict(),
        seconds=time.perf_counter() - state.started,
        best_checkpoint=str(setup.run_dir.checkpoint(phase.index, "best")),
        last_checkpoint=str(setup.run_dir.checkpoint(phase.index, "last")),
    )
    # "best" too where the statistics changed: --ckpt-dir and --init-from build on it
    recorder.save_phase(phase, ("best", "last") if reestimated else ("last",), state.stage_state(setup.model, copy=False),
                        **state.progress([*done, result], completed=True))
    recorder.refresh_plots(setup.phase_names)
    return result


def precise_batch_norm(setup: RunSetup, state: PhaseState) -> bool:
    """Re-estimate the batch-norm statistics of the blocks this phase trained with one pass over
    its training inputs, the same on every rank (batch_norm.py); False where they have none."""
    trained = [block for k, block in zip(state.phase.trainable_blocks, state.stage.blocks)
               if k not in setup.frozen_blocks]  # a reused block kept frozen stays as it came
    state.train_source.set_epoch(state.epoch - 1)  # the last epoch's views, also after a resume that reaches here
    inputs = (setup.precision.layout(batch) for batch, _, _ in state.train_source)
    images = reestimate_batch_norm(trained, inputs, setup.dist.all_reduce_sum, setup.precision.autocast)
    if images:
        setup.info("%s: batch-norm statistics re-estimated over %d images", state.phase.name, images)
    return images > 0


def finish(setup: RunSetup, results: list[PhaseResult], started: float) -> TrainResult:
    """Evaluate the whole network (the last phase's best-validation weights) once, on the test
    split where there is one: that is the run's test score, the last phase's included. Then write
    the final checkpoint, the summary and the plots."""
    prediction, scored = choose_prediction(setup)
    setup.model.prediction = prediction["chosen"]
    split = "test" if "test" in setup.inputs.loaders else "validation"
    if scored is not None and split == "validation":  # the choice already scored the network on it
        tracker = scored[prediction["chosen"]]
    else:
        tracker = evaluate(setup, setup.model, setup.inputs.images(split))
    metrics = tracker.compute()
    classes = setup.data.classes
    last = results[-1]
    final = {
        "split": split, **metrics.as_dict(), "weights": {"phase": last.index, "best_epoch": last.best_epoch},
        "prediction": prediction,
        "per_class_accuracy": dict(zip(classes, per_class_accuracy(tracker.confusion.cpu()))),
        "confusion_matrix": tracker.confusion.cpu().tolist(),
    }
    if split == "test" and setup.config.use_test:
        results[-1] = dataclasses.replace(last, test=metrics.as_dict())
        setup.recorder.log_metrics(setup.plan[-1], last.best_epoch, "test", metrics, None, 0.0,
                                   sum(result.epochs for result in results))
    checkpoint = setup.run_dir.final_checkpoint
    setup.info("final %s accuracy %.4f (%d images): %s at its best validation epoch (%d), predicting with %s",
               split, metrics.accuracy, metrics.count, last.name, last.best_epoch,
               "every phase's head" if prediction["chosen"] == "heads" else "the network's classifier")
    cache = setup.inputs.report()
    summary = {
        "config": setup.recorder.identity.config, "classes": classes,
        "model": asdict(setup.recorder.identity.model), "phases": [asdict(r) for r in results], "final": final,
        "cache": asdict(cache), "seconds": time.perf_counter() - started, "checkpoint": str(checkpoint),
    }
    setup.recorder.save_final(setup.plan[-1], setup.model.state_dict(), summary, setup.phase_names,
                              prediction=prediction["chosen"])
    setup.dist.barrier()
    return TrainResult(setup.run_dir.path, classes, results, final, checkpoint, time.perf_counter() - started,
                       setup.model, cache)


def choose_prediction(setup: RunSetup) -> tuple[dict[str, Any], dict[str, MetricTracker] | None]:
    """What the trained network predicts with (``BlockwiseNet.prediction``), by ``config.prediction``.

    ``auto`` scores the network's classifier and the mean of every phase's head on the validation
    images and takes the heads where they score at least as well (ties go to the ensemble, which
    averages out part of the noise each early-stopped head carries). Only where the plan trained
    every auxiliary head: not for a standard run, nor where phases were skipped for reused frozen
    blocks. Both are scored in one pass: the blocks run once per batch, and every head reads them.
    Returns ``{"setting", "chosen", "validation"}`` (the two scores, or None when not measured) and
    the validation trackers of both (None when not measured).
    """
    setting = setup.config.prediction
    model = setup.model
    heads_trained = set(range(1, model.num_blocks)) <= {phase.last_block for phase in setup.plan}
    if setting != "auto" or not heads_trained or "validation" not in setup.inputs.loaders:
        return {"setting": setting, "chosen": "heads" if setting == "heads" else "network", "validation": None}, None

    def both(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        log_probs = model.phase_log_probs(inputs)
        return {"network": log_probs[-1], "heads": mean_of_log_probs(log_probs, model.num_blocks)}

    scored = evaluate_outputs(setup, both, setup.inputs.images("validation"), PREDICTIONS)
    scores = {mode: tracker.compute().accuracy for mode, tracker in scored.items()}
    chosen = "heads" if scores["heads"] >= scores["network"] else "network"
    setup.info("prediction: the network's classifier scores %.4f on validation, the mean of every phase's head "
               "%.4f: predicting with %s", scores["network"], scores["heads"],
               "the heads" if chosen == "heads" else "the network")
    return {"setting": setting, "chosen": chosen, "validation": scores}, scored


def average_gradients(setup: RunSetup, module: nn.Module) -> None:
    """Average ``module``'s gradients over the processes (DDP does it for the stage it wraps)."""
    if setup.dist.world_size > 1:
        for parameter in module.parameters():
            if parameter.grad is not None:
                setup.dist.all_reduce_sum(parameter.grad).div_(setup.dist.world_size)


def _log_metrics(setup: RunSetup, state: PhaseState, split: str, metrics: SplitMetrics, seconds: float,
                 epoch: int | None = None) -> None:
    lr = state.optimizer.param_groups[-1]["lr"]  # the newest block's
    setup.recorder.log_metrics(state.phase, state.epoch if epoch is None else epoch, split, metrics, lr, seconds,
                               state.global_epoch)


def _epoch_seed(seed: int, rank: int, phase: int, epoch: int) -> int:
    """A torch seed for one epoch of one rank, distinct for every (seed, rank, phase, epoch)."""
    return int(np.random.SeedSequence([seed, rank, phase, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _projection_seed(seed: int, phase: int) -> int:
    """A torch seed for the initial weights of one phase's similarity projection (every rank's)."""
    return int(np.random.SeedSequence([seed, phase, 0x51]).generate_state(1, np.uint64)[0] >> 1)


def _on_terminal() -> bool:
    import sys

    return sys.stdout.isatty()
