import os
import shutil

import pytest

from phasenets.data.layout import DatasetError, carve_validation, scan_dataset
from tests.data.corpus import make_dataset, write_image


def test_scan_lists_splits_classes_and_labels_in_sorted_order(tmp_path):
    make_dataset(tmp_path, classes=("zebra", "ant", "mole"), counts={"train": 3, "validation": 2, "test": 1})
    splits = scan_dataset(tmp_path)
    assert splits.classes == ["ant", "mole", "zebra"]
    assert [len(splits.train), len(splits.validation), len(splits.test)] == [9, 6, 3]
    for samples in (splits.train, splits.validation, splits.test):
        for sample in samples:
            assert os.path.isabs(sample.path)
            assert splits.classes[sample.label] == os.path.basename(os.path.dirname(sample.path))
        assert [s.label for s in samples] == sorted(s.label for s in samples)
    assert not splits.validation_carved


def test_val_alias_optional_test_and_extensions_in_any_case(tmp_path):
    for name, ext in [("a", ".JPG"), ("b", ".jpeg"), ("c", ".Png"), ("d", ".BMP")]:
        write_image(tmp_path / "train" / "k" / f"{name}{ext}")  # PIL picks the format by extension
    write_image(tmp_path / "val" / "k" / "v.png")
    (tmp_path / "train" / "k" / "readme.txt").write_text("not an image")
    (tmp_path / "train" / "k" / ".DS_Store").write_bytes(b"\0")
    splits = scan_dataset(tmp_path)
    assert sorted(os.path.basename(s.path) for s in splits.train) == ["a.JPG", "b.jpeg", "c.Png", "d.BMP"]
    assert len(splits.validation) == 1 and splits.test == []
    assert splits.split("val") is splits.validation


def test_missing_train_folder(tmp_path):
    make_dataset(tmp_path, counts={"validation": 1})
    with pytest.raises(DatasetError, match=r"no train/ folder \(found: validation\)"):
        scan_dataset(tmp_path)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nowhere")


def test_missing_validation_needs_val_split(tmp_path):
    make_dataset(tmp_path, counts={"train": 5})
    with pytest.raises(DatasetError, match="no validation/ .*val_split"):
        scan_dataset(tmp_path)


def test_both_val_and_validation_is_ambiguous(tmp_path):
    make_dataset(tmp_path, counts={"train": 2, "validation": 1, "val": 1})
    with pytest.raises(DatasetError, match="both validation and val"):
        scan_dataset(tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "train" / "cat" / "empty_subfolder_only").mkdir()
    for path in (tmp_path / "validation" / "dog").iterdir():
        path.unlink()
    (tmp_path / "validation" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"empty class folder .*validation/dog"):
        scan_dataset(tmp_path)


def test_differing_class_sets_name_the_classes_on_each_side(tmp_path):
    make_dataset(tmp_path, classes=("cat", "dog", "eel"), counts={"train": 2})
    make_dataset(tmp_path, classes=("cat", "dog", "fox"), counts={"validation": 1})
    with pytest.raises(DatasetError) as error:
        scan_dataset(tmp_path)
    message = str(error.value)
    assert "missing from validation: eel" in message
    assert "only in validation, not in train: fox" in message


def test_val_split_carves_a_stratified_deterministic_validation(tmp_path):
    make_dataset(tmp_path, classes=("a", "b", "c"), counts={"train": 10})
    splits = scan_dataset(tmp_path, val_split=0.2, seed=3)
    assert splits.validation_carved
    assert [sum(s.label == k for s in splits.validation) for k in range(3)] == [2, 2, 2]
    assert {s.path for s in splits.train}.isdisjoint(s.path for s in splits.validation)
    assert len(splits.train) + len(splits.validation) == 30
    assert scan_dataset(tmp_path, val_split=0.2, seed=3) == splits
    assert scan_dataset(tmp_path, val_split=0.2, seed=4).validation != splits.validation


def test_val_split_ignored_when_a_validation_folder_exists(tmp_path):
    make_dataset(tmp_path)
    assert scan_dataset(tmp_path, val_split=0.5) == scan_dataset(tmp_path)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_val_split_out_of_range(tmp_path, fraction):
    make_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"val_split must be in \[0, 1\)"):
        scan_dataset(tmp_path, val_split=fraction)


def test_carving_needs_two_images_per_class(tmp_path):
    make_dataset(tmp_path, classes=("lonely",), counts={"train": 1})
    with pytest.raises(DatasetError, match="class lonely has 1 training image"):
        scan_dataset(tmp_path, val_split=0.5)


def test_carve_keeps_at_least_one_image_on_each_side():
    from phasenets.data.layout import Sample

    train = [Sample(f"/x/{i}.png", 0) for i in range(3)]
    kept, carved = carve_validation(train, 0.99, seed=0, classes=["only"])
    assert len(kept) == 1 and len(carved) == 2


def test_manifest_tracks_every_file_in_index_order(tmp_path):
    make_dataset(tmp_path, counts={"train": 2, "validation": 1})
    splits = scan_dataset(tmp_path)
    manifest = splits.manifest("train")
    assert [path for path, _, _ in manifest] == [s.path for s in splits.train]
    assert len(splits.manifest()) == len(splits.train) + len(splits.validation)
    first = splits.train[0].path
    write_image(first, size=(13, 10), seed=99)
    os.utime(first, ns=(1, 1))
    assert scan_dataset(tmp_path).manifest("train") != manifest
    shutil.rmtree(tmp_path / "train" / "dog")
    shutil.rmtree(tmp_path / "validation" / "dog")
    assert len(scan_dataset(tmp_path).manifest()) == 3
