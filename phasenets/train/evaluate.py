"""``evaluate_checkpoint``: a trained network from a checkpoint, measured on one split of a dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from phasenets.errors import CheckpointError
from phasenets.train.checkpoint import Checkpoint
from phasenets.train.metrics import MetricTracker, per_class_accuracy
from phasenets.train.rundir import resolve_checkpoint

__all__ = ["evaluate_checkpoint", "load_trained_model", "score_samples"]


def load_trained_model(checkpoint: str | Path) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the registered architecture a checkpoint was trained with and load its weights.

    ``checkpoint``: a checkpoint file, or a run directory (the network it trained: ``final.pt``,
    else its latest phase's best). Returns the model (eval mode, on CPU) and the
    :class:`~phasenets.train.checkpoint.Checkpoint` (classes, normalization, config, ...).
    """
    path = resolve_checkpoint(checkpoint)
    loaded = Checkpoint.load(path)
    try:
        model = loaded.model.build()
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    model.load_state_dict(loaded.model_state)
    return model.eval(), loaded


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "test", *, batch_size: int = 64,
                        loader: str = "auto", num_workers: int = 2, device: str = "cpu") -> dict[str, Any]:
    """Loss, top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint on ``split``,
    predicting as the checkpoint's network does (``prediction``: its classifier or every phase's head).

    The images go through the checkpoint's own normalization; the dataset's class folders must
    be the ones the network was trained on.
    """
    from phasenets.data import DatasetError
    from phasenets.train.curriculum import task_splits

    model, trained = load_trained_model(checkpoint)
    data = task_splits(data_dir, trained.task)  # the classes the run trained on (its hierarchy)
    if data.classes != list(trained.classes):
        raise DatasetError(f"{data_dir} has classes {data.classes}; {checkpoint} was trained on {trained.classes}")
    samples = data.split(split)
    if not samples:
        raise DatasetError(f"{data_dir} has no {split} split")
    tracker = score_samples(model, samples, trained.normalization, batch_size=batch_size, loader=loader,
                            num_workers=num_workers, device=device)
    metrics = tracker.compute()
    confusion = tracker.confusion.cpu()
    return {
        "checkpoint": str(checkpoint), "split": split, "prediction": model.prediction, **metrics.as_dict(),
        "per_class_accuracy": dict(zip(data.classes, per_class_accuracy(confusion))),
        "confusion_matrix": confusion.tolist(),
    }


@torch.no_grad()
def score_samples(model: nn.Module, samples, normalization: dict[str, list[float]], *, batch_size: int, loader: str,
                  num_workers: int, device: str) -> MetricTracker:
    """``model`` (put in eval mode on ``device``) run over ``samples``, read through
    ``normalization`` (``{"mean": [...], "std": [...]}``, a checkpoint's); returns the filled
    tracker (loss, top-1/top-5 and the confusion matrix)."""
    from phasenets.data import Normalization, build_loader

    model.to(device).eval()
    batches = build_loader(
        samples, kind=loader, image_size=model.input_shape[-1], in_channels=model.input_shape[0], augment=None,
        normalization=Normalization(**normalization), batch_size=batch_size, shuffle=False, seed=0,
        num_workers=num_workers,
    )
    tracker = MetricTracker(model.num_classes, torch.device(device))
    criterion = nn.CrossEntropyLoss()
    for images, labels, _ in batches:
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        tracker.update(logits, labels, criterion(logits, labels))
    return tracker
