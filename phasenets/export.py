"""Export a trained network (a phasenets checkpoint) as ONNX, TorchScript or safetensors.

Every format carries what a deployment needs besides the weights: the class names, the input
normalization (mean and std per channel, on the 0..1 scale) and the input size, as JSON under the
key ``phasenets`` (ONNX ``metadata_props``, a TorchScript extra file ``phasenets.json``, the
safetensors header's metadata). The exported network maps ``images [N, C, H, W]`` (float32,
normalized) to ``logits [N, num_classes]``.

- ``onnx``: opset `ONNX_OPSET` (18), through ``torch.onnx.export``'s dynamo exporter (needs the
  ``onnx`` and ``onnxscript`` packages). The batch dimension is dynamic (named ``batch``); the
  channels and image size are fixed. This is the route to edge accelerators (TensorRT, OpenVINO,
  ONNX Runtime). The exporter's own progress messages and warnings are kept off the console.
- ``torchscript``: ``torch.jit.trace`` of the network in eval mode; any batch size works. Recent
  torch marks TorchScript deprecated (its own warnings are silenced here, since the format was
  asked for by name); ONNX is the format to prefer for new deployments.
- ``safetensors``: the state dict; `load_safetensors_model` rebuilds the network from it. By
  default only what inference runs (``include_aux_heads=True`` keeps everything, to go on
  training from the file).

What inference runs is what the checkpoint's network predicts with (``BlockwiseNet.prediction``,
chosen when its run ended): the blocks alone, or, for a network that predicts with every phase's
head, the blocks and the auxiliary heads, the output then being the log of the heads' mean class
probabilities.

Files are written under a temporary name and renamed, so a crash never leaves half a file. With
``verify=True`` the exported file is loaded back and run against the checkpoint's network on a
random batch (ONNX through onnxruntime, or onnx's reference evaluator where onnxruntime is absent).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from phasenets._atomic import write_atomically
from phasenets.errors import CheckpointError, ConfigError
from phasenets.train.checkpoint import Checkpoint, ModelRecord

__all__ = ["EXPORT_FORMATS", "ONNX_OPSET", "ExportResult", "export_checkpoint", "load_safetensors_model"]

EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
ONNX_OPSET = 18
METADATA_KEY = "phasenets"
_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
_VERIFY_BATCH = 3  # not 1 or 2, so a batch size baked into the export would show
# loggers that report the ONNX exporter's passes ("No unused functions to remove", ...) at INFO
_ONNX_EXPORT_LOGGERS = ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")
_AUX_HEADS_PREFIX = "heads."


@dataclass
class ExportResult:
    """Where the export went and, when verified, the largest output difference from the checkpoint."""

    path: Path
    format: str
    max_abs_diff: float | None = None   # None: not verified
    verified_with: str | None = None


def export_checkpoint(
    checkpoint: str | Path,
    format: str = "onnx",  # noqa: A002 - the CLI's --format
    out: str | Path | None = None,
    *,
    verify: bool = True,
    atol: float = 1e-4,
    include_aux_heads: bool = False,
) -> ExportResult:
    """Write the network of ``checkpoint`` in ``format`` to ``out`` (default: next to the checkpoint).

    With ``verify``, raise `RuntimeError` when the exported network's logits differ from the
    checkpoint's by more than ``atol`` on a random batch. ``include_aux_heads``: safetensors only,
    keep the auxiliary heads' weights (the full training state) instead of the inference network.
    """
    from phasenets.train.evaluate import load_trained_model

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; valid: {', '.join(EXPORT_FORMATS)}")
    model, trained = load_trained_model(checkpoint)
    model.eval()
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.with_name(checkpoint.stem + _SUFFIXES[format])
    out.parent.mkdir(parents=True, exist_ok=True)
    if include_aux_heads and format != "safetensors":
        raise ConfigError(f"include_aux_heads applies to safetensors exports; a {format} export holds the "
                         "inference network only")
    metadata = _metadata(model, trained)
    keep_heads = include_aux_heads or model.prediction == "heads"  # a network predicting with them needs them
    if format == "safetensors":
        metadata["aux_heads"] = keep_heads
    writer = {"onnx": _write_onnx, "torchscript": _write_torchscript,
              "safetensors": functools.partial(_write_safetensors, aux_heads=keep_heads)}[format]
    write_atomically(out, lambda path: writer(model, path, json.dumps(metadata)))
    result = ExportResult(out, format)
    if verify:
        result.max_abs_diff, result.verified_with = _verify(model, out, format)
        if result.max_abs_diff > atol:
            raise RuntimeError(f"the {format} export {out} differs from {checkpoint} by up to "
                               f"{result.max_abs_diff:.3g} (tolerance {atol:g})")
    return result


def load_safetensors_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved by ``export_checkpoint(..., "safetensors")``; returns (model, metadata).

    From an inference export of a network that predicts with its classifier alone
    (``metadata["aux_heads"]`` false) the auxiliary heads are freshly initialized: the network's
    output does not use them.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path} was not exported by phasenets (no {METADATA_KEY!r} metadata); load its tensors "
                         "with phasenets.models.pretrained.load_pretrained into a model you build")
    metadata = json.loads(header[METADATA_KEY])
    record = ModelRecord(**metadata["model"])
    model = record.build()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # batch norm fills a missing num_batches_tracked in itself, so load_state_dict never reports it
    expected_missing = [] if metadata.get("aux_heads", True) else [
        key for key in model.state_dict()
        if key.startswith(_AUX_HEADS_PREFIX) and not key.endswith("num_batches_tracked")]
    if unexpected or sorted(missing) != sorted(expected_missing):
        raise CheckpointError(f"{path} does not fit the {record.name} it describes: missing "
                         f"{sorted(set(missing) - set(expected_missing))}, unexpected {unexpected}")
    return model.eval(), metadata


# ----------------------------------------------------------------------------------------------


def _metadata(model: nn.Module, trained: Checkpoint) -> dict[str, Any]:
    return {
        "model": dataclasses.asdict(trained.model), "classes": list(trained.classes),
        "normalization": trained.normalization,
        "input_shape": list(model.input_shape), "input": "images [N, C, H, W] float32, normalized",
        "output": ("log of the mean class probabilities of every phase's head [N, num_classes]"
                   if model.prediction == "heads" else "logits [N, num_classes]"),
    }


def _example(model: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(_VERIFY_BATCH, *model.input_shape, generator=generator)


def _write_onnx(model: nn.Module, path: Path, metadata: str) -> None:
    import onnx

    with _exporter_output_captured():
        program = torch.onnx.export(
            model, (_example(model),), input_names=["images"], output_names=["logits"], opset_version=ONNX_OPSET,
            dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False, report=False,
        )
    proto = program.model_proto
    proto.metadata_props.add(key=METADATA_KEY, value=metadata)
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _exporter_output_captured():
    """Keep the exporter's chatter (its loggers, warnings and prints) off the console, unless it fails.

    ``verbose=False`` does not cover it: the exporter's passes log at INFO, which the CLI shows.
    """
    captured = io.StringIO()
    loggers = [logging.getLogger(name) for name in _ONNX_EXPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())  # what the exporter said helps explain its failure
        raise
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _Blocks(nn.Module):
    """What a network predicting with its own classifier runs: the blocks one after another, under
    the same parameter names (``blocks.<k>. ...``) as in the checkpoint, without the auxiliary heads."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _write_torchscript(model: nn.Module, path: Path, metadata: str) -> None:
    with torch.no_grad(), _torchscript_deprecation_silenced():
        inference = model if model.prediction == "heads" else _Blocks(model.blocks)
        traced = torch.jit.trace(inference, _example(model))
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": metadata})


