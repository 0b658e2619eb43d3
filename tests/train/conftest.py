"""Tiny synthetic datasets and networks that train in well under a second per epoch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

CLASSES = ("ring", "stripes", "square")
IMAGE_SIZE = 16


def _pattern(name: str, rng: np.random.Generator) -> np.ndarray:
    """A noisy 16x16 grayscale picture whose class is easy to learn."""
    y, x = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    if name == "ring":
        radius = np.hypot(y - 7.5, x - 7.5)
        image = (np.abs(radius - 5) < 1.5) * 200.0
    elif name == "stripes":
        image = ((x // 2) % 2) * 200.0
    else:
        image = ((abs(y - 7.5) < 4) & (abs(x - 7.5) < 4)) * 200.0
    image = image + rng.normal(0, 25, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(root: Path, counts: dict[str, int], classes=CLASSES, seed: int = 0) -> Path:
    """``root/<split>/<class>/<n>.png`` with ``counts[split]`` images per class."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(_pattern(name, rng), mode="L").save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes of 16x16 grayscale PNGs: 12 train, 4 validation and 4 test images each."""
    return write_dataset(tmp_path_factory.mktemp("tiny-data"), {"train": 12, "validation": 4, "test": 4})


def tiny_net(num_classes: int = len(CLASSES)):
    """Three blocks (conv + batch norm, conv, classifier) over 1x16x16 inputs."""
    from phasenets.models import BlockwiseNet

    blocks = [
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 4 * 4, num_classes)),
    ]
    return BlockwiseNet.from_modules(blocks, num_classes, (1, IMAGE_SIZE, IMAGE_SIZE))


def tiny_config(data_dir: Path, output: Path, **options):
    from phasenets.config import TrainConfig

    settings = dict(data_dir=str(data_dir), output=str(output), in_channels=1, batch_size=8, max_epochs=2,
                    num_workers=0, num_threads=1, loader="torch", tensorboard=False, optimizer="adam", lr=0.01,
                    seed=0)
    settings.update(options)
    return TrainConfig(**settings)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: on a small shared machine, more only adds contention to tiny convs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phasewise_run(tiny_data, tmp_path_factory):
    """One phase-wise run of the tiny net (3 phases x 2 epochs, test after each phase), shared by
    the tests that inspect what a run leaves behind. Returns (result, initial state_dict, grad counts)."""
    import torch

    from phasenets.train import PhaseTrainer

    torch.manual_seed(0)
    model = tiny_net()
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    gradient_counts = {name: 0 for name, _ in model.named_parameters()}
    for name, parameter in model.named_parameters():
        parameter.register_hook(lambda grad, name=name: gradient_counts.__setitem__(name, gradient_counts[name] + 1))
    config = tiny_config(tiny_data, tmp_path_factory.mktemp("runs") / "phasewise", use_test=True, patience=0)
    result = PhaseTrainer(config, model=model).fit()
    return result, initial, gradient_counts
