"""Pictures of what a network learned: first-block filters, per-block feature maps, a run's curves.

``plot_filters`` draws the first convolution's kernels as a grid (RGB when the kernels read three
channels, grayscale otherwise), each kernel stretched to its own full range so its pattern shows.
``plot_features`` runs one image through the network and draws, for every block (or one), the
channel maps of its output; a flat output (a fully connected block, the logits) is drawn as bars.
``replot_run`` redraws ``accuracy.png`` and ``loss.png`` of a run directory from its metrics.csv
with the trainer's own plotting function. Everything is drawn with matplotlib's Agg backend.

``model`` may be a network or a checkpoint path; with a checkpoint, the feature maps use its
normalization and the bars of the last block are labelled with its class names.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from phasenets.errors import ConfigError

if TYPE_CHECKING:
    from phasenets.train.checkpoint import Checkpoint

__all__ = ["plot_features", "plot_filters", "replot_run"]

MAX_MAPS = 64  # channels drawn per block: beyond that the tiles become too small to read
_TILE_INCHES = 1.0


def plot_filters(model: nn.Module | str | Path, out_png: str | Path, max_filters: int = MAX_MAPS) -> Path:
    """A PNG grid of the first convolution's filters (at most ``max_filters``); returns its path."""
    model, _ = _resolve(model)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ConfigError("the network has no Conv2d layer: there are no filters to draw")
    weights = conv.weight.detach().float().cpu()[:max_filters]
    if weights.shape[1] == 3:
        tiles = [_stretch(kernel).permute(1, 2, 0).numpy() for kernel in weights]  # RGB kernels
    else:  # one input channel, or many (a grouped first conv): show the mean over inputs
        tiles = [_stretch(kernel.mean(dim=0)).numpy() for kernel in weights]
    title = (f"first convolution: {conv.out_channels} filters of {conv.in_channels} x "
             f"{conv.kernel_size[0]} x {conv.kernel_size[1]}"
             + (f" (first {len(tiles)} shown)" if len(tiles) < conv.out_channels else ""))
    return _save_grid(tiles, Path(out_png), title, labels=[str(i) for i in range(len(tiles))])


def plot_features(
    model: nn.Module | str | Path,
    image_path: str | Path,
    out_dir: str | Path,
    block: int | None = None,
    normalization: Any = None,
) -> list[Path]:
    """PNGs ``block<k>.png`` of each block's output for one image (only block ``block`` if given).

    ``normalization`` (a `phasenets.data.Normalization`) defaults to the checkpoint's, or to none
    (0 and 1) for a bare network.
    """
    from phasenets.data.images import load_image
    from phasenets.data.transforms import ImageTransform, Normalization

    model, trained = _resolve(model)
    channels, size = model.input_shape[0], model.input_shape[-1]
    if normalization is None:
        normalization = Normalization(**trained.normalization) if trained else Normalization.identity(channels)
    blocks = range(1, model.num_blocks + 1) if block is None else [block]
    if block is not None and not 1 <= block <= model.num_blocks:
        raise ConfigError(f"block must be in 1..{model.num_blocks}; got {block}")
    transform = ImageTransform(image_size=size, in_channels=channels, augment=None, normalization=normalization)
    features = transform(load_image(str(image_path), channels), 0, 0)[None]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(trained.classes) if trained else None
    paths = []
    model.eval()
    with torch.no_grad():
        for k in range(1, max(blocks) + 1):
            features = model.blocks[k - 1](features)
            if k in blocks:
                labels = classes if k == model.num_blocks else None
                path = out_dir / f"block{k}.png"
                paths.append(_plot_block_output(features[0], k, path, Path(image_path).name, labels))
    return paths


def replot_run(run_dir: str | Path) -> list[Path]:
    """Redraw a run's ``accuracy.png`` and ``loss.png`` from its ``metrics.csv``; returns their paths."""
    from phasenets.train.run_log import plot_history
    from phasenets.train.rundir import RunDirectory

    run_dir = RunDirectory(run_dir)
    if not run_dir.metrics_file.is_file():
        raise FileNotFoundError(f"{run_dir.path} has no metrics.csv; is it a phasenets run directory?")
    phase_names, monitor = {}, "accuracy"
    if run_dir.summary_file.is_file():  # a finished run knows its phases' names ("finetune", "standard")
        summary = json.loads(run_dir.summary_file.read_text())
        phase_names = {phase["index"]: phase["name"] for phase in summary["phases"]}
        monitor = summary.get("config", {}).get("monitor", monitor)
    return plot_history(run_dir, phase_names, monitor)


# ----------------------------------------------------------------------------------------------


def _resolve(model: nn.Module | str | Path) -> tuple[nn.Module, Checkpoint | None]:
    if isinstance(model, nn.Module):
        return model, None
    from phasenets.train.evaluate import load_trained_model

    return load_trained_model(model)


def _stretch(tensor: torch.Tensor) -> torch.Tensor:
    """Min-max scaled to 0..1 (a constant tensor becomes mid-gray)."""
    low, high = tensor.min(), tensor.max()
    if high - low < 1e-12:
        return torch.full_like(tensor, 0.5)
    return (tensor - low) / (high - low)


def _plot_block_output(output: torch.Tensor, k: int, path: Path, image_name: str,
                       labels: list[str] | None) -> Path:
    output = output.float().cpu()
    if output.dim() == 3:
        tiles = [_stretch(channel).numpy() for channel in output[:MAX_MAPS]]
        shown = f" (first {len(tiles)} shown)" if len(tiles) < output.shape[0] else ""
        channels, height, width = output.shape
        title = f"{image_name}: block {k} output, {channels} maps of {height} x {width}{shown}"
        return _save_grid(tiles, path, title, labels=[str(i) for i in range(len(tiles))], cmap="viridis")
    return _save_bars(output.flatten().numpy(), path, f"{image_name}: block {k} output ({output.numel()} values)",
                      labels)


def _save_grid(tiles: list[np.ndarray], path: Path, title: str, labels: list[str], cmap: str = "gray") -> Path:
    plt = _pyplot()
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * _TILE_INCHES + 0.4, rows * _TILE_INCHES + 0.8),
                                squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(tiles):
            axis.imshow(tiles[index], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            axis.set_title(labels[index], fontsize=7, pad=2)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path, plt)


def _save_bars(values: np.ndarray, path: Path, title: str, labels: list[str] | None) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(min(max(4.0, 0.25 * len(values)), 16.0), 3.5))
    axis.bar(np.arange(len(values)), values, color="tab:blue")
    if labels is not None and len(labels) == len(values):
        axis.set_xticks(np.arange(len(values)), labels, rotation=45, ha="right", fontsize=8)
    else:
        from matplotlib.ticker import MaxNLocator

        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("feature")
    axis.set_title(title, fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path, plt)


def _save(figure, path: Path, plt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