@contextlib.contextmanager
def _torchscript_deprecation_silenced():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        yield


def _write_safetensors(model: nn.Module, path: Path, metadata: str, aux_heads: bool) -> None:
    from safetensors.torch import save_file

    state = {key: value.contiguous() for key, value in model.state_dict().items()
             if aux_heads or not key.startswith(_AUX_HEADS_PREFIX)}
    save_file(state, str(path), metadata={METADATA_KEY: metadata})


@torch.no_grad()
def _verify(model: nn.Module, path: Path, format: str) -> tuple[float, str]:  # noqa: A002
    images = _example(model)
    expected = model(images)
    if format == "torchscript":
        with _torchscript_deprecation_silenced():
            actual, runner = torch.jit.load(str(path))(images), "torch.jit.load"
    elif format == "safetensors":
        actual, runner = load_safetensors_model(path)[0](images), "load_safetensors_model"
    else:
        actual, runner = _run_onnx(path, images)
    return (actual - expected).abs().max().item(), runner


def _run_onnx(path: Path, images: torch.Tensor) -> tuple[torch.Tensor, str]:
    try:
        import onnxruntime
    except ImportError:  # the reference evaluator is slow but needs nothing beyond onnx
        from onnx.reference import ReferenceEvaluator

        (logits,) = ReferenceEvaluator(str(path)).run(None, {"images": images.numpy()})
        return torch.from_numpy(logits), "onnx.reference"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})
    return torch.from_numpy(logits), "onnxruntime"
