"""Where a cache's rows are stored: memory allocated for them, or a file under ``cache_dir``.

A disk build writes ``<name>.pncache.partial-<pid>`` while holding an exclusive lock on
``<name>.pncache.lock`` (:class:`BuildLock`); :meth:`DiskBuild.commit` checksums the payload,
writes the header, fsyncs, and only then renames the file to ``<name>.pncache``. A reader
therefore sees either no file, the previous complete file, or the new complete file, and
:func:`read_committed` re-checks the header (and the payload's checksum) before anything is
served. A build killed at any point leaves only a partial file, which the next builder deletes.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import glob
import os
import time

import numpy as np
import torch

from phasenets._atomic import fsync_directory
from phasenets.cache.fileformat import CacheFormatError, CacheHeader, encode_header, payload_crc32, read_header
from phasenets.cache.spec import CacheSpec
from phasenets.cache.tiers import Tier

__all__ = ["FILE_SUFFIX", "BuildLock", "CacheLockTimeout", "DiskBuild", "allocate_rows", "cache_file_paths",
           "copy_to_device", "read_committed", "view_rows"]

FILE_SUFFIX = ".pncache"


def allocate_rows(spec: CacheSpec, tier: Tier, zero: bool = True) -> torch.Tensor:
    """``[rows, row_elems]`` storage for ``spec`` in device memory or (pinned where CUDA exists) RAM."""
    shape = (spec.rows, spec.row_elems)
    if tier is Tier.CUDA:
        storage = torch.empty(shape, dtype=spec.torch_dtype, device="cuda")
    else:
        storage = torch.empty(shape, dtype=spec.torch_dtype, pin_memory=torch.cuda.is_available())
    # zeroed so that a row read before it is written is deterministic, never stale memory
    return storage.zero_() if zero else storage


def copy_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without the host waiting for it: staged in pinned memory and
    copied asynchronously (stream-ordered before anything later on that device). Unchanged for a
    CPU ``device`` or a tensor already there."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type == "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def view_rows(payload_bytes: torch.Tensor, spec: CacheSpec) -> torch.Tensor:
    """A payload's bytes seen as ``[rows, row_elems]`` of the storage dtype (no copy)."""
    return payload_bytes.view(spec.torch_dtype).view(spec.rows, spec.row_elems)


def cache_file_paths(cache_dir: str | os.PathLike, name: str) -> tuple[str, str, str]:
    """(committed file, partial-file prefix, lock file) for cache ``name`` under ``cache_dir``."""
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"cache name must be a plain file name, got {name!r}")
    base = os.path.join(os.fspath(cache_dir), name + FILE_SUFFIX)
    return base, base + ".partial-", base + ".lock"


def read_committed(cache_dir: str | os.PathLike, name: str, fingerprint: str,
                   verify: bool = True) -> tuple[CacheHeader, torch.Tensor] | None:
    """The header and the mapped rows of the committed file ``<cache_dir>/<name>.pncache``; None
    when there is none or it holds another fingerprint. Raises ``CacheFormatError`` for a torn,
    corrupt or foreign file (``verify``: the payload's checksum too, one sequential read)."""
    path = cache_file_paths(cache_dir, name)[0]
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return None
    with file:  # header and payload come from this one open file, even if it is replaced meanwhile
        header = read_header(file)
        if header.fingerprint != fingerprint:
            return None
        mapped = np.memmap(file, dtype=np.uint8, mode="c", offset=header.payload_offset,
                           shape=(header.payload_nbytes,))
    rows = view_rows(torch.from_numpy(mapped), header.spec)
    if verify and payload_crc32(rows) != header.payload_crc32:
        raise CacheFormatError(f"{path}: payload checksum mismatch: the file is corrupt")
    return header, rows


class CacheLockTimeout(TimeoutError):
    """Another process held the build lock for longer than the caller was willing to wait."""


class BuildLock:
    """An exclusive ``flock`` on ``<name>.pncache.lock``: one builder per cache file at a time.

    The kernel drops the lock when its holder exits, however it exits, so a crashed builder never
    leaves a stale lock. The holder deletes the lock file before it lets go, so a finished build
    leaves no ``.lock`` file behind. A waiter may thus wake holding the lock of a file that is
    gone; it then sees that the name now points elsewhere (or nowhere) and locks the path again,
    so two processes never hold "the" lock on two different files at once.
    """

    def __init__(self, path: str, timeout: float | None):
        self.path = path
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._file = open(path, "a+b")
            try:
                self._wait(deadline, timeout)
            except BaseException:
                self._file.close()
                raise
            if self._still_the_lock_file():
                return
            self._file.close()  # its holder deleted it while this process waited: lock the new one

    def _wait(self, deadline: float | None, timeout: float | None) -> None:
        while True:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                return
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise CacheLockTimeout(
                        f"another process has been building the cache behind {self.path} for over {timeout}s"
                    ) from None
                time.sleep(0.05)

    def _still_the_lock_file(self) -> bool:
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self._file.fileno())
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if not self._file.closed:
            try:
                os.unlink(self.path)  # while still locked: nobody can have locked the path's new file yet
            except FileNotFoundError:
                pass
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


class DiskBuild:
    """The partial file of a disk build, its memory map and its build lock."""

    def __init__(self, partial_path: str, final_path: str, file, mapped: np.memmap, lock: BuildLock):
        self.partial_path = partial_path
        self.final_path = final_path
        self._file = file
        self._mapped = mapped
        self._lock = lock
        self.payload = torch.from_numpy(mapped)

    @classmethod
    def start(cls, cache_dir, name: str, header: CacheHeader, lock: BuildLock) -> DiskBuild:
        """Create this process's partial file of ``header``'s size (its rows: ``payload``)."""
        final_path, partial_prefix, _ = cache_file_paths(cache_dir, name)
        # holding the lock, every partial file of this name belongs to a builder that died
        for stale in glob.glob(glob.escape(partial_prefix) + "*"):
            os.unlink(stale)
        partial_path = f"{partial_prefix}{os.getpid()}"
        file = open(partial_path, "w+b")
        try:
            # the header area stays zeroed (an invalid magic) until commit writes it
            file.truncate(header.payload_offset + header.payload_nbytes)
            mapped = np.memmap(file, dtype=np.uint8, mode="r+", offset=header.payload_offset,
                               shape=(header.payload_nbytes,))
        except BaseException:
            file.close()
            os.unlink(partial_path)
            lock.release()
            raise
        return cls(partial_path, final_path, file, mapped, lock)

    def commit(self, header: CacheHeader, storage: torch.Tensor) -> CacheHeader:
        self._mapped.flush()  # msync: the payload reaches the file before the header claims it
        header = dataclasses.replace(header, payload_crc32=payload_crc32(storage))
        os.pwrite(self._file.fileno(), encode_header(header), 0)
        os.fsync(self._file.fileno())
        os.replace(self.partial_path, self.final_path)
        fsync_directory(os.path.dirname(self.final_path) or ".")
        self._file.close()
        self._lock.release()
        return header

    def close(self, discard: bool) -> None:
        self.payload = None
        self._mapped = None
        if not self._file.closed:
            self._file.close()
        if discard and os.path.exists(self.partial_path):
            os.unlink(self.partial_path)
        self._lock.release()
