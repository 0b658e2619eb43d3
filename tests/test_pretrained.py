"""Loading torchvision, timm and phasenets weights into the model zoo.

The state dicts here are written out from torchvision's and timm's own layer names and shapes,
independently of the mapping under test. Every mapped architecture is checked to compute the same
function as the real library's network on the logits recorded in tests/fixtures (see
scripts/record_pretrained_reference.py); where torchvision or timm import, against them directly too.
"""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch

from fixtures.pretrained_reference import checksum, load_fixture, pseudo_random_state, reference_input
from phasenets.models import build_model
from phasenets.models.pretrained import (
    LoadReport,
    PartialLoadError,
    PretrainedError,
    classifier_keys,
    detect_source,
    load_pretrained,
    read_weights,
)

VGG16_FEATURES = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _conv(state, name, out_channels, in_channels, kernel, bias=False):
    state[f"{name}.weight"] = torch.randn(out_channels, in_channels, kernel, kernel)
    if bias:
        state[f"{name}.bias"] = torch.randn(out_channels)


def _norm(state, name, channels):
    state[f"{name}.weight"] = torch.rand(channels) + 0.5
    state[f"{name}.bias"] = torch.randn(channels)
    state[f"{name}.running_mean"] = torch.randn(channels)
    state[f"{name}.running_var"] = torch.rand(channels) + 0.5
    state[f"{name}.num_batches_tracked"] = torch.tensor(7)


def torchvision_resnet18_state(num_classes: int) -> dict[str, torch.Tensor]:
    """torchvision.models.resnet18().state_dict(), names and shapes, random values."""
    state: dict[str, torch.Tensor] = {}
    _conv(state, "conv1", 64, 3, 7)
    _norm(state, "bn1", 64)
    in_channels = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for unit in range(2):
            prefix = f"layer{layer}.{unit}"
            _conv(state, f"{prefix}.conv1", width, in_channels, 3)
            _norm(state, f"{prefix}.bn1", width)
            _conv(state, f"{prefix}.conv2", width, width, 3)
            _norm(state, f"{prefix}.bn2", width)
            if unit == 0 and layer > 1:
                _conv(state, f"{prefix}.downsample.0", width, in_channels, 1)
                _norm(state, f"{prefix}.downsample.1", width)
            in_channels = width
    state["fc.weight"] = torch.randn(num_classes, 512)
    state["fc.bias"] = torch.randn(num_classes)
    return state


