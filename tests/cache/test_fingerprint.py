import dataclasses
import math
import os

import pytest
import torch
from torch import nn

from phasenets.cache import fingerprint as fingerprint_module
from phasenets.cache.fingerprint import cache_fingerprint, canonical_json, dataset_manifest
from phasenets.cache.spec import CacheSpec


@dataclasses.dataclass
class Transform:
    image_size: int = 32
    hflip: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    images = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(bytes([i]) * 100)
        images.append(path)
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    return dict(
        frozen_state_dicts=[block.state_dict()],
        model_config={"name": "alexnet", "num_classes": 10, "width": 1.0},
        preprocessing_config=Transform(),
        dataset_manifest=dataset_manifest(images),
        spec=CacheSpec(3, (4, 6, 6), views=2, dtype="fp16"),
    ), images


def test_unchanged_setup_gives_the_same_fingerprint(setup):
    fields, images = setup
    first = cache_fingerprint(**fields)
    rebuilt = dict(fields, dataset_manifest=dataset_manifest(images),
                   frozen_state_dicts=[{k: v.clone() for k, v in fields["frozen_state_dicts"][0].items()}])
    assert cache_fingerprint(**rebuilt) == first
    assert len(first) == 64 and int(first, 16) >= 0


def one_ulp_up(state_dicts):
    changed = {k: v.clone() for k, v in state_dicts[0].items()}
    weight = changed["0.weight"].view(-1)
    weight[5] = torch.nextafter(weight[5], torch.tensor(float("inf")))
    return [changed]


def touch(images):
    stat = os.stat(images[1])
    os.utime(images[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    return dataset_manifest(images)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda f, imgs: {"frozen_state_dicts": one_ulp_up(f["frozen_state_dicts"])}, id="weight-one-ulp"),
        pytest.param(lambda f, imgs: {"dataset_manifest": touch(imgs)}, id="image-touched"),
        pytest.param(lambda f, imgs: {"dataset_manifest": f["dataset_manifest"][::-1]}, id="images-reordered"),
        pytest.param(lambda f, imgs: {"preprocessing_config": Transform(hflip=True)}, id="transform-changed"),
        pytest.param(lambda f, imgs: {"preprocessing_config": Transform(crop_scale=(0.08, 0.9999999))},
                     id="transform-float-changed"),
        pytest.param(lambda f, imgs: {"model_config": {**f["model_config"], "width": 1.0000001}}, id="model-config"),
        pytest.param(lambda f, imgs: {"spec": dataclasses.replace(f["spec"], dtype="bf16")}, id="dtype-changed"),
        pytest.param(lambda f, imgs: {"spec": dataclasses.replace(f["spec"], views=3)}, id="views-changed"),
        pytest.param(lambda f, imgs: {"spec": dataclasses.replace(f["spec"], feature_shape=(4, 36))},
                     id="feature-shape-changed"),
        pytest.param(
            lambda f, imgs: {"frozen_state_dicts": [{k: v.to(torch.float64) if v.is_floating_point() else v
                                                     for k, v in f["frozen_state_dicts"][0].items()}]},
            id="weights-other-dtype",
        ),
        pytest.param(lambda f, imgs: {"frozen_state_dicts": f["frozen_state_dicts"] * 2}, id="extra-block"),
    ],
)
def test_any_change_gives_a_different_fingerprint(setup, change):
    fields, images = setup
    before = cache_fingerprint(**fields)
    assert cache_fingerprint(**{**fields, **change(fields, images)}) != before


def test_the_file_format_version_is_part_of_the_fingerprint(setup, monkeypatch):
    fields, _ = setup
    before = cache_fingerprint(**fields)
    monkeypatch.setattr(fingerprint_module, "FORMAT_VERSION", fingerprint_module.FORMAT_VERSION + 1)
    assert cache_fingerprint(**fields) != before


def test_file_content_rewrite_with_same_size_changes_the_manifest(setup):
    fields, images = setup
    before = cache_fingerprint(**fields)
    images[0].write_bytes(b"\xff" * 100)  # same size, new mtime
    os.utime(images[0], ns=(0, 12345))
    assert cache_fingerprint(**{**fields, "dataset_manifest": dataset_manifest(images)}) != before


def test_single_state_dict_and_bf16_weights_are_accepted(setup):
    fields, _ = setup
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in fields["frozen_state_dicts"][0].items()}
    assert cache_fingerprint(**{**fields, "frozen_state_dicts": state}) == cache_fingerprint(
        **{**fields, "frozen_state_dicts": [state]})


def test_canonical_json_is_order_independent_and_exact():
    assert canonical_json({"b": 1, "a": (1.5, None)}) == canonical_json({"a": [1.5, None], "b": 1})
    assert canonical_json({"x": 0.1}) != canonical_json({"x": math.nextafter(0.1, 1.0)})
    assert canonical_json(float("inf")) != canonical_json(float("-inf"))


def test_unserializable_config_is_a_clear_error(setup):
    fields, _ = setup
    with pytest.raises(TypeError, match="cannot fingerprint a value of type object"):
        cache_fingerprint(**{**fields, "model_config": {"fn": object()}})
