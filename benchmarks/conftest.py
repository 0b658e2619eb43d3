"""Shared benchmark fixtures: synthetic datasets made once per session."""
import numpy as np
import pytest
from PIL import Image

from phasenets.data.layout import Sample


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An RGB image that compresses like a photo: smooth random waves and ramps plus sensor noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase)
        ramp = rng.uniform(-1, 1) * x / width + rng.uniform(-1, 1) * y / height
        planes.append(128 + 70 * wave + 50 * ramp)
    image = np.stack(planes, axis=-1) + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def jpeg_samples(tmp_path_factory):
    """Factory ``make(count, width=320, height=240, num_classes=4, seed=0) -> list[Sample]`` of
    photo-like JPEGs (quality 90) in class folders; each distinct request is written once."""
    made = {}

    def make(count: int, width: int = 320, height: int = 240, num_classes: int = 4, seed: int = 0):
        key = (count, width, height, num_classes, seed)
        if key not in made:
            root = tmp_path_factory.mktemp(f"jpegs_{count}_{width}x{height}")
            rng = np.random.default_rng(seed)
            samples = []
            for index in range(count):
                label = index % num_classes
                folder = root / f"class_{label}"
                folder.mkdir(exist_ok=True)
                path = folder / f"{index:05d}.jpg"
                Image.fromarray(photo_like(rng, width, height)).save(path, quality=90)
                samples.append(Sample(str(path), label))
            made[key] = samples
        return made[key]

    return make
