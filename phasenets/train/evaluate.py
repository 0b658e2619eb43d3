"""``evaluate_checkpoint``: a trained network from a checkpoint, measured on one split of a dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from phasenets.train.checkpoint import CheckpointError, load_checkpoint
from phasenets.train.metrics import MetricTracker, per_class_accuracy

__all__ = ["evaluate_checkpoint", "load_trained_model", "score_samples"]


def load_trained_model(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the registered architecture a checkpoint was trained with and load its weights.

    ``checkpoint``: a checkpoint file, or a run directory (its final network). Returns the model
    (eval mode, on CPU) and the checkpoint payload (classes, normalization, config).
    """
    from phasenets.models import build_model

    if Path(checkpoint).is_dir():
        checkpoint = Path(checkpoint) / "checkpoints" / "final.pt"
    payload = load_checkpoint(checkpoint)
    record = payload["model"]
    if record["name"] == "custom":
        raise CheckpointError(f"{checkpoint} holds a custom network (BlockwiseNet.from_modules): build it in "
                              "Python and load payload['model_state'] into it")
    model = build_model(record["name"], record["num_classes"], in_channels=record["in_channels"],
                        image_size=record["image_size"], head=record["head"], **record["options"])
    model.load_state_dict(payload["model_state"])
    return model.eval(), payload


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "test", *, batch_size: int = 64,
                        loader: str = "auto", num_workers: int = 2, device: str = "cpu") -> dict[str, Any]:
    """Loss, top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint on ``split``.

    The images go through the checkpoint's own normalization; the dataset's class folders must
    be the ones the network was trained on.
    """
    from phasenets.data import DatasetError
    from phasenets.train.curriculum import task_splits

    model, payload = load_trained_model(checkpoint)
    data = task_splits(data_dir, payload.get("task"))  # the classes the run trained on (its hierarchy)
    if data.classes != list(payload["classes"]):
        raise DatasetError(f"{data_dir} has classes {data.classes}; {checkpoint} was trained on {payload['classes']}")
    samples = data.split(split)
    if not samples:
        raise DatasetError(f"{data_dir} has no {split} split")
    tracker = score_samples(model, samples, payload, batch_size=batch_size, loader=loader,
                            num_workers=num_workers, device=device)
    metrics = tracker.compute()
    confusion = tracker.confusion.cpu()
    return {
        "checkpoint": str(checkpoint), "split": split, **metrics.as_dict(),
        "per_class_accuracy": dict(zip(data.classes, per_class_accuracy(confusion))),
        "confusion_matrix": confusion.tolist(),
    }


@torch.no_grad()
def score_samples(model: nn.Module, samples, payload: dict[str, Any], *, batch_size: int, loader: str,
                  num_workers: int, device: str) -> MetricTracker:
    """``model`` (put in eval mode on ``device``) run over ``samples``, read through ``payload``'s
    normalization; returns the filled tracker (loss, top-1/top-5 and the confusion matrix)."""
    from phasenets.data import Normalization, build_loader

    model.to(device).eval()
    batches = build_loader(
        samples, kind=loader, image_size=model.input_shape[-1], in_channels=model.input_shape[0], augment=None,
        normalization=Normalization(**payload["normalization"]), batch_size=batch_size, shuffle=False, seed=0,
        num_workers=num_workers,
    )
    tracker = MetricTracker(model.num_classes, torch.device(device))
    criterion = nn.CrossEntropyLoss()
    for images, labels, _ in batches:
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        tracker.update(logits, labels, criterion(logits, labels))
    return tracker
