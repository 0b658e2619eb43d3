"""The ModNet forgetting test: after training task 2 from task 1's blocks, does task 1 still work?

The old network (task 1) is evaluated on task 1's data as it was; then, for each new network
(task 2, started from task 1's blocks), its blocks ``1..k`` are put under the old network's
remaining blocks, whose last one ends in task 1's classifier (the "old head"), and evaluated on
the same data. By default ``k`` is every block but the last, which is ModNet's "convolutional
layers from the new module, fully connected layer from the previous one". The input goes through
the normalization of the network that supplies block 1, the statistics that block was trained on.
Every row predicts with the old network's own classifier, also where its run chose to predict with
the mean of every phase's head: the test asks what the new blocks do under that classifier.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from phasenets.errors import ConfigError
from phasenets.train.checkpoint import Checkpoint
from phasenets.train.evaluate import load_trained_model, score_samples
from phasenets.train.rundir import RunDirectory, resolve_checkpoint
from phasenets.train.transfer import parse_blocks

__all__ = ["ForgettingRow", "format_forgetting", "forgetting_test"]


@dataclass
class ForgettingRow:
    """One network evaluated on the old task."""

    model: str                 # how the network was put together
    checkpoint: str            # the checkpoint supplying block 1
    new_blocks: list[int]      # blocks taken from the new network (empty: the old network as it was)
    accuracy: float
    loss: float
    count: int


def forgetting_test(
    old: str | Path,
    new: str | Path | Sequence[str | Path],
    data_dir: str | Path,
    *,
    blocks: str | Sequence[int] | None = None,
    split: str | None = None,
    batch_size: int = 64,
    loader: str = "auto",
    num_workers: int = 2,
    device: str = "cpu",
) -> list[ForgettingRow]:
    """Accuracy on the old task's data of the old network, and of each new network's blocks under its head.

    Args:
        old, new: run directories or checkpoints; ``new`` may list several runs (e.g. trained
            frozen, at per-block rates, and unconstrained), one row each.
        data_dir: the old task's dataset; its classes must be the old network's.
        blocks: the new network's blocks to use (``"1-3"``, a list); default: all but the last.
        split: ``test``, ``validation`` or ``train``; default: test if the data has one, else validation.
    """
    from phasenets.data import DatasetError
    from phasenets.train.curriculum import task_splits

    old_path = resolve_checkpoint(old)
    old_model, old_trained = load_trained_model(old_path)
    old_model.prediction = "network"  # the composites below keep the old classifier, not the old heads
    data = task_splits(data_dir, old_trained.task)  # the old task's classes (its hierarchy)
    if data.classes != list(old_trained.classes):
        raise DatasetError(f"{data_dir} has classes {data.classes}; the old network {old_path} was trained on "
                           f"{list(old_trained.classes)}: give the old task's data")
    split = split or ("test" if data.test else "validation")
    samples = data.split(split)
    if not samples:
        raise DatasetError(f"{data_dir} has no {split} images")
    chosen = parse_blocks(blocks if blocks is not None else f"1-{old_model.num_blocks - 1}", old_model.num_blocks)

    def evaluate(model: nn.Module, trained: Checkpoint) -> tuple[float, float, int]:
        metrics = score_samples(model, samples, trained.normalization, batch_size=batch_size, loader=loader,
                                num_workers=num_workers, device=device).compute()
        return metrics.accuracy, metrics.loss, metrics.count

    rows = [ForgettingRow(f"old network ({_run_name(old_path)})", str(old_path), [],
                          *evaluate(old_model, old_trained))]
    for source in [new] if isinstance(new, (str, Path)) else new:
        new_path = resolve_checkpoint(source)
        new_model, new_trained = load_trained_model(new_path)
        _check_compatible(old_model, old_path, new_model, new_path)
        composite = copy.deepcopy(old_model)
        for k in chosen:
            composite.blocks[k - 1].load_state_dict(new_model.blocks[k - 1].state_dict())
        label = f"{_run_name(new_path)} blocks {_format_range(chosen)} + old head"
        # block 1 reads the input the way the network it comes from was trained to
        input_source = new_trained if 1 in chosen else old_trained
        rows.append(ForgettingRow(label, str(new_path), chosen, *evaluate(composite, input_source)))
    return rows


def format_forgetting(rows: Sequence[ForgettingRow]) -> str:
    """The table of ModNet's figure 4: one network per line with its accuracy on the old task."""
    width = max(len("model"), *(len(row.model) for row in rows))
    lines = [f"{'model':<{width}}  accuracy on old task", f"{'-' * width}  --------------------"]
    lines += [f"{row.model:<{width}}  {row.accuracy:.4f} ({row.count} images)" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def _run_name(checkpoint: Path) -> str:
    """A run directory's name, or the file's name for a loose checkpoint."""
    return RunDirectory.of_checkpoint(checkpoint).path.name if checkpoint.parent.name == "checkpoints" \
        else checkpoint.name


def _format_range(blocks: list[int]) -> str:
    contiguous = blocks == list(range(blocks[0], blocks[-1] + 1))
    return f"{blocks[0]}-{blocks[-1]}" if contiguous and len(blocks) > 1 else ",".join(map(str, blocks))


def _check_compatible(old: nn.Module, old_path: Path, new: nn.Module, new_path: Path) -> None:
    described = [(m.name, m.input_shape, m.num_blocks) for m in (old, new)]
    if described[0] != described[1]:
        raise ConfigError(f"{new_path} holds a {new.name} on {new.input_shape} inputs with {new.num_blocks} blocks; "
                         f"the old network {old_path} is a {old.name} on {old.input_shape} inputs with "
                         f"{old.num_blocks} blocks: their blocks cannot be swapped")
