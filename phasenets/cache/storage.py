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
import mmap
import os
import time
import zlib

import numpy as np
import torch

from phasenets._atomic import fsync_directory
from phasenets.cache.fileformat import CacheFormatError, CacheHeader, encode_header, read_header
from phasenets.cache.spec import CacheSpec
from phasenets.cache.tiers import Tier

__all__ = ["FILE_SUFFIX", "BuildLock", "CacheLockTimeout", "DiskBuild", "MappedFile", "allocate_rows",
           "cache_file_paths", "copy_to_device", "read_committed", "view_rows"]

FILE_SUFFIX = ".pncache"
READ_CHUNK = 16 << 20  # bytes per positioned read of a whole payload (checksums, loading into memory)


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
                   verify: bool = True) -> tuple[CacheHeader, MappedFile] | None:
    """The header and the payload of the committed file ``<cache_dir>/<name>.pncache``; None
    when there is none or it holds another fingerprint. Raises ``CacheFormatError`` for a torn,
    corrupt or foreign file (``verify``: the payload's checksum too, one sequential read)."""
    path = cache_file_paths(cache_dir, name)[0]
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return None
    try:  # header and payload come from this one open file, even if it is replaced meanwhile
        header = read_header(file)
        if header.fingerprint != fingerprint:
            file.close()
            return None
        mapped = MappedFile(file, np.memmap(file, dtype=np.uint8, mode="c", offset=header.payload_offset,
                                            shape=(header.payload_nbytes,)), header.payload_offset)
    except BaseException:
        file.close()
        raise
    if verify and mapped.crc32() != header.payload_crc32:
        mapped.close()
        raise CacheFormatError(f"{path}: payload checksum mismatch: the file is corrupt")
    return header, mapped


class MappedFile:
    """A cache file's payload: mapped in memory, where a build writes its rows, and read with
    positioned reads (``pread``), which keep no page of it in the process's memory.

    A mapping keeps every page it touched resident (RSS counts them), so a disk-tier cache read or
    written through it would hold as much memory as a host-tier one: reads go through the file
    (the prefetcher's ``file`` source, :meth:`read_into`, :meth:`crc32`), and a build hands the
    pages it wrote back to the page cache (:meth:`release_pages`).
    """

    def __init__(self, file, mapping: np.memmap, payload_offset: int):
        self._file = file
        self._mapping = mapping
        self.payload_offset = payload_offset
        self.nbytes = mapping.size

    def rows(self, spec: CacheSpec) -> torch.Tensor:
        """The mapped payload as ``[rows, row_elems]`` of the storage dtype (no copy)."""
        return view_rows(torch.from_numpy(self._mapping), spec)

    @property
    def source(self) -> tuple[int, int]:
        """``(descriptor, offset of row 0)``: the prefetcher's positioned-read source."""
        return self._file.fileno(), self.payload_offset

    def release_pages(self) -> None:
        """Drop the mapped pages from this process's memory; their contents stay in the file (a
        shared mapping's written pages are the page cache's, written back as usual)."""
        self._mapping._mmap.madvise(mmap.MADV_DONTNEED)

    def flush(self) -> None:
        self._mapping.flush()  # msync: the payload reaches the file before a header claims it

    def read_into(self, out: torch.Tensor) -> None:
        """The whole payload into ``out`` (a contiguous CPU tensor of its size), by positioned reads."""
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        for start in range(0, self.nbytes, READ_CHUNK):
            _read_exactly(self._file.fileno(), view[start:start + READ_CHUNK], self.payload_offset + start)

    def crc32(self) -> int:
        """CRC32 of the payload, read from the file in chunks."""
        crc, buffer = 0, bytearray(min(READ_CHUNK, max(1, self.nbytes)))
        for start in range(0, self.nbytes, READ_CHUNK):
            chunk = memoryview(buffer)[:min(READ_CHUNK, self.nbytes - start)]
            _read_exactly(self._file.fileno(), chunk, self.payload_offset + start)
            crc = zlib.crc32(chunk, crc)
        return crc

    def write_header(self, header: bytes) -> None:
        """Write ``header`` at the file's start and fsync the file."""
        os.pwrite(self._file.fileno(), header, 0)
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._mapping = None
        if not self._file.closed:
            self._file.close()


def _read_exactly(descriptor: int, into: memoryview, offset: int) -> None:
    done = 0
    while done < len(into):
        got = os.preadv(descriptor, [into[done:]], offset + done)
        if got == 0:
            raise CacheFormatError(f"the cache file ends {len(into) - done} bytes early: it is torn")
        done += got


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
    """The partial file of a disk build (its :class:`MappedFile`) and its build lock."""

    def __init__(self, partial_path: str, final_path: str, file: MappedFile, lock: BuildLock):
        self.partial_path = partial_path
        self.final_path = final_path
        self.file = file
        self._lock = lock

    @classmethod
    def start(cls, cache_dir, name: str, header: CacheHeader, lock: BuildLock) -> DiskBuild:
        """Create this process's partial file of ``header``'s size."""
        final_path, partial_prefix, _ = cache_file_paths(cache_dir, name)
        # holding the lock, every partial file of this name belongs to a builder that died
        for stale in glob.glob(glob.escape(partial_prefix) + "*"):
            os.unlink(stale)
        partial_path = f"{partial_prefix}{os.getpid()}"
        file = open(partial_path, "w+b")
        try:
            # the header area stays zeroed (an invalid magic) until commit writes it. The blocks are
            # allocated now: a sparse file written through a mapping on a disk that fills up meanwhile
            # would end the process with SIGBUS instead of an error naming the file.
            try:
                os.posix_fallocate(file.fileno(), 0, header.payload_offset + header.payload_nbytes)
            except OSError as error:
                raise OSError(error.errno, error.strerror, partial_path) from None
            mapped = np.memmap(file, dtype=np.uint8, mode="r+", offset=header.payload_offset,
                               shape=(header.payload_nbytes,))
        except BaseException:
            file.close()
            os.unlink(partial_path)
            lock.release()
            raise
        return cls(partial_path, final_path, MappedFile(file, mapped, header.payload_offset), lock)

    def commit(self, header: CacheHeader) -> CacheHeader:
        """Checksum the payload, write the header, fsync, rename to the final name, release the
        lock; the file stays open for reading. Returns the header with its checksum."""
        try:
            self.file.flush()
            header = dataclasses.replace(header, payload_crc32=self.file.crc32())
            self.file.write_header(encode_header(header))
        except OSError as error:  # name the file (msync, pwrite and fsync errors name none)
            raise OSError(error.errno, error.strerror, self.partial_path) from None
        os.replace(self.partial_path, self.final_path)
        fsync_directory(os.path.dirname(self.final_path) or ".")
        self._lock.release()
        return header

    def discard(self) -> None:
        """Give up an uncommitted build: delete the partial file, release the lock."""
        self.file.close()
        if os.path.exists(self.partial_path):
            os.unlink(self.partial_path)
        self._lock.release()
