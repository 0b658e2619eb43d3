"""Builders of tiny on-disk datasets for tests, including a corpus of planted bad files.

Importable from any test (``from tests.data.corpus import make_dataset``); everything is
deterministic and small enough to build in milliseconds.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterable, Mapping

import numpy as np
import pytest
from PIL import Image


def write_image(path: str | os.PathLike, size: tuple[int, int] = (12, 10), mode: str = "RGB",
                seed: int = 0, fill: int | tuple[int, ...] | None = None, **save_options) -> str:
    """Save a ``size = (width, height)`` image of ``mode``: seeded noise, or a constant ``fill``."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if fill is not None:
        image = Image.new(mode, size, fill)
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
        image = Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels)
        image = image.convert(mode) if image.mode != mode else image
    image.save(path, **save_options)
    return path


def make_dataset(root: str | os.PathLike, classes: Iterable[str] = ("cat", "dog"),
                 counts: Mapping[str, int] | None = None, size: tuple[int, int] = (12, 10),
                 ext: str = ".png", mode: str = "RGB") -> str:
    """``root/<split>/<class>/<class>_<i><ext>`` of seeded noise; ``counts`` maps split -> images
    per class (default: train 4, validation 2). Returns ``root``."""
    root = os.fspath(root)
    counts = counts or {"train": 4, "validation": 2}
    seed = 0
    for split, count in counts.items():
        for name in classes:
            for i in range(count):
                write_image(os.path.join(root, split, name, f"{name}_{i}{ext}"), size, mode, seed=seed)
                seed += 1
    return root


def make_indexed_dataset(root: str | os.PathLike, num_classes: int, per_class: int,
                         size: int = 8) -> str:
    """``train/c<k>/`` of constant gray images whose value is ``10 * index`` (their position in
    the layout scan's train list), so a loaded image tells which file it came from; validation
    holds one black image per class."""
    root = os.fspath(root)
    for label in range(num_classes):
        for i in range(per_class):
            write_image(os.path.join(root, "train", f"c{label}", f"{i:03d}.png"), (size, size), "L",
                        fill=10 * (label * per_class + i))
        write_image(os.path.join(root, "validation", f"c{label}", "0.png"), (size, size), "L", fill=0)
    return root


def jpeg_bytes(size: tuple[int, int] = (48, 48), mode: str = "RGB", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_bad_corpus(root: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """A dataset with one of every bad input of issue 5 planted in it.

    Returns ``(root, expected)`` where ``expected`` maps each planted path to the problem kind
    ``check_dataset`` must report for it (with default sizes: the 1x1 image is ``too_small``).
    Everything else in the corpus is a clean 12x10 RGB PNG.
    """
    root = make_dataset(root, classes=("cat", "dog"), counts={"train": 3, "validation": 2})
    cat = os.path.join(root, "train", "cat")
    expected = {}

    def plant(name: str, kind: str, data: bytes | None = None) -> str:
        path = os.path.join(cat, name)
        if data is not None:
            with open(path, "wb") as file:
                file.write(data)
        expected[path] = kind
        return path

    whole = jpeg_bytes()
    plant("truncated.jpg", "corrupt", whole[: len(whole) // 2])
    plant("zero_bytes.jpg", "empty_file", b"")
    plant("notes.jpg", "not_an_image", b"these are my notes, not a picture\n" * 4)
    plant("cmyk.jpg", "converted", jpeg_bytes(mode="CMYK", seed=1))
    sixteen = np.random.default_rng(2).integers(0, 65536, (10, 12), dtype=np.uint16)
    Image.fromarray(sixteen).save(plant("sixteen_bit.png", "converted"))
    write_image(plant("alpha.png", "converted"), mode="RGBA", seed=3)
    write_image(plant("one_pixel.png", "too_small"), size=(1, 1), seed=4)

    empty_class = os.path.join(root, "validation", "dog")
    for name in os.listdir(empty_class):
        os.remove(os.path.join(empty_class, name))
    expected[empty_class] = "empty_class"
    return root, expected


# Entries no loader may decode, each planted by `plant_bad_entry`: the loaders and the preflight must
# name them rather than hang (a FIFO), crash (links that lead nowhere) or take the machine's memory.
BAD_ENTRIES = ("fifo", "symlink_loop", "dangling_symlink", "huge_sparse_file", "pixel_bomb")
# A test that reads them fails after this long instead of hanging. The thread method ends the whole
# session: a reader blocked on a FIFO in a worker thread outlives any exception raised in the main one.
HANG_GUARD = pytest.mark.timeout(60, method="thread")
HUGE_FILE_BYTES = 4 * 2**20  # the sparse file's size; tests lower MAX_FILE_BYTES under it


def plant_bad_entry(folder: str | os.PathLike, case: str) -> tuple[str, str, str]:
    """Plant the entry ``case`` (one of `BAD_ENTRIES`) in ``folder``; returns ``(path, problem kind,
    a phrase the report must give for it)``. The sparse file is zeros, too large only under a
    ``MAX_FILE_BYTES`` below `HUGE_FILE_BYTES`; the pixel bomb is too large under the default limit."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    if case == "fifo":
        os.mkfifo(path := os.path.join(folder, "pipe.png"))
        return path, "not_a_file", "a FIFO (named pipe)"
    if case == "symlink_loop":
        os.symlink("loop.png", path := os.path.join(folder, "loop.png"))
        return path, "not_a_file", "symbolic link loop"
    if case == "dangling_symlink":
        os.symlink("gone.png", path := os.path.join(folder, "dangling.png"))
        return path, "not_a_file", "dangling symbolic link (to gone.png"
    if case == "huge_sparse_file":
        with open(path := os.path.join(folder, "huge.jpg"), "wb") as file:
            file.truncate(HUGE_FILE_BYTES)
        return path, "too_large", f"{HUGE_FILE_BYTES:,} bytes, above the limit"
    if case == "pixel_bomb":
        write_pixel_bomb(path := os.path.join(folder, "bomb.png"), 12000, 12000)
        return path, "too_large", "12000x12000 = 144,000,000 pixels, above the limit"
    raise ValueError(f"unknown bad entry {case!r}; valid: {', '.join(BAD_ENTRIES)}")


def write_pixel_bomb(path: str | os.PathLike, width: int, height: int) -> str:
    """A black 1-bit PNG of ``width`` x ``height`` pixels that takes a few KB on disk (12,000 x 12,000:
    17 KB), written row by row so that making it never holds the image in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return os.fspath(path)
