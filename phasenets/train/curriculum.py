"""Curriculum runs: the classes a task trains on, and the blocks it keeps from an earlier task.

A task is a dataset folder seen through an optional class hierarchy (`phasenets.data.hierarchy`):
level 1 trains on the superclasses, ``within=`` on the classes inside one. The hierarchy travels
inside every checkpoint (`task_record`), so evaluating a run later (`task_splits`) sees the same
classes without the YAML file. Blocks reused frozen from an earlier task (``--init-from RUN
--reuse-blocks 1-3 --freeze-reused``) stay frozen in every phase: `plan_around_frozen` moves them
into each phase's frozen prefix and drops the phases that would train nothing but them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from phasenets.config import ConfigError, TrainConfig
from phasenets.data.hierarchy import Hierarchy, load_hierarchy, relabel
from phasenets.data.layout import DatasetSplits, scan_dataset
from phasenets.train.plan import Phase

__all__ = ["plan_around_frozen", "task_record", "task_splits"]


def task_record(config: TrainConfig) -> dict[str, Any] | None:
    """What a checkpoint keeps of ``config``'s hierarchy: its tree, level and ``within`` (None: no hierarchy)."""
    if config.hierarchy is None:
        return None
    hierarchy = load_hierarchy(config.hierarchy)
    return {"hierarchy": _as_mapping(hierarchy.tree), "source": hierarchy.source,
            "level": config.hierarchy_level, "within": config.hierarchy_within}


def task_splits(data_dir: str | Path, record: Mapping[str, Any] | None, val_split: float = 0.0,
                seed: int = 0) -> DatasetSplits:
    """``data_dir`` scanned, then relabelled as ``record`` (from `task_record`) says."""
    splits = scan_dataset(data_dir, val_split=val_split, seed=seed)
    if record is None:
        return splits
    hierarchy = Hierarchy.from_mapping(record["hierarchy"], record["source"])
    return relabel(splits, hierarchy, level=record["level"], within=record["within"])


def plan_around_frozen(plan: list[Phase], frozen: Collection[int]) -> tuple[list[Phase], list[Phase]]:
    """``(phases to train, phases skipped)`` when blocks ``frozen`` never train.

    A phase whose trainable blocks are all frozen is skipped; leading frozen blocks of a phase join
    its frozen prefix, so they are run once under no_grad (and cached) instead of inside the
    trainable part. Phases keep their numbers. Raises `ConfigError` when nothing is left to train.
    """
    kept, skipped = [], []
    for phase in plan:
        first = phase.first_block
        while first <= phase.last_block and first in frozen:
            first += 1
        if first > phase.last_block:
            skipped.append(phase)
            continue
        shift = first - phase.first_block
        kept.append(dataclasses.replace(phase, first_block=first, block_lr_scales=phase.block_lr_scales[shift:]))
    if not kept:
        raise ConfigError(f"every block the plan trains is reused frozen (blocks {sorted(frozen)}): nothing is "
                          "left to train; reuse fewer blocks or leave out --freeze-reused")
    return kept, skipped


def _as_mapping(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed hierarchy tree back in its YAML shape (superclass -> list of classes and sub-mappings)."""

    def children(subtree: Mapping[str, Any]) -> list[Any]:
        return [name if node is None else {name: children(node)} for name, node in subtree.items()]

    return {name: children(node) for name, node in tree.items()}
