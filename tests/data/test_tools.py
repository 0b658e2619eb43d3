import os

import numpy as np
import pytest
from PIL import Image

from phasenets.data import DatasetError, balance_dataset, check_dataset, import_dataset, scan_dataset, split_dataset
from phasenets.data.tools import FASHION_MNIST_CLASSES, _package_files
from tests.data.corpus import write_image


def make_class_folders(root, counts):
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"{name}_{i:02d}.png", (6, 6), seed=hash((name, i)) % 1000)
    return root


def listing(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def test_split_by_ratio_is_stratified_deterministic_and_loadable(tmp_path):
    src = make_class_folders(tmp_path / "src", {"a": 10, "b": 20})
    counts = split_dataset(src, tmp_path / "out", ratios=(0.7, 0.15, 0.15), seed=1)
    assert counts == {"train": {"a": 6, "b": 14}, "validation": {"a": 2, "b": 3}, "test": {"a": 2, "b": 3}}
    splits = scan_dataset(tmp_path / "out")
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 30
    split_dataset(src, tmp_path / "again", ratios=(0.7, 0.15, 0.15), seed=1)
    assert listing(tmp_path / "out") == listing(tmp_path / "again")
    split_dataset(src, tmp_path / "other", ratios=(0.7, 0.15, 0.15), seed=2)
    assert listing(tmp_path / "out") != listing(tmp_path / "other")


@pytest.mark.parametrize("mode", ["symlink", "hardlink"])
def test_split_links_instead_of_copying(tmp_path, mode):
    src = make_class_folders(tmp_path / "src", {"a": 4, "b": 4})
    split_dataset(src, tmp_path / "out", mode=mode)
    placed = tmp_path / "out" / "train" / "a" / sorted(os.listdir(tmp_path / "out" / "train" / "a"))[0]
    assert os.path.islink(placed) == (mode == "symlink")
    assert os.path.samefile(placed, src / "a" / placed.name)


def test_split_rejects_bad_arguments_and_existing_output(tmp_path):
    src = make_class_folders(tmp_path / "src", {"a": 4})
    with pytest.raises(ValueError, match="summing to 1"):
        split_dataset(src, tmp_path / "out", ratios=(0.5, 0.2))
    with pytest.raises(ValueError, match="valid: copy, symlink, hardlink"):
        split_dataset(src, tmp_path / "out", mode="move")
    with pytest.raises(DatasetError, match="not an empty folder"):
        split_dataset(src, tmp_path / "src")
    make_class_folders(tmp_path / "tiny", {"one": 1})
    with pytest.raises(DatasetError, match=r"class one has 1 image\(s\)"):
        split_dataset(tmp_path / "tiny", tmp_path / "out", ratios=(0.5, 0.5))


def test_balance_down_and_up(tmp_path):
    train = make_class_folders(tmp_path / "data" / "train", {"few": 3, "many": 7})
    assert balance_dataset(train, tmp_path / "down", strategy="down", seed=0) == {"train": {"few": 3, "many": 3}}
    assert len(os.listdir(tmp_path / "down" / "many")) == 3
    up = balance_dataset(train, strategy="up", mode="symlink", seed=0)
    assert up == {"train": {"few": 7, "many": 7}}
    few = sorted(os.listdir(tmp_path / "data" / "train_balanced" / "few"))
    assert sum("_dup" in name for name in few) == 4
    assert {os.path.realpath(tmp_path / "data" / "train_balanced" / "few" / n) for n in few} <= {
        str(train / "few" / f"few_{i:02d}.png") for i in range(3)}
    with pytest.raises(ValueError, match="valid: down, up"):
        balance_dataset(train, tmp_path / "x", strategy="sideways")


def test_import_digits_writes_a_clean_deterministic_dataset(tmp_path):
    counts = import_dataset("digits", tmp_path / "digits", seed=0)
    assert sorted(counts["train"]) == [str(d) for d in range(10)]
    total = sum(sum(split.values()) for split in counts.values())
    assert total == 1797
    assert all(abs(counts["test"][c] - counts["validation"][c]) <= 1 for c in counts["test"])
    splits = scan_dataset(tmp_path / "digits")
    image = Image.open(splits.test[0].path)
    assert image.size == (32, 32) and image.mode == "L"
    assert check_dataset(tmp_path / "digits", image_size=32, progress=False).problems == []

    small = import_dataset("digits", tmp_path / "small", per_class=5, val_per_class=2, test_per_class=3,
                           image_size=16, seed=0)
    assert small == {split: {str(d): n for d in range(10)} for split, n in
                     [("train", 5), ("validation", 2), ("test", 3)]}
    again = import_dataset("digits", tmp_path / "again", per_class=5, val_per_class=2, test_per_class=3,
                           image_size=16, seed=0)
    assert again == small
    first = sorted(os.listdir(tmp_path / "small" / "train" / "3"))
    assert first == sorted(os.listdir(tmp_path / "again" / "train" / "3"))
    pixels = np.asarray(Image.open(tmp_path / "small" / "train" / "3" / first[0]))
    assert pixels.shape == (16, 16) and pixels.max() > 200  # 0..16 scaled up to 0..255


def test_import_fashion_mnist_subset(tmp_path):
    try:
        _package_files("dataset-fashion-mnist")
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    counts = import_dataset("fashion-mnist", tmp_path / "fm", per_class=3, test_per_class=2, seed=0)
    assert counts == {split: {name: n for name in FASHION_MNIST_CLASSES} for split, n in
                      [("train", 3), ("validation", 1), ("test", 2)]}
    splits = scan_dataset(tmp_path / "fm")
    assert sorted(splits.classes) == sorted(FASHION_MNIST_CLASSES) and "t-shirt_top" in splits.classes
    image = Image.open(splits.train[0].path)
    assert image.size == (28, 28) and image.mode == "L"
    names = [os.path.basename(s.path) for s in splits.test]
    assert all(int(name[5:10]) >= 60000 for name in names)  # the official test images


def test_import_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="valid: fashion-mnist, digits"):
        import_dataset("cifar10", tmp_path / "x")
    with pytest.raises(ValueError, match="per_class must be a positive integer"):
        import_dataset("digits", tmp_path / "x", per_class=0)
    with pytest.raises(ValueError, match="cannot take 2 for validation and 500 for train"):
        import_dataset("digits", tmp_path / "x", per_class=500, val_per_class=2)
    with pytest.raises(FileNotFoundError, match="sudo apt-get install phasenets-no-such-package"):
        _package_files("phasenets-no-such-package")
