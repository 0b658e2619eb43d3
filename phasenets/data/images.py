"""Image files: which ones count as images, and decoding any of them to 8-bit L or RGB.

Datasets in the wild mix grayscale and colour, palette PNGs, scans saved as CMYK JPEGs, 16-bit
microscopy PNGs and screenshots with an alpha channel. Every loader funnels them through
:func:`to_channels`, so a network always sees ``in_channels`` planes of 8-bit data.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

# Modes holding more than 8 bits per sample; they are scaled down to 0..255.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_image_file(path: str) -> bool:
    """True when ``path`` has one of the dataset image extensions, in any letter case."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def conversion_note(image: Image.Image) -> str | None:
    """Why an image of this mode needs more than a plain colour conversion, or None.

    :func:`check_dataset <phasenets.data.check.check_dataset>` reports these as "converted".
    """
    mode = image.mode
    if mode == "CMYK":
        return "CMYK image, converted to RGB"
    if mode in _WIDE_MODES:
        return f"{'floating-point' if mode == 'F' else '16-bit'} image (mode {mode}), scaled to 8 bits"
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return "image with an alpha channel, composited on black"
    return None


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
    """Open, fully decode and convert one image file; PIL errors propagate (OSError and friends)."""
    with Image.open(path) as image:
        image.load()
        return to_channels(image, in_channels)


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
