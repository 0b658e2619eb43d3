"""Checkpoints: a typed :class:`Checkpoint`, written atomically, read with ``weights_only=True``.

A checkpoint file is a ``torch.save`` of a flat dict of tensors and plain values (the format named
by ``FORMAT``/``VERSION``): :meth:`Checkpoint.to_payload` and :meth:`Checkpoint.from_payload` are
the only code that knows its keys. ``save_checkpoint``/``load_checkpoint`` move such dicts to and
from disk (a phase's checkpoints leave the weights the phase never changes to a shared file, which
``load_checkpoint`` follows); ``Checkpoint.load`` is what the library reads a run's checkpoint with.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import random
import shutil
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from phasenets._atomic import fsync_directory, temporary_name, write_atomically
from phasenets.errors import CheckpointDamaged, CheckpointError

__all__ = ["Checkpoint", "CheckpointDamaged", "CheckpointError", "CheckpointWriter", "ModelRecord", "SHARED_STATE_KEY",
           "save_checkpoint", "load_checkpoint", "capture_rng_state", "payload_checksum", "restore_rng_state"]

log = logging.getLogger("phasenets")

FORMAT = "phasenets-checkpoint"
VERSION = 1
# A checkpoint may hold only part of ``model_state`` and name, under this key, a checkpoint file in
# its own directory holding the rest: a phase's epochs then leave out the weights the phase never
# changes (the frozen prefix, the blocks still to train), written once per phase.
SHARED_STATE_KEY = "model_state_shared"
# every file carries payload_checksum() of the rest of its contents, checked on every load
CHECKSUM_KEY = "checksum"


# where a phase's epoch loop stood: absent from final.pt
_PROGRESS_FIELDS = ("rng", "epoch", "early_stopping", "seconds", "optimizer", "scheduler", "scaler", "criterion")


@dataclass(frozen=True)
class ModelRecord:
    """What rebuilds a checkpoint's network from the registry: ``build_model(name, num_classes,
    in_channels=, image_size=, head=, **options)``; ``name`` is ``"custom"`` for a network built
    in Python (``BlockwiseNet.from_modules``), which only its author can rebuild."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    head: str
    options: dict[str, Any] = field(default_factory=dict)
    prediction: str = "network"  # BlockwiseNet.prediction: what forward returns (checkpoints before it: "network")

    @property
    def is_custom(self) -> bool:
        return self.name == "custom"

    def build(self):
        """A fresh network of this architecture (untrained; load the checkpoint's weights into it)."""
        from phasenets.models import build_model

        if self.is_custom:
            raise CheckpointError("this checkpoint holds a custom network (BlockwiseNet.from_modules): build it "
                                  "in Python and load the checkpoint's model_state into it")
        model = build_model(self.name, self.num_classes, in_channels=self.in_channels, image_size=self.image_size,
                            head=self.head, **self.options)
        model.prediction = self.prediction
        return model


