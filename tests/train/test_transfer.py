"""Task chaining: copying blocks of an earlier run into a new network, and per-block learning rates."""
from __future__ import annotations

import pytest
import torch

from fixtures.pretrained_reference import load_fixture, pseudo_random_state
from phasenets.models import build_model
from phasenets.models.pretrained import PartialLoadError
from phasenets.train.checkpoint import load_checkpoint
from phasenets.train.plan import block_lr_multipliers
from phasenets.train.rundir import resolve_checkpoint
from phasenets.train.transfer import init_from, parse_blocks

from conftest import tiny_config


@pytest.fixture(scope="module")
def lenet_run(tiny_data, tmp_path_factory):
    """A LeNet-5 trained end to end on the tiny 3-class data (16 px)."""
    from phasenets.train import PhaseTrainer

    config = tiny_config(tiny_data, tmp_path_factory.mktemp("transfer") / "run", model="lenet5", image_size=16,
                         schedule="standard", max_epochs=1)
    return PhaseTrainer(config).fit().run_dir


def _block_state(model, k):
    return {key: value for key, value in model.state_dict().items() if key.startswith(f"blocks.{k - 1}.")}


def test_reuse_and_freeze_blocks_of_a_run(lenet_run):
    trained = load_checkpoint(lenet_run / "checkpoints" / "final.pt")["model_state"]
    torch.manual_seed(5)
    model = build_model("lenet5", 2, image_size=16)
    fresh = {key: value.clone() for key, value in model.state_dict().items()}
    report = init_from(model, lenet_run, reuse_blocks="1-3", freeze_reused=True)

    assert report.source == lenet_run / "checkpoints" / "final.pt"
    assert report.blocks == report.frozen == [1, 2, 3]
    assert report.source_classes == ["ring", "square", "stripes"]
    assert report.source_normalization == load_checkpoint(report.source)["normalization"]
    for k in (1, 2, 3):
        assert all(torch.equal(value, trained[key]) for key, value in _block_state(model, k).items())
        assert model.is_frozen(k)
    heads = [key for key in fresh if key.startswith("heads.")]
    for key in [*_block_state(model, 4), *_block_state(model, 5), *heads]:
        assert torch.equal(model.state_dict()[key], fresh[key])  # not reused, heads never copied
    assert not model.is_frozen(4)
    assert "initialized blocks 1, 2, 3 from" in report.format() and "lenet5, 3 classes" in report.format()


def test_reuse_every_block_with_other_classes(lenet_run):
    model = build_model("lenet5", 2, image_size=16)
    report = init_from(model, lenet_run / "checkpoints" / "final.pt")
    assert report.blocks == [1, 2, 3, 4, 5] and not report.frozen
    assert report.weights.skipped == ["blocks.4.weight", "blocks.4.bias"]  # 3 classes there, 2 here
    assert not report.weights.mismatched and not report.weights.missing