def vgg16_state(source: str, num_classes: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """torchvision's or timm's vgg16 state dict (features.N, then classifier.N or pre_logits/head)."""
    state: dict[str, torch.Tensor] = {}
    index, in_channels = 0, 3
    with torch.device(device):
        for item in VGG16_FEATURES:
            if item == "M":
                index += 1
                continue
            _conv(state, f"features.{index}", item, in_channels, 3, bias=True)
            index, in_channels = index + 2, item
        if source == "torchvision":
            shapes = {"classifier.0": (4096, 512 * 7 * 7), "classifier.3": (4096, 4096),
                      "classifier.6": (num_classes, 4096)}
        else:  # timm keeps the first two fully connected layers as convolutions
            shapes = {"pre_logits.fc1": (4096, 512, 7, 7), "pre_logits.fc2": (4096, 4096, 1, 1),
                      "head.fc": (num_classes, 4096)}
        for name, shape in shapes.items():
            state[f"{name}.weight"] = torch.randn(shape)
            state[f"{name}.bias"] = torch.randn(shape[0])
    return state


@pytest.fixture(scope="module")
def resnet18_weights():
    return torchvision_resnet18_state(num_classes=10)


def test_torchvision_resnet18_loads_completely(resnet18_weights):
    assert len(resnet18_weights) == 122  # torchvision's resnet18 has 122 state-dict entries
    model = build_model("resnet18", 10, image_size=32)
    report = load_pretrained(model, resnet18_weights, strict=True)
    assert report.source == "torchvision" and report.complete
    assert len(report.loaded) == len([k for k in model.state_dict() if k.startswith("blocks.")])
    own = model.state_dict()
    assert torch.equal(own["blocks.0.conv1.weight"], resnet18_weights["conv1.weight"])
    assert torch.equal(own["blocks.2.layer2.0.downsample.1.running_var"],
                       resnet18_weights["layer2.0.downsample.1.running_var"])
    assert torch.equal(own["blocks.4.fc.bias"], resnet18_weights["fc.bias"])


def test_classifier_skipped_when_classes_differ(resnet18_weights):
    model = build_model("resnet18", 3, image_size=32)
    before = model.state_dict()["blocks.4.fc.weight"].clone()
    report = load_pretrained(model, resnet18_weights, strict=True)
    assert report.skipped == ["blocks.4.fc.weight", "blocks.4.fc.bias"] == classifier_keys(model)
    assert torch.equal(model.state_dict()["blocks.4.fc.weight"], before)
    with pytest.raises(PretrainedError, match="(?s)strict loading failed.*blocks.4.fc.weight"):
        load_pretrained(model, resnet18_weights, skip_classifier=False, strict=True)


def test_only_the_chosen_blocks_are_filled(resnet18_weights):
    model = build_model("resnet18", 10, image_size=32)
    layer3_before = model.state_dict()["blocks.3.layer3.0.conv1.weight"].clone()
    report = load_pretrained(model, resnet18_weights, blocks=[1, 2])
    assert {key.split(".")[1] for key in report.loaded} == {"0", "1"}
    assert not report.missing and not report.unexpected
    assert torch.equal(model.state_dict()["blocks.3.layer3.0.conv1.weight"], layer3_before)
    with pytest.raises(PretrainedError, match="block 6 does not exist: resnet18 has blocks 1..5"):
        load_pretrained(model, resnet18_weights, blocks=[6])


@pytest.mark.parametrize("suffix,wrapping", [
    (".pt", "plain"), (".pth", "state_dict"), (".pt", "model"), (".pt", "ddp"),
    (".safetensors", "plain"), (".safetensors", "ddp"),
])
def test_weight_files(tmp_path, resnet18_weights, wrapping, suffix):
    if suffix == ".safetensors":
        safetensors = pytest.importorskip("safetensors.torch")
    state = {f"module.{k}" if wrapping == "ddp" else k: v for k, v in resnet18_weights.items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.save_file(state, str(path))
    else:
        torch.save({wrapping: state, "epoch": 3} if wrapping in ("state_dict", "model") else state, path)
    assert read_weights(path).keys() == resnet18_weights.keys()
    report = load_pretrained(build_model("resnet18", 10, image_size=32), path, strict=True)
    assert report.complete


def test_unreadable_files(tmp_path):
    with pytest.raises(PretrainedError, match="weights file not found"):
        read_weights(tmp_path / "absent.pt")
    pickled = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(PretrainedError, match="(?s)weights_only=True.*state_dict.*Unsupported global"):
        read_weights(pickled)
    no_tensors = tmp_path / "config.pt"
    torch.save({"lr": 0.1}, no_tensors)
    with pytest.raises(PretrainedError, match="holds no state dict"):
        read_weights(no_tensors)


def test_nothing_matching_is_an_error(resnet18_weights):
    with pytest.raises(PretrainedError, match="cannot tell where a state dict"):
        load_pretrained(build_model("lenet5", 10), {"encoder.weight": torch.zeros(2)})
    with pytest.raises(PretrainedError, match="no torchvision name mapping for model 'lenet5'"):
        load_pretrained(build_model("lenet5", 10), resnet18_weights)
    lenet = build_model("lenet5", 10).state_dict()
    with pytest.raises(PretrainedError, match=f"none of the {len(lenet)} phasenets weights fit resnet18"):
        load_pretrained(build_model("resnet18", 10, image_size=32), lenet)


def test_wrapped_state_dict_in_memory(resnet18_weights):
    wrapped = {f"module.{key}": value for key, value in resnet18_weights.items()}
    report = load_pretrained(build_model("resnet18", 10, image_size=32), wrapped, strict=True)
    assert report.source == "torchvision"


def test_phasenets_state_dict_with_heads():
    source = build_model("lenet5", 10)
    target = build_model("lenet5", 10)
    report = load_pretrained(target, source.state_dict(), blocks=[1], heads=True, strict=True)
    assert report.source == "phasenets"
    assert {key.split(".")[0] for key in report.loaded} == {"blocks", "heads"}
    assert torch.equal(target.heads[0][-1].weight, source.heads[0][-1].weight)
    assert not torch.equal(target.blocks[1][0].weight, source.blocks[1][0].weight)


def test_torchvision_vgg16_at_a_small_size():
    """At 32 px the first fully connected layer reads 512 features, not 512 x 7 x 7: refused, or reported."""
    weights = vgg16_state("torchvision", num_classes=10)
    model = build_model("vgg16", 10, image_size=32)
    before = model.state_dict()["blocks.0.0.weight"].clone()
    with pytest.raises(PartialLoadError, match=r"(?s)2 of 32 tensors did not load \(block 5: 2 of 12\).*"
                                               r"another image size.*load the 30 that fit.*allow_partial=True"):
        load_pretrained(model, weights)
    assert torch.equal(model.state_dict()["blocks.0.0.weight"], before)  # a refused load changes nothing
    report = load_pretrained(model, weights, allow_partial=True)
    # the layer's bias fits, but is kept with its weight
    assert [(m[1], m[3]) for m in report.mismatched] == [("classifier.0.weight", (4096, 25088)),
                                                         ("classifier.0.bias", (4096,))]
    assert len(report.loaded) == 26 + 4 and not report.missing and not report.unexpected
    assert torch.equal(model.blocks[4][4].weight, weights["features.28.weight"])
    assert torch.equal(model.blocks[4][-1].bias, weights["classifier.6.bias"])
    assert "shape mismatch" in report.format() and "classifier.0.weight (4096, 25088)" in report.format()


def test_timm_vgg16_convolutional_classifier_at_224():
    with torch.device("meta"):  # shapes only: a 224 px VGG-16 holds 138M parameters
        model = build_model("vgg16", 5)
    report = load_pretrained(model, vgg16_state("timm", num_classes=1000, device="meta"))
    assert report.source == "timm" and not report.mismatched and not report.missing
    assert report.skipped == classifier_keys(model)  # 1000 classes in the file, 5 in the model


def test_batch_norm_variant_must_match():
    weights = vgg16_state("torchvision", num_classes=10)
    with pytest.raises(PretrainedError, match="13 conv, 3 linear.*13 conv, 13 norm, 3 linear.*batch_norm"):
        load_pretrained(build_model("vgg16", 10, image_size=32, batch_norm=True), weights)


TORCHVISION_ALEXNET = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
                       "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3), "classifier.1": (4096, 9216),
                       "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)}


def torchvision_alexnet_state() -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return {f"{name}.{leaf}": torch.empty(shape if leaf == "weight" else shape[:1])
                for name, shape in TORCHVISION_ALEXNET.items() for leaf in ("weight", "bias")}


@pytest.mark.parametrize("image_size,loaded", [(224, 6), (64, 4)])
def test_torchvision_alexnet_into_the_2012_alexnet_is_refused(image_size, loaded):
    weights = torchvision_alexnet_state()
    with torch.device("meta"):
        model = build_model("alexnet", 1000, image_size=image_size)
    per_block = "block 1: 2 of 2, block 2: 2 of 2, block 3: 2 of 2, block 4: 2 of 2, block 5: "
    with pytest.raises(PartialLoadError, match=rf"(?s){16 - loaded} of 16 tensors did not load \({per_block}"
                                               rf"{8 - loaded} of 8\).*Build alexnet_tv instead.*"
                                               rf"load the {loaded} that fit.*allow_partial=True"):
        load_pretrained(model, weights)
    report = load_pretrained(model, weights, allow_partial=True)
    assert len(report.loaded) == loaded and len(report.not_loaded) == 16 - loaded
    assert "one weird trick" in report.format() and "they fit alexnet_tv" in report.format()
    with pytest.raises(PretrainedError, match="do not line up"):
        load_pretrained(model, {k: v for k, v in weights.items() if not k.startswith("features.3")})


@pytest.mark.parametrize("image_size", [224, 64])
def test_torchvision_alexnet_loads_into_alexnet_tv(image_size):
    with torch.device("meta"):
        model = build_model("alexnet_tv", 1000, image_size=image_size)
    assert sum(parameter.numel() for parameter in model.blocks.parameters()) == 61_100_840  # torchvision's count
    assert [len(block) for block in model.blocks] == [3, 3, 2, 2, 12]  # conv1+pool | conv2+pool | 3 | 4 | 5+fc
    report = load_pretrained(model, torchvision_alexnet_state(), strict=True)
    assert len(report.loaded) == 16 and not report.notes


def test_mismatches_are_listed_in_the_model_order():
    """A layer's bias that fits but is kept with its weight is listed with it, not after every other layer."""
    with torch.device("meta"):
        source = build_model("alexnet", 10, in_channels=1, image_size=64).state_dict()
        model = build_model("alexnet", 10, image_size=80)
    report = load_pretrained(model, source, allow_partial=True)
    assert [key for key, *_ in report.mismatched] == [
        "blocks.0.0.weight", "blocks.0.0.bias", "blocks.4.5.weight", "blocks.4.5.bias"]


def test_report_format_and_detection():
    report = LoadReport(source="timm", loaded=["a"], missing=[f"m{i}" for i in range(12)])
    text = report.format(limit=10)
    assert "1 loaded, 12 missing" in text and "m9" in text and "m10" not in text and "2 more" in text
    assert detect_source({"last_linear.weight": torch.zeros(1)}) == "timm"
    assert detect_source({"blocks.0.0.weight": torch.zeros(1)}) == "phasenets"


# ---- the same function as the real library's network: recorded logits ------------------------

FIXTURE = load_fixture()
# the phasenets model (and options) that takes each recorded architecture's weights
PHASENETS_MODELS = {
    ("torchvision", "resnet18"): ("resnet18", {}),
    ("torchvision", "resnet50"): ("resnet50", {}),
    ("torchvision", "vgg11"): ("vgg11", {}),
    ("torchvision", "vgg11_bn"): ("vgg11", {"batch_norm": True}),
    ("torchvision", "vgg16"): ("vgg16", {}),
    ("torchvision", "vgg16_bn"): ("vgg16", {"batch_norm": True}),
    ("torchvision", "alexnet"): ("alexnet_tv", {}),
    ("timm", "resnet18"): ("resnet18", {}),
    ("timm", "resnet50"): ("resnet50", {}),
    ("timm", "vgg16"): ("vgg16", {}),
    ("timm", "inception_v4"): ("inception_v4", {}),
}
# timm's Inception-v4 runs 1x7 before 7x1 where phasenets runs 7x1 first (Mixed4a's branch and each
# Inception-B's longest branch): those 2 + 7 x 4 kernels cannot load
INCEPTION_V4_MISMATCHES = 2 + 7 * 4


def _case_id(case: dict) -> str:
    return f"{case['library']}-{case['architecture']}-{case['image_size']}px"


def recorded_case(library: str, architecture: str, image_size: int | None = None) -> dict:
    return next(case for case in FIXTURE["cases"] if (case["library"], case["architecture"]) == (library, architecture)
                and image_size in (None, case["image_size"]))


def recorded_weights(case: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The state dict and input the case was recorded with; fails if torch no longer makes the same values."""
    state = pseudo_random_state(case["tensors"])
    images = reference_input(case["batch"], case["image_size"])
    changed = [key for key, *_, recorded in case["tensors"] if not math.isclose(checksum(state[key]), recorded,
                                                                                 rel_tol=1e-9, abs_tol=1e-9)]
    if changed or not math.isclose(checksum(images), case["input_checksum"], rel_tol=1e-9):
        pytest.fail(f"torch's random generator no longer makes the values recorded in the fixture ({changed[:3]}): "
                    "rerun scripts/record_pretrained_reference.py")
    return state, images


def assert_recorded_logits(model, images: torch.Tensor, case: dict) -> None:
    expected = torch.tensor(case["logits"])
    with torch.no_grad():
        logits = model.eval()(images)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_every_recorded_architecture_is_mapped():
    recorded = {(case["library"], case["architecture"]) for case in FIXTURE["cases"]}
    assert recorded == set(PHASENETS_MODELS)


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=_case_id)
def test_recorded_logits_of_the_real_library(case):
    state, images = recorded_weights(case)
    name, options = PHASENETS_MODELS[case["library"], case["architecture"]]
    with torch.device("meta"):  # every weight the logits use comes from the state dict
        model = build_model(name, case["num_classes"], image_size=case["image_size"], **options)
    model.to_empty(device="cpu")
    if name != "inception_v4":
        report = load_pretrained(model, state, strict=True)
        assert len(report.loaded) == len(state)
    else:
        report = load_pretrained(model, state, allow_partial=True)
        assert len(report.mismatched) == INCEPTION_V4_MISMATCHES and not report.missing and not report.unexpected
        own = model.state_dict()
        with torch.no_grad():  # the fixture's 1x7 and 7x1 kernels are their centre tap: the same 1x1 either way
            for model_key, source_key, _, _ in report.mismatched:
                own[model_key].copy_(state[source_key].reshape(own[model_key].shape))
    assert_recorded_logits(model, images, case)


def test_torchvision_weights_file_through_init_from(tmp_path):
    from phasenets.train.transfer import init_from

    case = recorded_case("torchvision", "alexnet", image_size=64)
    state, images = recorded_weights(case)
    torch.save(state, tmp_path / "alexnet.pth")
    model = build_model("alexnet_tv", case["num_classes"], image_size=case["image_size"])
    report = init_from(model, tmp_path / "alexnet.pth", freeze_reused=True)
    assert report.frozen == [1, 2, 3, 4, 5] and report.weights.complete
    assert_recorded_logits(model, images, case)


# ---- the same function as the installed library's network (where torchvision / timm import) ----


def import_or_skip(name: str):
    """`pytest.importorskip`, but also skipping a library that is installed and fails to load.

    A torchvision wheel built for another torch raises RuntimeError ("operator torchvision::nms
    does not exist") on import, not ImportError.
    """
    try:
        return importlib.import_module(name)
    except Exception as error:
        pytest.skip(f"{name} does not import: {type(error).__name__}: {error}")


def test_a_library_that_fails_to_load_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(pytest.skip.Exception, match="torchvision does not import: RuntimeError"):
        test_torchvision_function_is_preserved("resnet18", 64)


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=_case_id)
def test_fixture_keys_match_the_installed_library(case):
    library = import_or_skip(case["library"])
    with torch.device("meta"):
        if case["library"] == "torchvision":
            reference = getattr(library.models, case["architecture"])(num_classes=case["num_classes"])
        else:
            reference = library.create_model(case["architecture"], pretrained=False, num_classes=case["num_classes"])
    installed = [[key, list(value.shape)] for key, value in reference.state_dict().items()]
    assert installed == [tensor[:2] for tensor in case["tensors"]], (
        f"{case['library']} {library.__version__} lays out {case['architecture']} otherwise than the fixture "
        f"(recorded with {FIXTURE['recorded_with']}): rerun scripts/record_pretrained_reference.py")


def _randomize_norms(module):
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith(("running_mean", "bias")):
                tensor.normal_(0, 0.1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)


def _same_outputs(model, reference, size):
    reference.eval()
    model.eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("vgg16", 32)])
def test_torchvision_function_is_preserved(name, size):
    torchvision = import_or_skip("torchvision")
    reference = getattr(torchvision.models, name)(num_classes=7)
    if name == "vgg16":  # torchvision pools to 7x7 first; phasenets reads the 1x1 map at 32 px
        reference.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        reference.classifier[0] = torch.nn.Linear(512, 4096)
    _randomize_norms(reference)
    model = build_model(name, 7, image_size=size)
    load_pretrained(model, reference.state_dict(), strict=True)
    _same_outputs(model, reference, size)


def test_timm_inception_v4_function_is_preserved():
    """Mismatched 1x7/7x1 pairs are reduced to their centre tap on both sides (then they agree)."""
    timm = import_or_skip("timm")
    reference = timm.create_model("inception_v4", num_classes=7)
    _randomize_norms(reference)
    model = build_model("inception_v4", 7, image_size=99)
    report = load_pretrained(model, reference.state_dict(), allow_partial=True)
    assert len(report.mismatched) == INCEPTION_V4_MISMATCHES and not report.missing and not report.unexpected
    own, theirs = model.state_dict(), reference.state_dict()
    with torch.no_grad():
        for model_key, source_key, _, _ in report.mismatched:
            source = theirs[source_key]
            tap = source[:, :, source.shape[2] // 2, source.shape[3] // 2].clone()
            for tensor in (source, own[model_key]):
                tensor.zero_()
                tensor[:, :, tensor.shape[2] // 2, tensor.shape[3] // 2] = tap
    _same_outputs(model, reference, 99)
