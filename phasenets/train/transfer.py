"""Task chaining (ModNet): start a new task from an earlier task's blocks, and per-block learning rates.

``init_from(model, source, reuse_blocks="1-3", freeze_reused=True)`` copies blocks 1..3 of an
earlier run (its run directory, one of its checkpoints) or of a weights file the user has
(torchvision/timm/phasenets state dicts, see `phasenets.models.pretrained`) into ``model``, and
freezes them or not. Auxiliary heads are never copied: they classify the earlier task's classes.
Only a block that got every one of its tensors is frozen: one with a layer left at its random
initialization (a classifier for another number of classes, a layer of another shape loaded with
``allow_partial``) keeps training, or that layer would never learn. Per-block learning rates
(ModNet's ``"0.4,0.65,1"``, so that reused blocks can train slowly instead of being frozen) are
part of the phase plan: ``phasenets.train.plan.block_lr_multipliers``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from phasenets.errors import ConfigError
from phasenets.models.blockwise import BlockwiseNet
from phasenets.models.pretrained import LoadReport, load_pretrained, read_weights
from phasenets.train.checkpoint import CheckpointDamaged, CheckpointError, load_checkpoint
from phasenets.train.rundir import resolve_checkpoint

__all__ = ["TransferReport", "init_from", "parse_blocks"]

_BLOCK_SPEC = re.compile(r"\d+(-\d+)?")


@dataclass
class TransferReport:
    """What `init_from` copied: from where, which blocks, which of them it froze, key by key."""

    source: Path
    blocks: list[int]
    frozen: list[int]
    weights: LoadReport
    source_model: dict[str, Any] | None = None   # a phasenets checkpoint's model record
    source_classes: list[str] | None = None
    # a phasenets checkpoint's input statistics: reused frozen blocks expect inputs normalized this way
    source_normalization: dict[str, list[float]] | None = None
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        origin = f"{self.source}"
        if self.source_model is not None:
            origin += f" ({self.source_model['name']}, {self.source_model['num_classes']} classes)"
        frozen = f"; frozen: {_format_blocks(self.frozen)}" if self.frozen else ""
        lines = [f"initialized blocks {_format_blocks(self.blocks)} from {origin}{frozen}", self.weights.format()]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def parse_blocks(spec: str | int | Iterable[int] | None, num_blocks: int) -> list[int]:
    """Block numbers (1-based, sorted) from ``"1-3"``, ``"1,2,4"``, ``"1-2,4"``, ``"all"``, an int or a list.

    ``None`` and ``"all"`` mean every block.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(1, num_blocks + 1))
    if isinstance(spec, int):
        numbers = [spec]
    elif isinstance(spec, str):
        numbers = []
        for part in spec.replace(" ", "").split(","):
            if not _BLOCK_SPEC.fullmatch(part):
                raise ConfigError(f"reuse_blocks must look like 1-3, 1,2,4 or all; got {spec!r}")
            first, _, last = part.partition("-")
            if last and int(last) < int(first):
                raise ConfigError(f"reuse_blocks range {part!r} runs backwards; write {last}-{first}")
            numbers += range(int(first), int(last or first) + 1)
    else:
        numbers = [int(number) for number in spec]
    outside = sorted({n for n in numbers if not 1 <= n <= num_blocks})
    if outside or not numbers:
        raise ConfigError(f"reuse_blocks {spec!r}: the model has blocks 1..{num_blocks}"
                         + (f"; {outside} are not among them" if outside else ""))
    return sorted(set(numbers))


def init_from(
    model: BlockwiseNet,
    source: str | Path,
    reuse_blocks: str | int | Iterable[int] | None = None,
    freeze_reused: bool = False,
    *,
    strict: bool = False,
    allow_partial: bool = False,
) -> TransferReport:
    """Copy blocks of an earlier network into ``model`` (in place) and optionally freeze them.

    Args:
        source: a phasenets run directory, a phasenets checkpoint, or a weights file
            (``.safetensors``/``.pt``/``.pth``: phasenets, torchvision or timm names).
        reuse_blocks: which blocks to copy (see `parse_blocks`); ``None`` copies every block
            (the final classifier only when the number of classes agrees).
        freeze_reused: freeze the copied blocks that got all their tensors (``model.freeze_block``);
            the report's notes say why any other stays trainable. Freezing is not part of the state
            dict: a trainer that reloads ``model`` must freeze them again.
        strict: every key of the copied blocks must load and none be left over (see `load_pretrained`).
        allow_partial: copy what fits even when some tensors of the chosen blocks do not; otherwise
            that raises `PartialLoadError` (see `load_pretrained`).
    """
    path = resolve_checkpoint(source)
    blocks = parse_blocks(reuse_blocks, model.num_blocks)
    state_dict, payload = _read_source(path)
    weights = load_pretrained(model, state_dict, blocks=blocks, strict=strict, allow_partial=allow_partial)
    record = payload.get("model")
    report = TransferReport(path, blocks, [], weights, record, payload.get("classes"), payload.get("normalization"))
    if record is not None and record.get("name") != model.name:
        report.notes.append(f"the source network is a {record.get('name')}, this one a {model.name}")
    if weights.source in ("torchvision", "timm"):
        report.notes.append(f"{weights.source} weights are trained on ImageNet images normalized with ImageNet's "
                            "mean and std: train with --normalization imagenet (normalization='imagenet') so "
                            "the reused blocks see inputs on the scale they learned")
    filled = {_block_number(key) for key in weights.loaded}
    untouched = [k for k in blocks if k not in filled]
    if untouched:
        report.notes.append(f"nothing was loaded into block(s) {_format_blocks(untouched)}")
    left_out = _left_out_by_block(weights)
    if freeze_reused:
        report.frozen = [k for k in blocks if k in filled and k not in left_out]
        for k in report.frozen:
            model.freeze_block(k)
        for k in sorted(filled & left_out.keys()):
            report.notes.append(f"block {k} is not frozen: {_why_trainable(left_out[k], weights)}")
    return report


def _block_number(key: str) -> int:
    return int(key.split(".")[1]) + 1  # "blocks.0.conv1.weight" is block 1


def _left_out_by_block(weights: LoadReport) -> dict[int, list[str]]:
    """The keys each block in scope did not get from the source, the skipped classifier included."""
    left_out: dict[int, list[str]] = {}
    for key in weights.not_loaded + weights.skipped:
        left_out.setdefault(_block_number(key), []).append(key)
    return left_out


def _why_trainable(keys: list[str], weights: LoadReport) -> str:
    if set(keys) <= set(weights.skipped):
        return "its classifier was left as initialized for this task's classes and must train"
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"{len(keys)} of its tensors ({shown}) did not load and must train"


def _read_source(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a checkpoint or weights file, and the rest of a checkpoint's payload ({} for a file)."""
    if path.suffix != ".safetensors":
        try:
            payload = load_checkpoint(path)
        except CheckpointDamaged:
            raise  # a torn file, or a phasenets checkpoint with changed bytes: read as nothing else
        except CheckpointError:  # a plain weights file; read_weights says what is wrong if it is neither
            pass
        else:
            return payload.pop("model_state"), payload
    return read_weights(path), {}


def _format_blocks(blocks: Sequence[int]) -> str:
    return ", ".join(str(block) for block in blocks) or "none"
