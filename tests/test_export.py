"""Export round trips: ONNX, TorchScript and safetensors give the checkpoint's outputs."""
from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from phasenets.export import ONNX_OPSET, export_checkpoint, load_safetensors_model
from phasenets.models import build_model
from phasenets.train.checkpoint import save_checkpoint
from phasenets.train.evaluate import load_trained_model

CLASSES = ["cat", "dog", "fox"]


def write_checkpoint(path, name="lenet5", prediction="network", **sizes):
    """A checkpoint as the trainer writes it (model record, weights, classes, normalization)."""
    torch.manual_seed(0)
    model = build_model(name, len(CLASSES), **sizes)
    with torch.no_grad():  # batch-norm statistics that are not the identity, so eval mode matters
        for key, value in model.state_dict().items():
            if key.endswith("running_mean"):
                value.normal_(0, 0.5)
            elif key.endswith("running_var"):
                value.uniform_(0.5, 2.0)
    record = {"name": name, "num_classes": len(CLASSES), "in_channels": model.input_shape[0],
              "image_size": model.input_shape[-1], "head": model.head_kind, "options": {}, "prediction": prediction}
    normalization = {"mean": [0.5] * model.input_shape[0], "std": [0.25] * model.input_shape[0]}
    return save_checkpoint(path, {"model_state": model.state_dict(), "model": record, "classes": CLASSES,
                                  "normalization": normalization})


@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("export") / "final.pt", image_size=16)


def _reference(checkpoint, batch):
    model, _ = load_trained_model(checkpoint)
    images = torch.randn(batch, *model.input_shape)
    with torch.no_grad():
        return images, model(images)


def test_onnx_round_trip(lenet_checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    result = export_checkpoint(lenet_checkpoint, "onnx", tmp_path / "model.onnx")
    assert result.verified_with == "onnxruntime" and result.max_abs_diff < 1e-4
    proto = onnx.load(str(result.path))
    assert proto.opset_import[0].version == ONNX_OPSET
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}["phasenets"])
    assert metadata["classes"] == CLASSES and metadata["normalization"]["std"] == [0.25]
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    images, expected = _reference(lenet_checkpoint, batch=7)  # another batch size than the export's
    (logits,) = session.run(None, {"images": images.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left


def test_onnx_export_keeps_the_exporter_quiet(lenet_checkpoint, tmp_path, caplog, capfd):
    """The CLI logs at INFO: the exporter's passes ("No unused functions to remove", ...) must not show."""
    pytest.importorskip("onnxruntime")
    levels = {name: logging.getLogger(name).level for name in ("onnx_ir", "onnxscript", "torch.onnx")}
    caplog.set_level(logging.INFO)
    export_checkpoint(lenet_checkpoint, "onnx", tmp_path / "model.onnx")
    assert [record.getMessage() for record in caplog.records if record.name.startswith(("onnx", "torch"))] == []
    out, err = capfd.readouterr()
    assert "No unused functions" not in out + err and "torchvision is not installed" not in out + err
    assert {name: logging.getLogger(name).level for name in levels} == levels  # the loggers are as they were


def test_onnx_without_onnxruntime(lenet_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    result = export_checkpoint(lenet_checkpoint, "onnx", tmp_path / "model.onnx")
    assert result.verified_with == "onnx.reference" and result.max_abs_diff < 1e-4


def test_onnx_batch_norm_network(tmp_path):
    pytest.importorskip("onnxruntime")
    checkpoint = write_checkpoint(tmp_path / "resnet.pt", "resnet_cifar", image_size=16)
    result = export_checkpoint(checkpoint, "onnx")
    assert result.path == tmp_path / "resnet.onnx" and result.max_abs_diff < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_round_trip(lenet_checkpoint, tmp_path):
    result = export_checkpoint(lenet_checkpoint, "torchscript", tmp_path / "model.pt")
    assert result.verified_with == "torch.jit.load"
    extra = {"phasenets.json": ""}
    loaded = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra["phasenets.json"])["model"]["name"] == "lenet5"
    images, expected = _reference(lenet_checkpoint, batch=5)
    torch.testing.assert_close(loaded(images), expected)
    names = [name for name, _ in loaded.named_parameters()]
    assert names and all(name.startswith("blocks.") for name in names)  # no auxiliary heads


def test_safetensors_round_trip(lenet_checkpoint):
    safetensors = pytest.importorskip("safetensors.torch")
    result = export_checkpoint(lenet_checkpoint, "safetensors")
    assert result.path == lenet_checkpoint.with_name("final.safetensors")
    assert all(key.startswith("blocks.") for key in safetensors.load_file(result.path))  # inference only
    model, metadata = load_safetensors_model(result.path)
    assert metadata["classes"] == CLASSES and metadata["input_shape"] == [1, 16, 16] and not metadata["aux_heads"]
    images, expected = _reference(lenet_checkpoint, batch=4)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected)


def test_safetensors_with_the_auxiliary_heads(lenet_checkpoint, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    result = export_checkpoint(lenet_checkpoint, "safetensors", tmp_path / "full.safetensors", include_aux_heads=True)
    trained, _ = load_trained_model(lenet_checkpoint)
    assert safetensors.load_file(result.path).keys() == trained.state_dict().keys()
    model, metadata = load_safetensors_model(result.path)
    assert metadata["aux_heads"]
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="include_aux_heads applies to safetensors exports"):
        export_checkpoint(lenet_checkpoint, "onnx", tmp_path / "model.onnx", include_aux_heads=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_network_predicting_with_its_heads_exports_them(tmp_path):
    # every format then runs the heads: the output is the log of their mean class probabilities
    checkpoint = write_checkpoint(tmp_path / "final.pt", "resnet_cifar", prediction="heads", image_size=16)
    model, _ = load_trained_model(checkpoint)
    assert model.prediction == "heads"
    images, expected = _reference(checkpoint, batch=5)
    model.prediction = "network"
    with torch.no_grad():
        assert not torch.allclose(model(images), expected)  # the heads change the output
    formats = ["torchscript"] + [name for name, needs in (("onnx", "onnxruntime"), ("safetensors", "safetensors"))
                                 if _importable(needs)]
    for format in formats:
        result = export_checkpoint(checkpoint, format, tmp_path / f"model-{format}")
        assert result.max_abs_diff < 1e-4, format
    if "safetensors" in formats:
        exported, metadata = load_safetensors_model(tmp_path / "model-safetensors")
        assert metadata["aux_heads"] and metadata["output"].startswith("log of the mean class probabilities")
        with torch.no_grad():
            torch.testing.assert_close(exported(images), expected)


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_bad_requests(lenet_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid: onnx, torchscript, safetensors"):
        export_checkpoint(lenet_checkpoint, "tflite")
    safetensors = pytest.importorskip("safetensors.torch")
    foreign = tmp_path / "foreign.safetensors"
    safetensors.save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="was not exported by phasenets"):
        load_safetensors_model(foreign)
