"""Image files: which ones count as images, opening them safely, and decoding any of them to 8-bit L or RGB.

Datasets in the wild mix grayscale and colour, palette PNGs, scans saved as CMYK JPEGs, 16-bit
microscopy PNGs and screenshots with an alpha channel. Every loader funnels them through
:func:`to_channels`, so a network always sees ``in_channels`` planes of 8-bit data.

They also hold things no loader should touch. Only a *regular file* (after following symbolic
links) with an image extension is an image: a FIFO would block the reader forever, and a device,
socket, directory, dangling link or link loop cannot be decoded. Two limits, checked before any
pixel is decoded, keep one file from taking the machine's memory (change them by assigning to the
module constants, or per call):

- :data:`MAX_FILE_BYTES`, 512 MiB: twice the largest uncompressed 8-bit image within the pixel
  limit (a 64-megapixel RGBA BMP is 256 MiB); a bigger file is refused before a byte is read.
- :data:`MAX_IMAGE_PIXELS`, 8192 x 8192 (64 megapixels, 192 MiB decoded as RGB): above every
  common camera sensor (24 to 61 megapixels), while the networks here take inputs of a few hundred
  pixels. A PNG of a few hundred KB can declare 12,000 x 12,000 pixels (a GB once decoded): it is
  refused from its header. Pillow's own DecompressionBombWarning (from 89 megapixels) is kept out
  of the console; its DecompressionBombError (from 179 megapixels) still bounds a raised limit.

:func:`open_image_file` and :func:`read_header` apply these rules, raising :class:`BadImageError`
(whose message names the file); :func:`load_image` (every loader) and the preflight
(:mod:`phasenets.data.check`) go through them, and the layout scan (:mod:`phasenets.data.layout`)
leaves out what :func:`not_a_file` refuses, so no loader is ever handed such an entry.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import Image

from phasenets.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MAX_FILE_BYTES = 512 * 2**20
MAX_IMAGE_PIXELS = 8192 * 8192

# Modes holding more than 8 bits per sample; they are scaled down to 0..255.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImageError(UserError, ValueError):
    """A file no loader may decode. ``str()`` is ``"<path>: <reason>"``; ``kind`` is the problem
    kind the preflight reports it under (:mod:`phasenets.data.check`), e.g. ``too_large``."""

    def __init__(self, path: str, reason: str, kind: str = "corrupt") -> None:
        super().__init__(path, reason, kind)
        self.path, self.reason, self.kind = path, reason, kind

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def is_image_file(path: str) -> bool:
    """True when ``path`` has one of the dataset image extensions, in any letter case."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def not_a_file(path: str) -> str | None:
    """Why no loader may open ``path``: it is no regular file once links are followed (a FIFO,
    socket, device, directory, dangling link or link loop), or cannot be looked up; else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return _unopenable(path, error).reason
    return None if stat.S_ISREG(mode) else _not_regular(path, mode).reason


@contextmanager
def open_image_file(path: str, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """``path`` opened for reading, or :class:`BadImageError` when it is no regular file or holds
    more than ``max_bytes`` (default :data:`MAX_FILE_BYTES`).

    The file is opened non-blocking and checked on the open descriptor, so a FIFO swapped in
    after a scan cannot block the reader either.
    """
    limit = MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        file = open(path, "rb", opener=lambda name, flags: os.open(name, flags | _O_NONBLOCK))
    except OSError as error:
        raise _unopenable(path, error) from None
    with file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        if info.st_size > limit:
            raise BadImageError(path, f"{info.st_size:,} bytes, above the limit of {limit:,} "
                                "(phasenets.data.images.MAX_FILE_BYTES); not read", "too_large")
        yield file


def read_header(file: BinaryIO, path: str, max_pixels: int | None = None) -> Image.Image:
    """Pillow's lazy image of an open file (only its header is read), or :class:`BadImageError`
    (``too_large``) when it has more than ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`).

    Other failures to parse the header propagate as Pillow raises them.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    # Pillow warns from Image.open above its own limit; the limit here is lower and refuses such an
    # image with an error, so the warning would only repeat it. catch_warnings swaps process-wide
    # filters: the lock keeps two threads from restoring each other's.
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(file)
        except Image.DecompressionBombError as error:
            raise BadImageError(path, f"{error} (Pillow's own limit)", "too_large") from None
    width, height = image.size
    if width * height > limit:
        image.close()
        raise BadImageError(path, f"{width}x{height} = {width * height:,} pixels, above the limit of "
                            f"{limit:,} (phasenets.data.images.MAX_IMAGE_PIXELS); not decoded", "too_large")
    return image


def conversion_note(image: Image.Image) -> str | None:
    """Why an image of this mode needs more than a plain colour conversion, or None.

    :func:`check_dataset <phasenets.data.check.check_dataset>` reports these as "converted".
    """
    mode = image.mode
    if mode == "CMYK":
        return "CMYK image, converted to RGB"
    if mode in _WIDE_MODES:
        return f"{'floating-point' if mode == 'F' else '16-bit'} image (mode {mode}), scaled to 8 bits"
    if has_alpha(image):
        return "image with an alpha channel, composited on black"
    return None


def has_alpha(image: Image.Image) -> bool:
    """True for an image with an alpha channel (or a palette with a transparent entry), which
    :func:`to_channels` composites on black."""
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def to_channels(image: Image.Image, in_channels: int) -> Image.Image:
    """Convert a decoded image of any PIL mode to 8-bit ``L`` (1 channel) or ``RGB`` (3).

    Alpha is composited on black (transparent pixels become 0, which is also where padding from
    the affine augmentations lands). 16-bit and 32-bit integer samples are scaled by 255/65535;
    float samples are taken to be on the 0..1 scale. CMYK, YCbCr, LAB and palette images go
    through PIL's own conversions. Colour to 1 channel keeps the ITU-R 601 luminance; grayscale
    to 3 channels replicates the plane.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    target = "L" if in_channels == 1 else "RGB"
    if image.mode in _WIDE_MODES:
        image = _wide_to_gray8(image)
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        image = _composite_on_black(image)
    return image if image.mode == target else image.convert(target)


def load_image(path: str, in_channels: int) -> Image.Image:
    """Open, fully decode and convert one image file, within the limits of :func:`open_image_file`
    and :func:`read_header`; any failure raises :class:`BadImageError` naming the file."""
    with open_image_file(path) as file:
        try:
            with read_header(file, path) as image:
                image.load()
                return to_channels(image, in_channels)
        except BadImageError:
            raise
        except Exception as error:  # noqa: BLE001 - Pillow raises many types for broken files
            raise BadImageError(path, f"cannot be decoded: {error}") from error


def _wide_to_gray8(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    scale = 255.0 if image.mode == "F" else 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))


def _composite_on_black(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA") if image.mode != "LA" else image
    base_mode = "L" if rgba.mode == "LA" else "RGB"
    background = Image.new(base_mode, rgba.size, 0)
    background.paste(rgba.convert(base_mode), mask=rgba.getchannel("A"))
    return background


# Opening a FIFO for reading blocks until a writer comes; with this flag it returns at once. It does
# nothing to reads of a regular file. Windows has no FIFOs to open and no such flag.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_WARNINGS_LOCK = threading.Lock()
_FILE_TYPES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def _not_regular(path: str, mode: int) -> BadImageError:
    what = next((name for is_type, name in _FILE_TYPES if is_type(mode)), "a special file")
    return BadImageError(path, f"{what}, not a regular file: no loader opens it", "not_a_file")


def _unopenable(path: str, error: OSError) -> BadImageError:
    if error.errno == errno.EISDIR:
        return _not_regular(path, stat.S_IFDIR)
    if error.errno == errno.ELOOP:
        return BadImageError(path, "a symbolic link loop: it leads to no file", "not_a_file")
    if error.errno == errno.ENOENT and os.path.islink(path):
        return BadImageError(path, f"a dangling symbolic link (to {os.readlink(path)}, which does not exist)",
                             "not_a_file")
    return BadImageError(path, f"cannot be opened: {error.strerror}", "unreadable")