@dataclass
class Checkpoint:
    """A trained network and where its run stood.

    Every checkpoint carries the network (``model_state``, ``model``) and what it was trained on
    (``classes``, the input ``normalization`` as ``{"mean": [...], "std": [...]}``); a run's
    checkpoints also carry the class hierarchy ``task``, the run's resolved ``config``, the
    ``phase`` they belong to and the blocks reused frozen from an earlier task. A phase's checkpoints (``phase<k>-best/last.pt``) also hold where the phase's
    epoch loop stood, for ``--resume``: ``epoch`` (epochs done), ``early_stopping``, ``seconds``,
    the ``optimizer``/``scheduler``/``scaler`` states, the local loss's ``criterion`` weights (the
    similarity projection, where the phase has one), the ``results`` of the phases done and the
    ``rng`` states; ``final.pt`` leaves those out.
    """

    model_state: dict[str, torch.Tensor]
    model: ModelRecord
    classes: list[str]
    normalization: dict[str, list[float]]
    config: dict[str, Any] = field(default_factory=dict)
    phase: int = 0
    phase_name: str = ""
    completed: bool = True
    task: dict[str, Any] | None = None
    frozen_blocks: list[int] = field(default_factory=list)
    rng: dict[str, Any] | None = None
    epoch: int | None = None
    early_stopping: dict[str, Any] | None = None
    seconds: float | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    criterion: dict[str, torch.Tensor] | None = None  # the local loss's similarity projection (--similarity-weight)
    results: list[dict[str, Any]] = field(default_factory=list)

    def to_payload(self) -> dict[str, Any]:
        """The dict ``save_checkpoint`` writes (``final.pt`` leaves out the phase-progress fields)."""
        payload = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        payload["model"] = dataclasses.asdict(self.model)
        return {key: value for key, value in payload.items() if value is not None or key not in _PROGRESS_FIELDS}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], source: str | Path = "checkpoint") -> Checkpoint:
        names = {item.name for item in dataclasses.fields(cls)}
        try:
            values = {key: value for key, value in payload.items() if key in names}
            values["model"] = ModelRecord(**values["model"])
            return cls(**values)
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{source} is not a complete phasenets checkpoint ({error})") from None

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Read a checkpoint file (its shared weights included); see :func:`load_checkpoint`."""
        return cls.from_payload(load_checkpoint(path, map_location), path)

    def save(self, path: str | Path, copies: Sequence[str | Path] = ()) -> Path:
        return save_checkpoint(path, self.to_payload(), copies)


def save_checkpoint(path: str | Path, payload: dict[str, Any], copies: Sequence[str | Path] = ()) -> Path:
    """Write ``payload`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same directory, are fsynced, and the file is then
    renamed over ``path`` (atomic on POSIX); the directory is fsynced so the rename survives too.
    ``copies``: more paths to commit the same bytes to, in order, after ``path``. The payload is
    serialized once (a phase's best and last checkpoints of one epoch are the same bytes): each
    copy is a hard link, or a plain copy where the filesystem has no links, committed the same way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    contents = {"format": FORMAT, "version": VERSION, **payload}
    contents[CHECKSUM_KEY] = payload_checksum(contents)

    def write(tmp: Path) -> None:
        # through a handle, not the path: torch names the archive inside after a path's file name,
        # which would put the temporary name in the bytes
        with open(tmp, "wb") as handle:
            writer = _WriteErrors(handle)
            try:
                torch.save(contents, writer)
            except (RuntimeError, OSError):
                if writer.error is None:
                    raise
                # torch's zip writer may report a failed write as its own RuntimeError; say what it
                # was, naming the checkpoint (a write error names no file)
                raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None

    write_atomically(path, write, sync_directory=False)
    directories = {path.parent}
    for copy in map(Path, copies):
        _commit_copy(path, copy)
        directories.add(copy.parent)
    for directory in directories:
        fsync_directory(directory)
    return path


class _WriteErrors:
    """A file handle that remembers the OSError of a failed write (a full disk, say)."""

    def __init__(self, handle):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self._handle.flush()


def _commit_copy(source: Path, target: Path) -> None:
    """Give ``target`` the committed bytes of ``source``, atomically. A hard link shares the file
    safely because a committed checkpoint is never written in place, only renamed over."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (or across devices): copy the bytes
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _snapshot(value: Any) -> Any:
    """A copy of ``value`` whose tensors later training steps cannot change (they are cloned)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(item) for item in value)
    return value


class CheckpointWriter:
    """Writes checkpoints with ``save`` (``save_checkpoint`` by default, called as ``save(first_path,
    payload, copies=other_paths)``), on a background thread
    when ``background`` is true, so that the training loop does not wait on serialization and disk.

    In the background, ``write`` snapshots the payload's tensors (a clone costs a fraction of
    serializing them) and returns; the files are written while training goes on, one at a time in
    the order submitted, with at most ``max_pending`` payloads held (2 lets a phase's closing
    checkpoint queue behind its last epoch's without waiting). Each write is atomic, so a process
    killed at any moment leaves every file at its previous or its new checkpoint, never torn: a
    killed run resumes from the last checkpoint committed. A failed write's error is raised by a
    later ``write``, or at the latest by ``wait`` or ``close``; call one of them before reading
    the files back.
    """

    def __init__(self, save: Callable[..., Any] = save_checkpoint, background: bool = True,
                 max_pending: int = 2):
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._save = save
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phasenets-checkpoint") if background else None
        self._pending: deque[Future] = deque()
        self._max_pending = max_pending

    def write(self, paths: list[Path], payload: dict[str, Any], owned: frozenset[str] = frozenset()) -> None:
        """Save ``payload`` to each of ``paths``, in order. ``owned``: payload keys whose values are
        copies training will not change (not copied again for the background write)."""
        if self._executor is None:
            self._save_each(paths, payload)
            return
        self._collect(keep=self._max_pending - 1)
        snapshot = {key: value if key in owned else _snapshot(value) for key, value in payload.items()}
        self._pending.append(self._executor.submit(self._save_each, list(paths), snapshot))

    def _save_each(self, paths: list[Path], payload: dict[str, Any]) -> None:
        self._save(paths[0], payload, copies=paths[1:])

    def wait(self) -> None:
        """Block until every write submitted is committed; re-raise the first error."""
        self._collect(keep=0)

    def _collect(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are pending; raise the error of any that finished."""
        while self._pending and (len(self._pending) > keep or self._pending[0].done()):
            self._pending.popleft().result()

    def close(self) -> None:
        """Finish the writes submitted and stop the thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain values only).

    A checkpoint naming a shared-state file (``SHARED_STATE_KEY``) comes back whole: its
    ``model_state`` is completed from that file, which must sit beside it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    payload = _read(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a phasenets checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')}; this phasenets reads {VERSION}")
    stored = payload.pop(CHECKSUM_KEY, None)
    if stored is None:
        log.warning("%s has no checksum (written by phasenets before 0.2): its integrity cannot be checked", path)
    elif payload_checksum(payload) != stored:
        raise CheckpointDamaged(f"{path} is damaged: its contents do not match the checksum written with them "
                                "(a flipped bit or a torn copy)")
    shared = payload.pop(SHARED_STATE_KEY, None)
    if shared is not None:
        if not (path.parent / shared).is_file():
            raise CheckpointError(f"{path} keeps the weights its phase never changes in {shared}, which is not "
                                  f"beside it: copy the checkpoints folder whole, or use final.pt (self-contained)")
        payload["model_state"] = {**load_checkpoint(path.parent / shared, map_location)["model_state"],
                                  **payload["model_state"]}
    return payload


def _read(path: Path, map_location) -> Any:
    """``torch.load(weights_only=True)``, its errors turned into one line that names the file
    (torch's own texts suggest setting weights_only=False, which phasenets never does)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds objects other than tensors and plain values: phasenets does not "
                              "load them (unpickling them could run code)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:  # torn zip, short read, bad record
        reason = "it is truncated or is not a torch.save file" if "zip archive" in str(error) or isinstance(
            error, (EOFError, OSError)) else "it is damaged"
        raise CheckpointDamaged(f"{path} cannot be read: {reason}") from error


def payload_checksum(payload: Any) -> int:
    """A CRC32 over every tensor's bytes, dtype and shape and every plain value of ``payload``
    (dicts in key order), so that a flipped bit anywhere in a checkpoint is noticed on load
    (torch's zip reader does not check the CRCs it stores)."""
    crc = 0

    def visit(value: Any) -> None:
        nonlocal crc
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            crc = zlib.crc32(f"T{tensor.dtype}{tuple(tensor.shape)}".encode(), crc)
            crc = zlib.crc32(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()), crc)
        elif isinstance(value, dict):
            crc = zlib.crc32(f"D{len(value)}".encode(), crc)
            for key in sorted(value, key=repr):
                visit(key)
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            crc = zlib.crc32(f"{type(value).__name__[0]}{len(value)}".encode(), crc)
            for item in value:
                visit(item)
        else:
            crc = zlib.crc32(f"{type(value).__name__}:{value!r}".encode(), crc)

    visit(payload)
    return crc


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as tensors and plain values (weights_only safe)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG states of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
