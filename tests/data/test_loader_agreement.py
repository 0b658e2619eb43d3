"""The DALI (CPU) and torch loaders give the same pixels: pixel by pixel, on demo-like and photo data.

Both run the steps of ``transforms.py``'s pixel path with the same arithmetic, so they differ only
by float rounding in the resize and the warp. Differences are measured in 8-bit steps (a
normalized difference times ``255 * std``). Measured with DALI 2.4 (CPU) and Pillow 13: nothing
where no pixel is resampled; at most 0.0003 of a step on the evaluation path with a resize (PNG
or JPEG, 1 or 3 channels); at most 0.014 of a step with every augmentation on. The bounds below
leave room for other versions' float rounding, far below the one step an 8-bit rounding would make.
"""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")

from phasenets.data.dali_loader import build_dali_loader  # noqa: E402
from phasenets.data.layout import Sample  # noqa: E402
from phasenets.data.torch_loader import build_torch_loader  # noqa: E402
from phasenets.data.transforms import AugmentConfig, Normalization  # noqa: E402

pytestmark = pytest.mark.dali

EVALUATION_BOUND = 0.002  # 8-bit steps; measured 0.0003
AUGMENTED_BOUND = 0.05    # measured 0.014
EVERY_AUGMENTATION = AugmentConfig(random_resized_crop=True, hflip=True, rotation=20.0, shift=0.1, shear=10.0,
                                   zoom=0.2, brightness=0.3, contrast=0.3, random_erasing=0.5)
# A typical measured normalization: no 8-bit value lands on an exactly representable result.
NORMALIZATION = {1: Normalization((0.3128,), (0.3715,)), 3: Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
# Photo sizes around the network inputs below: landscape, portrait, square, smaller (enlarged), large.
PHOTO_SIZES = [(48, 36), (30, 52), (40, 40), (20, 17), (64, 27), (320, 240)]


def _photo_like(rng, width, height):
    """An RGB image that compresses like a photo: smooth waves and ramps plus sensor noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
        ramp = rng.uniform(-1, 1) * x / width + rng.uniform(-1, 1) * y / height
        planes.append(128 + 70 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase) + 50 * ramp)
    image = np.stack(planes, axis=-1) + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _save(root, images: dict, **save_options) -> list[Sample]:
    """Each ``{name: image}`` saved under ``root``, in order, as samples of 3 classes."""
    samples = []
    for index, (name, image) in enumerate(images.items()):
        image.save(root / name, **save_options)
        samples.append(Sample(str(root / name), index % 3))
    return samples


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The demo's kind of data: 8x8 digit-like images of 0..255, bicubic to 32x32 grayscale PNGs
    (what `phasenets data import digits --image-size 32` writes)."""
    rng = np.random.default_rng(0)
    small = [(rng.integers(0, 17, (8, 8)) * 255 // 16).astype(np.uint8) for _ in range(24)]
    return _save(tmp_path_factory.mktemp("digits"), {
        f"{index:02d}.png": Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC)
        for index, pixels in enumerate(small)})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photo-like JPEGs (quality 90) of sizes unlike the network input, one of them grayscale."""
    rng = np.random.default_rng(1)
    images = {f"{index}.jpg": Image.fromarray(_photo_like(rng, width, height))
              for index, (width, height) in enumerate(PHOTO_SIZES)}
    images["2.jpg"] = images["2.jpg"].convert("L")
    return _save(tmp_path_factory.mktemp("photos"), images, quality=90)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """30x40 files of every mode the preflight converts, and the plain ones beside them."""
    rng = np.random.default_rng(2)
    rgb = _photo_like(rng, 40, 30)
    alpha = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    images = {
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "la.png": Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"),
        "palette.png": palette,
        "gray16.png": Image.fromarray(rgb[..., 1].astype(np.uint16) * 257 + rng.integers(0, 257, (30, 40), np.uint16)),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "gray.bmp": Image.fromarray(rgb[..., 2]),
        "bilevel.png": Image.fromarray(rgb[..., 0] > 128),
        "rgb.bmp": Image.fromarray(rgb),
    }
    root = tmp_path_factory.mktemp("modes")
    palette.save(root / "transparent.png", transparency=0)
    _write_png_rgb16(root / "rgb16.png", rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16))
    return _save(root, images) + [Sample(str(root / name), 0) for name in ("transparent.png", "rgb16.png")]


def _write_png_rgb16(path, pixels):
    """A 16-bit RGB PNG (PIL writes none): PIL reads it keeping each sample's high byte."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)  # filter byte 0, then the row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def _images(build, samples, *, image_size, in_channels, augment=None, view=None):
    loader = build(samples, image_size=image_size, in_channels=in_channels, augment=augment,
                   normalization=NORMALIZATION[in_channels], batch_size=5, shuffle=False, seed=4,
                   num_workers=2 if build is build_dali_loader else 0)
    if view is not None:
        loader.set_view(view)
    images = {int(i): image for batch, _, indices in loader for i, image in zip(indices, batch.cpu())}
    return torch.stack([images[i] for i in range(len(samples))])


def _steps(dali, pil, in_channels):
    """|difference| in 8-bit steps, per pixel."""
    std = torch.tensor(NORMALIZATION[in_channels].std).view(1, -1, 1, 1)
    return (dali - pil).abs() * std * 255


@pytest.mark.parametrize("in_channels", [1, 3])
def test_demo_data_gives_the_same_bits_where_nothing_is_resized(digits, in_channels):
    options = dict(image_size=32, in_channels=in_channels)
    dali, pil = _images(build_dali_loader, digits, **options), _images(build_torch_loader, digits, **options)
    assert dali.shape == (len(digits), in_channels, 32, 32)
    assert torch.equal(dali, pil)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("dataset,image_size", [("digits", 28), ("digits", 20), ("photos", 32), ("photos", 28)])
def test_resized_images_agree_pixel_by_pixel(request, dataset, image_size, in_channels):
    # The JPEGs too: both loaders decode them with libjpeg-turbo (the same IDCT and chroma
    # upsampling, bit for bit), so the bound is the resize's float rounding.
    samples = request.getfixturevalue(dataset)
    options = dict(image_size=image_size, in_channels=in_channels)
    dali, pil = _images(build_dali_loader, samples, **options), _images(build_torch_loader, samples, **options)
    assert _steps(dali, pil, in_channels).max() <= EVALUATION_BOUND


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("view", [0, 7])
def test_augmented_views_agree_pixel_by_pixel(digits, photos, in_channels, view):
    samples = digits[:12] + photos
    options = dict(image_size=28, in_channels=in_channels, augment=EVERY_AUGMENTATION, view=view)
    dali, pil = _images(build_dali_loader, samples, **options), _images(build_torch_loader, samples, **options)
    assert _steps(dali, pil, in_channels).max() <= AUGMENTED_BOUND
    assert torch.equal(dali == 0, pil == 0)  # the same boxes erased


@pytest.mark.parametrize("in_channels", [1, 3])
def test_converted_modes_decode_to_the_same_pixels(converted, in_channels):
    # Alpha composited on black, palettes, 16-bit gray and colour, 1-bit, CMYK, BMP: 30x40 at 30 is
    # a crop, no resampling. DALI decodes alpha and 16-bit colour otherwise; the feed hands it PIL's.
    options = dict(image_size=30, in_channels=in_channels)
    dali, pil = _images(build_dali_loader, converted, **options), _images(build_torch_loader, converted, **options)
    for sample, dali_image, pil_image in zip(converted, dali, pil):
        assert torch.equal(dali_image, pil_image), sample.path