def test_reuse_from_a_weights_file(lenet_run, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    trained = load_checkpoint(resolve_checkpoint(lenet_run))["model_state"]
    path = tmp_path / "lenet.safetensors"
    safetensors.save_file({key: value.contiguous() for key, value in trained.items()}, str(path))
    model = build_model("lenet5", 3, image_size=16)
    report = init_from(model, path, reuse_blocks=[2], freeze_reused=True)
    assert report.frozen == [2] and report.source_model is None and report.source_normalization is None
    assert torch.equal(model.blocks[1][0].weight, trained["blocks.1.0.weight"])


@pytest.fixture(scope="module")
def torchvision_resnet18_file(tmp_path_factory):
    """A torchvision resnet18 state dict for 7 classes (the pretrained-weights fixture's) in a .pth file."""
    case = next(case for case in load_fixture()["cases"]
                if (case["library"], case["architecture"]) == ("torchvision", "resnet18"))
    path = tmp_path_factory.mktemp("torchvision") / "resnet18.pth"
    torch.save(pseudo_random_state(case["tensors"]), path)
    return path


def test_a_block_whose_classifier_was_skipped_is_not_frozen(torchvision_resnet18_file):
    model = build_model("resnet18", 3, image_size=32)  # 3 classes: the file's fc (7 classes) is skipped
    report = init_from(model, torchvision_resnet18_file, freeze_reused=True)
    assert report.weights.skipped == ["blocks.4.fc.weight", "blocks.4.fc.bias"]
    assert report.frozen == [1, 2, 3, 4] and not model.is_frozen(5)
    assert "block 5 is not frozen: its classifier was left as initialized for this task's classes and must train" \
        in report.format()


def test_imagenet_weights_suggest_imagenet_normalization(torchvision_resnet18_file, lenet_run):
    report = init_from(build_model("resnet18", 7, image_size=32), torchvision_resnet18_file)
    assert "torchvision weights are trained on ImageNet images" in report.format()
    assert "--normalization imagenet" in report.format()
    own = init_from(build_model("lenet5", 3, image_size=16), lenet_run)
    assert not any("ImageNet" in note for note in own.notes)  # a phasenets run carries its own statistics


def test_a_partly_loaded_block_trains(torchvision_resnet18_file):
    """The file's conv1 reads 3 channels, this network's 1: refused, or loaded without it, and block 1 trains."""
    model = build_model("resnet18", 7, in_channels=1, image_size=32)
    conv1 = model.blocks[0].conv1.weight.clone()
    refusal = r"(?s)1 of 122 tensors did not load \(block 1: 1 of 6\).*the 121 that fit"
    with pytest.raises(PartialLoadError, match=refusal):
        init_from(model, torchvision_resnet18_file, freeze_reused=True)
    assert not any(model.is_frozen(k) for k in range(1, 6))
    report = init_from(model, torchvision_resnet18_file, freeze_reused=True, allow_partial=True)
    assert report.frozen == [2, 3, 4, 5] and not model.is_frozen(1)
    assert torch.equal(model.blocks[0].conv1.weight, conv1)
    assert "block 1 is not frozen: 1 of its tensors (blocks.0.conv1.weight) did not load and must train" \
        in report.format()


def test_nothing_to_reuse_in_the_chosen_blocks(lenet_run):
    model = build_model("resnet_cifar", 3, in_channels=1, image_size=16)
    with pytest.raises(ValueError, match="none of the .* phasenets weights fit resnet_cifar"):
        init_from(model, lenet_run, reuse_blocks="1")


@pytest.mark.parametrize("spec,expected", [
    ("1-3", [1, 2, 3]), ("1,2,4", [1, 2, 4]), ("1-2, 4", [1, 2, 4]), ("3,1,1", [1, 3]), ("all", [1, 2, 3, 4, 5]),
    (None, [1, 2, 3, 4, 5]), (2, [2]), ([5, 1], [1, 5]),
])
def test_parse_blocks(spec, expected):
    assert parse_blocks(spec, 5) == expected


@pytest.mark.parametrize("spec,message", [
    ("1-x", "must look like 1-3, 1,2,4 or all"), ("3-1", "runs backwards; write 1-3"),
    ("0-2", r"blocks 1..5; \[0\] are not among them"), ([6], r"\[6\] are not among them"), ([], "blocks 1..5"),
])
def test_parse_blocks_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_blocks(spec, 5)


def test_block_lr_multipliers():
    assert block_lr_multipliers(3) == [1.0, 1.0, 1.0]
    assert block_lr_multipliers(3, "0.4,0.65,1") == [0.4, 0.65, 1.0]  # ModNet's layer1/2/3 rates
    assert block_lr_multipliers(2, [0, 1]) == [0.0, 1.0]
    assert block_lr_multipliers(4, layer_decay=0.5) == [0.125, 0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="2 block learning-rate factors for 3 blocks"):
        block_lr_multipliers(3, "0.5,1")
    with pytest.raises(ValueError, match="must be numbers like 0.4,0.65,1"):
        block_lr_multipliers(3, "0.5,fast,1")
    with pytest.raises(ValueError, match=">= 0"):
        block_lr_multipliers(2, "-1,1")
    with pytest.raises(ValueError, match="not both"):
        block_lr_multipliers(2, "1,1", layer_decay=0.5)
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        block_lr_multipliers(2, layer_decay=1.5)
