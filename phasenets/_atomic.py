"""Crash-safe file commits, shared by checkpoints, exports and the feature cache.

A file is written under a temporary name in its own directory, fsynced, and renamed over its final
name (atomic on POSIX); fsyncing the directory afterwards makes the rename itself survive a crash.
A reader therefore sees either the old file or the whole new one, never a torn one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["fsync_directory", "remove_stale_temporaries", "temporary_name", "write_atomically"]


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` for this process to write before committing (same filesystem,
    so the rename is atomic; the pid keeps two processes from sharing one)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in ``folder`` whose writer is gone (a process killed mid-write
    leaves its ``.NAME.tmp-PID`` behind); returns their paths. A live writer's file is kept."""
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        pid = path.name.rpartition(".tmp-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def fsync_directory(directory: str | os.PathLike) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], *, sync_directory: bool = True) -> Path:
    """Commit the file that ``write(temporary_path)`` produces to ``path``.

    ``sync_directory=False`` leaves the directory's fsync to a caller that commits several files
    into it and syncs it once at the end.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sync_directory:
        fsync_directory(path.parent)
    return path
