"""Class hierarchies: one dataset folder relabelled at level 1 (superclasses) and level 2 (inside one)."""
from __future__ import annotations

import pytest

from phasenets.data.hierarchy import Hierarchy, HierarchyError, load_hierarchy, relabel
from phasenets.data.layout import DatasetSplits, Sample

FASHION = """
clothing: [t-shirt_top, trouser, pullover, dress, coat, shirt]
footwear_and_bags:
  footwear: [sandal, sneaker, ankle_boot]
  bags: [bag]
"""
FASHION_CLASSES = sorted(["t-shirt_top", "trouser", "pullover", "dress", "coat", "shirt", "sandal", "sneaker",
                          "ankle_boot", "bag"])


def fashion_splits(per_class: int = 2) -> DatasetSplits:
    """Samples as scan_dataset lists them (no files needed: relabel only reads names and labels)."""
    def split(name):
        return [Sample(f"/data/{name}/{cls}/{i}.png", label) for label, cls in enumerate(FASHION_CLASSES)
                for i in range(per_class)]
    return DatasetSplits("/data", list(FASHION_CLASSES), split("train"), split("validation"), split("test"))


@pytest.fixture
def fashion(tmp_path):
    path = tmp_path / "fashion.yaml"
    path.write_text(FASHION)
    return load_hierarchy(path)


def test_level_one_superclasses(fashion):
    splits = fashion_splits()
    top = relabel(splits, fashion)
    assert top.classes == ["clothing", "footwear_and_bags"]
    assert [s.label for s in top.train].count(0) == 6 * 2 and [s.label for s in top.train].count(1) == 4 * 2
    by_path = {s.path: top.classes[s.label] for s in top.validation}
    assert by_path["/data/validation/bag/0.png"] == "footwear_and_bags"
    assert by_path["/data/validation/coat/1.png"] == "clothing"
    assert top.train == sorted(top.train, key=lambda s: (s.label, s.path))  # scan_dataset's order
    assert splits.classes == FASHION_CLASSES  # the input is left alone


def test_level_two_inside_one_superclass(fashion):
    inside = relabel(fashion_splits(), fashion, within="footwear_and_bags")
    assert inside.classes == ["bags", "footwear"]
    assert len(inside.train) == 4 * 2 and len(inside.test) == 4 * 2  # clothing's samples dropped
    assert {inside.classes[s.label] for s in inside.train if "/sneaker/" in s.path} == {"footwear"}
    leaves = relabel(fashion_splits(), fashion, within="footwear")
    assert leaves.classes == ["ankle_boot", "sandal", "sneaker"]


def test_levels_count_from_the_top(fashion):
    assert fashion.groups(level=2) == {
        **{name: [name] for name in ["t-shirt_top", "trouser", "pullover", "dress", "coat", "shirt"]},
        "footwear": ["sandal", "sneaker", "ankle_boot"], "bags": ["bag"],
    }
    assert sorted(fashion.groups(level=3)) == FASHION_CLASSES
    assert fashion.groups(within="footwear_and_bags/footwear") == fashion.groups(within="footwear")
    with pytest.raises(HierarchyError, match="level 1 is not below 'footwear_and_bags'"):
        fashion.groups(level=1, within="footwear_and_bags")


def test_digit_names_and_mixed_lists():
    hierarchy = Hierarchy.from_mapping({"small": [0, 1, {"middle": [2, 3]}], "large": ["4", 5]})
    assert hierarchy.classes == ["0", "1", "2", "3", "4", "5"]
    assert hierarchy.groups(within="small") == {"0": ["0"], "1": ["1"], "middle": ["2", "3"]}


@pytest.mark.parametrize("text,message", [
    ("a: [x, y]\nb: [y, z]", "'y' is listed twice, under a and under b"),
    ("a: [x]\nb: {a: [z]}", "'a' is listed twice"),
    ("- x\n- y", "expected a mapping of superclass -> classes"),
    ("a: []\nb: [x]", "superclass a lists no classes"),
    ("a: 3\nb: [x]", "must hold a list of classes or a mapping"),
    ("a: [x, null]\nb: [y]", "None under a is not a usable name"),
    ("a: [x, 'p/q']", "'p/q' under a is not a usable name"),
    ("a: [x: y", "is not valid YAML"),
])
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(HierarchyError, match=message):
        load_hierarchy(path)


def test_hierarchy_must_fit_the_data(tmp_path, fashion):
    with pytest.raises(HierarchyError, match="hierarchy file not found"):
        load_hierarchy(tmp_path / "absent.yaml")
    extra = Hierarchy.from_mapping({"clothing": ["coat", "cape"], "rest": ["bag"]}, "h.yaml")
    with pytest.raises(HierarchyError, match="h.yaml lists classes that /data does not have: cape"):
        relabel(fashion_splits(), extra)
    partial = Hierarchy.from_mapping({"clothing": ["coat"], "rest": ["bag"]}, "h.yaml")
    with pytest.raises(HierarchyError, match="does not place: ankle_boot, dress"):
        relabel(fashion_splits(), partial)
    nested = Hierarchy.from_mapping({"x": {"y": ["coat"], "z": ["bag"]}})
    assert relabel(fashion_splits(), nested, within="x").classes == ["y", "z"]  # other classes simply dropped
    with pytest.raises(HierarchyError, match="'bags' of .*fashion.yaml has a single group \\(bag\\)"):
        relabel(fashion_splits(), fashion, within="bags")
    with pytest.raises(HierarchyError, match="'shoes' is not a superclass.*superclasses: clothing, footwear_and_bags"):
        relabel(fashion_splits(), fashion, within="shoes")


def test_a_group_without_training_images(fashion):
    splits = fashion_splits()
    splits.train = [s for s in splits.train if "/bag/" not in s.path]
    with pytest.raises(HierarchyError, match="no training images for group\\(s\\) bags"):
        relabel(splits, fashion, within="footwear_and_bags")
