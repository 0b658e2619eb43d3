"""Filter and feature-map pictures, and redrawing a run's curves."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from phasenets.models import build_model
from phasenets.train.checkpoint import save_checkpoint
from phasenets.viz import plot_features, plot_filters, replot_run


def _png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def picture(tmp_path):
    y, x = np.mgrid[:40, :40]
    path = tmp_path / "ring.png"
    Image.fromarray(((np.hypot(y - 20, x - 20) < 12) * 255).astype(np.uint8)).convert("RGB").save(path)
    return path


def test_rgb_filters(tmp_path):
    torch.manual_seed(0)
    model = build_model("alexnet", 4, image_size=67)
    path = plot_filters(model, tmp_path / "filters.png")
    pixels = _png(path)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500  # 64 of the 96 filters, in an 8 x 8 grid
    assert (np.abs(pixels[..., 0].astype(int) - pixels[..., 1]) > 30).any()  # colour kernels drawn in colour


def test_grayscale_filters_from_a_checkpoint(tmp_path):
    model = build_model("lenet5", 3, image_size=16)
    record = {"name": "lenet5", "num_classes": 3, "in_channels": 1, "image_size": 16, "head": model.head_kind, "options": {}}
    checkpoint = save_checkpoint(tmp_path / "final.pt", {"model_state": model.state_dict(), "model": record,
                                                         "classes": ["a", "b", "c"],
                                                         "normalization": {"mean": [0.5], "std": [0.5]}})
    pixels = _png(plot_filters(checkpoint, tmp_path / "filters.png"))
    assert (pixels[..., 0] == pixels[..., 1]).all() and pixels.std() > 10  # gray, and not blank


def test_feature_maps_of_every_block(tmp_path, picture):
    model = build_model("lenet5", 3, in_channels=3, image_size=32)
    paths = plot_features(model, picture, tmp_path / "features")
    assert [p.name for p in paths] == [f"block{k}.png" for k in range(1, 6)]
    for path in paths:
        assert _png(path).std() > 10


def test_feature_maps_of_one_block(tmp_path, picture):
    model = build_model("lenet5", 3, in_channels=3, image_size=32)
    (path,) = plot_features(model, picture, tmp_path, block=2)
    assert path == tmp_path / "block2.png"
    with pytest.raises(ValueError, match="block must be in 1..5; got 6"):
        plot_features(model, picture, tmp_path, block=6)


def test_no_filters_to_draw(tmp_path):
    from phasenets.models import BlockwiseNet

    mlp = BlockwiseNet.from_modules([torch.nn.Flatten(), torch.nn.Linear(4, 2)], 2, (1, 2, 2))
    with pytest.raises(ValueError, match="no Conv2d layer"):
        plot_filters(mlp, tmp_path / "filters.png")


def test_replot_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        replot_run(tmp_path)
    with open(tmp_path / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phase", "epoch", "split", "loss", "accuracy", "top5", "lr", "seconds"])
        for phase in (1, 2):
            for epoch in (1, 2, 3):
                for split in ("train", "validation"):
                    writer.writerow([phase, epoch, split, 1.0 / (phase + epoch), 0.3 * phase + 0.1 * epoch, "", 1, 0.1])
    (tmp_path / "summary.json").write_text(json.dumps({"phases": [{"index": 1, "name": "phase 1"},
                                                                  {"index": 2, "name": "finetune"}]}))
    paths = replot_run(tmp_path)
    assert sorted(p.name for p in paths) == ["accuracy.png", "loss.png"]
    assert all(_png(path).std() > 10 for path in paths)
