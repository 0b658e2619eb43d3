"""Augmentation and normalization: configs, reproducible parameter sampling, the PIL/torch path.

Every random choice of one augmented view comes from one generator seeded by
``view_seed(seed, index, view)``, drawing a fixed vector of uniforms in a fixed order, so view
``v`` of sample ``i`` is the same image every time, in any worker, on any rank, and switching one
augmentation on or off does not change the others' draws. :func:`sample_augment_params` and the
geometry helpers (:func:`source_box`, :func:`affine_matrix`, :func:`erase_box`) are plain functions
of those numbers so that the DALI pipeline can reproduce the same views.

The pixel path, the same arithmetic in both loaders (the DALI graph in
:mod:`phasenets.data.dali_loader` does each step with the operator named):

1. decode to 8-bit L or RGB (:func:`phasenets.data.images.to_channels`);
2. resample the source box (the evaluation centre crop or the random resized crop, mirrored for a
   horizontal flip) to ``image_size`` squared, in float with no rounding (:func:`resample`;
   ``fn.resize(antialias=True, dtype=FLOAT)``);
3. one affine warp for rotation / shear / zoom / shift about the centre, bilinear, 0 outside
   (:func:`warp_affine`; ``fn.warp_affine``);
4. contrast and brightness on the 0..255 scale, clamped to [0, 255] (``fn.brightness_contrast``);
5. normalization, ``(x - 255 mean) * (1 / (255 std))`` in float32 (:meth:`Normalization.apply`;
   ``fn.crop_mirror_normalize``, whose arithmetic this is);
6. random erasing (fills 0, the normalized mean; ``fn.erase``).

No step after the decode rounds to 8 bits, so on the CPU the two loaders differ only by float
rounding in steps 2 to 4 (measured: at most 0.0003 of an 8-bit step on the evaluation path, JPEG
included, 0.014 with every augmentation on; tests/data/test_loader_agreement.py), and not at all
where nothing is resampled (an image already ``image_size`` squared, as in the demo).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from PIL import Image

from phasenets.data.images import load_image

# Random erasing draws the rectangle like torchvision's RandomErasing: area fraction and aspect.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
NORMALIZATION_MODES = ("meanstd", "pixel_mean", "imagenet", "none")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_NUM_UNIFORMS = 17  # the length of one view's random vector; see sample_augment_params


@dataclass
class AugmentConfig:
    """Training augmentations; all off by default. Ranges are symmetric around "no change"."""

    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)    # area fraction of the source image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width / height of the crop
    hflip: bool = False          # p = 0.5
    rotation: float = 0.0        # degrees, uniform in [-r, r]
    shift: float = 0.0           # fraction of the side, uniform in [-s, s] on each axis
    shear: float = 0.0           # degrees, uniform in [-s, s]
    zoom: float = 0.0            # scale uniform in [1 - z, 1 + z]
    brightness: float = 0.0      # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.0        # factor uniform in [1 - c, 1 + c]
    random_erasing: float = 0.0  # probability of erasing one random rectangle

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        low, high = self.crop_ratio
        if not 0.0 < low <= high:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        limits = {"rotation": 180.0, "shift": 1.0, "shear": 89.0, "zoom": 0.99,
                  "brightness": 1.0, "contrast": 1.0, "random_erasing": 1.0}
        for name, limit in limits.items():
            if not 0.0 <= getattr(self, name) <= limit:
                raise ValueError(f"{name} must be in [0, {limit}], got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        """True when any augmentation is on."""
        return any(getattr(self, f.name) for f in fields(self) if f.name not in ("crop_scale", "crop_ratio"))

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """A named recipe: ``none``; ``light`` (flip, 10% shift and zoom); ``standard`` (seed 001's
        ImageDataGenerator: 40 degrees rotation, 20% shift, shear and zoom, flip); ``crop``
        (torchvision's ImageNet recipe: random resized crop and flip)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; valid: {', '.join(_PRESETS)}")
        return replace(_PRESETS[name])


_PRESETS = {
    "none": AugmentConfig(),
    "light": AugmentConfig(hflip=True, shift=0.1, zoom=0.1),
    "standard": AugmentConfig(hflip=True, rotation=40.0, shift=0.2, shear=0.2, zoom=0.2),
    "crop": AugmentConfig(random_resized_crop=True, hflip=True),
}
AUGMENT_PRESETS = tuple(_PRESETS)  # config.py offers these as --augment's choices


@dataclass(frozen=True)
class AugmentParams:
    """The sampled parameters of one augmented view; disabled augmentations hold their identity.

    ``crop`` and ``erase`` are ``(area_fraction, log_aspect, anchor_x, anchor_y)``, anchors in
    [0, 1); :func:`crop_box` and :func:`erase_box` turn them into pixel rectangles.
    """

    crop: tuple[float, float, float, float] | None
    hflip: bool
    angle: float                       # degrees
    shear: float                       # degrees
    translate: tuple[float, float]     # fractions of the output width and height
    zoom: float
    brightness: float
    contrast: float
    erase: tuple[float, float, float, float] | None

    @property
    def has_affine(self) -> bool:
        return bool(self.angle or self.shear or self.translate != (0.0, 0.0) or self.zoom != 1.0)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std``; ``mean`` and ``std`` are on the 0..1 scale."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    @classmethod
    def identity(cls, in_channels: int) -> Normalization:
        return cls((0.0,) * in_channels, (1.0,) * in_channels)

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """Normalize a float32 ``[C, H, W]`` tensor of pixel values on the **0..255** scale.

        Computes ``(x - 255 mean) * (1 / (255 std))`` in float32, the arithmetic of DALI's
        ``crop_mirror_normalize`` given ``255 * mean`` and ``255 * std``, so that both loaders
        give the same bits for the same pixel values.
        """
        if image.shape[0] != len(self.mean):
            raise ValueError(f"normalization has {len(self.mean)} channels, image has {image.shape[0]}")
        mean, std = self.scaled_to_8bit()
        mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        inverse_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        return (image.float() - mean) * inverse_std

    def scaled_to_8bit(self) -> tuple[list[float], list[float]]:
        """``255 * mean`` and ``255 * std``: what DALI's ``crop_mirror_normalize`` is given."""
        return [255.0 * m for m in self.mean], [255.0 * s for s in self.std]


def view_seed(seed: int, index: int, view: int) -> int:
    """The RNG seed of view ``view`` of sample ``index`` under ``seed`` (a 64-bit integer)."""
    if min(seed, index, view) < 0:
        raise ValueError(f"seed, index and view must be non-negative, got {seed}, {index}, {view}")
    return int(np.random.SeedSequence([seed, index, view]).generate_state(1, np.uint64)[0])


def sample_augment_params(cfg: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw one view's parameters: always the same 17 uniforms, in the same order."""
    u = rng.random(_NUM_UNIFORMS)

    def symmetric(value: float, amount: float) -> float:  # maps [0, 1) to [-amount, amount)
        return (2.0 * value - 1.0) * amount

    crop = None
    if cfg.random_resized_crop:
        area = cfg.crop_scale[0] + u[0] * (cfg.crop_scale[1] - cfg.crop_scale[0])
        log_low, log_high = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        crop = (float(area), float(log_low + u[1] * (log_high - log_low)), float(u[2]), float(u[3]))
    erase = None
    if u[12] < cfg.random_erasing:
        area = ERASE_SCALE[0] + u[13] * (ERASE_SCALE[1] - ERASE_SCALE[0])
        log_low, log_high = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
        erase = (float(area), float(log_low + u[14] * (log_high - log_low)), float(u[15]), float(u[16]))
    return AugmentParams(
        crop=crop,
        hflip=bool(cfg.hflip and u[4] < 0.5),
        angle=float(symmetric(u[5], cfg.rotation)),
        shear=float(symmetric(u[6], cfg.shear)),
        translate=(float(symmetric(u[7], cfg.shift)), float(symmetric(u[8], cfg.shift))),
        zoom=float(1.0 + symmetric(u[9], cfg.zoom)),
        brightness=float(1.0 + symmetric(u[10], cfg.brightness)),
        contrast=float(1.0 + symmetric(u[11], cfg.contrast)),
        erase=erase,
    )


def crop_box(params: AugmentParams, width: float, height: float) -> tuple[float, float, float, float]:
    """The random resized crop of a ``width x height`` source as ``(x0, y0, w, h)`` in pixels.

    The crop has ``area_fraction`` of the source's area and aspect ``exp(log_aspect)``; when that
    does not fit, it is shrunk (same aspect) until it does, then placed at the anchors within the
    room left. Only products, square roots and min/max, so a DALI graph can compute it too.
    """
    if params.crop is None:
        raise ValueError("these parameters have no random resized crop")
    return _place_box(*params.crop, width, height)


def erase_box(params: AugmentParams, width: int, height: int) -> tuple[int, int, int, int]:
    """The random erasing rectangle of a ``width x height`` output as integer ``(x0, y0, w, h)``."""
    if params.erase is None:
        raise ValueError("these parameters erase nothing")
    x0, y0, w, h = _place_box(*params.erase, width, height)
    w, h = max(1, round(w)), max(1, round(h))
    return min(round(x0), width - w), min(round(y0), height - h), w, h


def _place_box(area: float, log_aspect: float, anchor_x: float, anchor_y: float,
               width: float, height: float) -> tuple[float, float, float, float]:
    aspect = math.exp(log_aspect)
    w = math.sqrt(area * width * height * aspect)
    h = math.sqrt(area * width * height / aspect)
    shrink = min(1.0, width / w, height / h)
    w, h = min(width, w * shrink), min(height, h * shrink)  # min: rounding must not overshoot
    return anchor_x * (width - w), anchor_y * (height - h), w, h


def affine_matrix(params: AugmentParams, width: int, height: int) -> tuple[float, ...]:
    """The inverse (output pixel -> input pixel) 2x3 map ``(a, b, c, d, e, f)`` of the affine warp.

    Forward: ``p_out = centre + shift + zoom * R(angle) * Shear(shear) * (p_in - centre)``, in
    continuous pixel coordinates with ``centre = (width / 2, height / 2)`` and ``Shear`` the x-shear
    ``[[1, tan s], [0, 1]]``. ``x_in = a x + b y + c``, ``y_in = d x + e y + f``: what
    :func:`warp_affine` and DALI's ``warp_affine`` (``inverse_map=True``) take.
    """
    theta, phi = math.radians(params.angle), math.radians(params.shear)
    cos, sin, tan = math.cos(theta), math.sin(theta), math.tan(phi)
    # forward linear part A = zoom * R * Shear
    a11, a12 = params.zoom * cos, params.zoom * (cos * tan - sin)
    a21, a22 = params.zoom * sin, params.zoom * (sin * tan + cos)
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    cx, cy = width / 2.0, height / 2.0
    ox = cx + params.translate[0] * width  # where the input centre lands
    oy = cy + params.translate[1] * height
    return (i11, i12, cx - i11 * ox - i12 * oy, i21, i22, cy - i21 * ox - i22 * oy)


def center_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The evaluation geometry as a source box ``(x0, y0, x1, y1)``: the shorter side scaled to
    ``size`` (the other rounded to whole output pixels), then the central ``size`` squared."""
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    scale_x, scale_y = width / new_w, height / new_h
    return (left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y)


def source_box(params: AugmentParams | None, width: int, height: int,
               size: int) -> tuple[float, float, float, float]:
    """The source box ``(x0, y0, x1, y1)`` one view resamples to ``size`` squared: the random
    resized crop, else the evaluation centre crop; ``x0 > x1`` mirrors it (the horizontal flip)."""
    if params is None or params.crop is None:
        x0, y0, x1, y1 = center_crop_box(width, height, size)
    else:
        x0, y0, crop_w, crop_h = crop_box(params, width, height)
        x1, y1 = x0 + crop_w, y0 + crop_h
    if params is not None and params.hflip:
        x0, x1 = x1, x0
    return x0, y0, x1, y1


def resample(pixels: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """Resample the source box ``(x0, y0, x1, y1)`` of 8-bit ``[H, W, C]`` pixels to float32
    ``[C, size, size]``, with no rounding.

    Per axis, a triangle filter of radius ``max(1, box side / size)`` source pixels centred on each
    output pixel (linear interpolation when enlarging, antialiased when shrinking), weights
    normalized to 1, and source pixels beyond the image edge taken from the edge: the filter of
    DALI's ``fn.resize(interp_type=INTERP_LINEAR, antialias=True)``, which the DALI loader runs on
    the same box. The box is rounded to float32 first, as DALI receives it; ``x0 > x1`` mirrors it.

    PIL's float ("F") resize computes the same triangle filter in double precision, but near the
    image edge it renormalizes the weights of the pixels inside where DALI repeats the edge pixel;
    so the region is cut with a margin wider than the filter, the margin beyond the image filled
    with edge pixels, and PIL never reaches a border.
    """
    x0, y0, x1, y1 = (float(np.float32(v)) for v in box)
    mirror = x0 > x1
    x0, x1 = min(x0, x1), max(x0, x1)
    margin = math.ceil(max(1.0, (x1 - x0) / size, (y1 - y0) / size)) + 1
    left, top = math.floor(x0) - margin, math.floor(y0) - margin
    right, bottom = math.ceil(x1) + margin, math.ceil(y1) + margin
    height, width = pixels.shape[:2]
    region = pixels[max(top, 0):min(bottom, height), max(left, 0):min(right, width)]
    region = np.pad(region, ((max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width)), (0, 0)),
                    mode="edge")
    region_box = (x0 - left, y0 - top, x1 - left, y1 - top)
    planes = []
    for channel in range(region.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(region[:, :, channel])).convert("F")
        plane = plane.resize((size, size), Image.Resampling.BILINEAR, box=region_box)
        planes.append(plane.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else plane)
    return np.stack([np.asarray(plane) for plane in planes])


def warp_affine(planes: np.ndarray, matrix: Sequence[float]) -> np.ndarray:
    """Warp float32 ``[C, H, W]`` planes by the inverse map ``(a, b, c, d, e, f)`` of
    :func:`affine_matrix`: output pixel centre ``(x, y)`` samples the input at ``(a x + b y + c,
    d x + e y + f)``, bilinearly, with 0 outside the image, blended in at its edge: DALI's
    ``fn.warp_affine(inverse_map=True, fill_value=0, interp_type=INTERP_LINEAR)``.

    PIL's float affine transform interpolates the same way inside the image but repeats the edge
    pixel where DALI blends in the fill; a ring of zeros around each plane makes them agree.
    """
    _, height, width = planes.shape
    a, b, c, d, e, f = matrix
    shifted = (a, b, c + 1, d, e, f + 1)  # input coordinates inside the ring
    warped = []
    for plane in planes:
        ringed = Image.fromarray(np.pad(plane, 1))  # float32: mode F
        warped.append(np.asarray(ringed.transform((width, height), Image.Transform.AFFINE, shifted,
                                                  resample=Image.Resampling.BILINEAR, fillcolor=0)))
    return np.stack(warped)


def adjust_contrast_brightness(image: torch.Tensor, contrast: float, brightness: float) -> torch.Tensor:
    """``brightness * (127.5 + contrast * (x - 127.5))`` clamped to [0, 255], on the 0..255 scale
    (``brightness * (0.5 + contrast * (x - 0.5))`` on the 0..1 scale): DALI's
    ``brightness_contrast`` with ``contrast_center=127.5``, then a clamp."""
    return image.sub(127.5).mul_(contrast).add_(127.5).mul_(brightness).clamp_(0.0, 255.0)


class ImageTransform:
    """Decoded PIL image -> normalized ``[in_channels, image_size, image_size]`` float tensor.

    With no augmentation (``augment`` None or all off) every call takes the evaluation path;
    otherwise ``(index, view)`` select the reproducible view.
    """

    def __init__(self, *, image_size: int, in_channels: int, augment: AugmentConfig | None,
                 normalization: Normalization, seed: int = 0) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if len(normalization.mean) != in_channels:
            raise ValueError(f"normalization has {len(normalization.mean)} channels, in_channels is {in_channels}")
        self.image_size, self.in_channels, self.seed = image_size, in_channels, seed
        self.augment = augment if augment is not None and augment.enabled else None
        self.normalization = normalization

    def params(self, index: int, view: int) -> AugmentParams | None:
        """The parameters of view ``view`` of sample ``index``, or None on the evaluation path."""
        if self.augment is None:
            return None
        return sample_augment_params(self.augment, np.random.default_rng(view_seed(self.seed, index, view)))

    def __call__(self, image: Image.Image, index: int, view: int) -> torch.Tensor:
        params = self.params(index, view)
        pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)
        planes = resample(pixels, source_box(params, image.width, image.height, self.image_size), self.image_size)
        if params is not None and params.has_affine:
            planes = warp_affine(planes, affine_matrix(params, self.image_size, self.image_size))
        tensor = torch.from_numpy(planes)
        if params is not None and (params.contrast != 1.0 or params.brightness != 1.0):
            tensor = adjust_contrast_brightness(tensor, params.contrast, params.brightness)
        tensor = self.normalization.apply(tensor)
        if params is not None and params.erase is not None:
            x0, y0, w, h = erase_box(params, self.image_size, self.image_size)
            tensor[:, y0:y0 + h, x0:x0 + w] = 0.0
        return tensor


def compute_normalization(samples: Sequence, mode: str, image_size: int, in_channels: int,
                          num_workers: int | None = None) -> Normalization:
    """The normalization of ``mode``, measured on ``samples`` (the training split) when needed.

    ``meanstd``: per-channel mean and std of the training images on the evaluation path;
    ``pixel_mean``: subtract the per-channel mean, std 1 (seed 001); ``imagenet``: ImageNet's
    constants (their average for one channel); ``none``: mean 0, std 1.
    """
    if mode not in NORMALIZATION_MODES:
        raise ValueError(f"unknown normalization {mode!r}; valid: {', '.join(NORMALIZATION_MODES)}")
    if mode == "none":
        return Normalization.identity(in_channels)
    if mode == "imagenet":
        if in_channels == 1:
            return Normalization((sum(_IMAGENET_MEAN) / 3,), (sum(_IMAGENET_STD) / 3,))
        return Normalization(_IMAGENET_MEAN, _IMAGENET_STD)
    if not samples:
        raise ValueError(f"normalization {mode!r} needs training samples to measure, got none")

    def channel_sums(sample) -> np.ndarray:  # [2, C]: sum and sum of squares over pixels
        image = load_image(sample.path, in_channels)
        pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, in_channels)
        planes = resample(pixels, center_crop_box(image.width, image.height, image_size), image_size)
        pixels = planes.astype(np.float64).reshape(in_channels, image_size * image_size).T / 255.0
        return np.stack([pixels.sum(0), np.square(pixels).sum(0)])

    # PIL decodes and numpy resamples with the GIL released, so threads work in parallel.
    with ThreadPoolExecutor(max_workers=num_workers or min(8, os.cpu_count() or 1)) as pool:
        totals = sum(pool.map(channel_sums, samples))
    count = len(samples) * image_size * image_size
    mean = totals[0] / count
    if mode == "pixel_mean":
        return Normalization(tuple(mean.tolist()), (1.0,) * in_channels)
    std = np.sqrt(np.maximum(totals[1] / count - np.square(mean), 0.0))
    return Normalization(tuple(mean.tolist()), tuple(np.maximum(std, 1e-6).tolist()))
