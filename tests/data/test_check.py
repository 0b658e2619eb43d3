import os
import shutil

import pytest

from phasenets.data import DatasetError, check_dataset, filter_bad, scan_dataset
from phasenets.data.check import MIN_SIDE, too_small_below
from tests.data.corpus import make_bad_corpus, make_dataset, write_image


def kinds(report):
    return {p.path: p.kind for p in report.problems}


def test_the_bad_file_corpus_is_reported_exactly(tmp_path):
    root, expected = make_bad_corpus(tmp_path)
    report = check_dataset(root, progress=False)
    assert kinds(report) == expected
    assert report.num_images == 3 * 2 + 2 + 7  # clean train, clean validation/cat, planted files
    fatal = {"corrupt", "empty_file", "not_an_image", "empty_class"}
    for problem in report.problems:
        assert problem.severity == ("fatal" if problem.kind in fatal else
                                    "converted" if problem.kind == "converted" else "warning")
    assert not report.ok
    assert [os.path.basename(p) for p in report.bad_files] == ["notes.jpg", "truncated.jpg", "zero_bytes.jpg"]
    assert [p.kind for p in report.blocking] == ["empty_class"]
    text = report.format()
    for path in expected:
        assert os.path.relpath(path, root) in text
    assert "NOT OK" in text


def test_skipping_bad_files_leaves_a_loadable_dataset(tmp_path):
    root, _ = make_bad_corpus(tmp_path)
    write_image(os.path.join(root, "validation", "dog", "fine.png"))  # fix the only blocking problem
    report = check_dataset(root, progress=False)
    assert report.blocking == [] and not report.ok
    assert "--on-bad-image skip" in report.format()
    splits = scan_dataset(root)
    kept = filter_bad(splits, report)
    assert len(kept.train) == len(splits.train) - 3
    assert not {s.path for s in kept.train} & set(report.bad_files)
    assert kept.validation == splits.validation


def test_filter_bad_refuses_to_empty_a_class(tmp_path):
    make_dataset(tmp_path, counts={"train": 1, "validation": 1})
    only_cat = tmp_path / "train" / "cat" / "cat_0.png"
    only_cat.write_bytes(b"")
    with pytest.raises(DatasetError, match="empties class.*cat of train"):
        filter_bad(scan_dataset(tmp_path), check_dataset(tmp_path, progress=False))


def test_a_clean_dataset_is_ok(tmp_path):
    make_dataset(tmp_path, counts={"train": 2, "validation": 1, "test": 1})
    report = check_dataset(tmp_path, progress=False)
    assert report.ok and report.problems == [] and report.num_images == 8
    assert report.format().endswith(": OK")


def test_identical_files_in_two_splits_and_class_mismatch(tmp_path):
    make_dataset(tmp_path, counts={"train": 2, "validation": 1})
    shutil.copy(tmp_path / "train" / "cat" / "cat_0.png", tmp_path / "validation" / "cat" / "leak.png")
    write_image(tmp_path / "validation" / "eel" / "e.png", seed=999)
    (tmp_path / "train" / "dog" / "labels.csv").write_text("a,b\n")
    report = check_dataset(tmp_path, progress=False)
    found = kinds(report)
    assert found[str(tmp_path / "train" / "cat" / "cat_0.png")] == "duplicate"  # one warning names both files
    assert ("train/cat/cat_0.png: identical to validation/cat/leak.png (one image in train and validation"
            in report.format())
    assert found[str(tmp_path / "validation")] == "class_mismatch"
    assert "only in validation, not in train: eel" in report.format()
    assert found[str(tmp_path / "train" / "dog" / "labels.csv")] == "ignored_file"
    assert len(found) == 3


def test_size_thresholds_follow_crop_and_image_size(tmp_path):
    make_dataset(tmp_path, counts={"train": 1, "validation": 1}, size=(20, 12))
    assert check_dataset(tmp_path, progress=False).problems == []
    assert {p.kind for p in check_dataset(tmp_path, crop_size=16, progress=False).problems} == {"too_small"}
    assert len(check_dataset(tmp_path, image_size=32, progress=False).problems) == 4  # 12 < 32 / 2
    assert check_dataset(tmp_path, image_size=24, progress=False).problems == []


def test_one_too_small_rule_stated_in_every_report(tmp_path):
    assert [too_small_below(size) for size in (None, 8, 16, 32, 224)] == [MIN_SIDE, 8, 8, 16, 112]
    assert too_small_below(32, crop_size=24) == 24
    write_image(tmp_path / "train" / "cat" / "small.png", size=(10, 12))
    write_image(tmp_path / "validation" / "cat" / "fine.png", size=(40, 40))
    unsized, sized = (check_dataset(tmp_path, image_size=size, progress=False) for size in (None, 32))
    assert (unsized.min_side, sized.min_side, sized.image_size) == (8, 16, 32)
    assert unsized.problems == [p for p in sized.problems if p.kind != "too_small"]
    assert "(too small: under 8 px on a side)" in unsized.format()
    assert "[too_small] train/cat/small.png: 10x12 pixels, smaller than 16 on a side" in sized.format()
    assert "(too small: under 16 px on a side)" in sized.format()


def test_layout_errors_become_fatal_problems(tmp_path):
    make_dataset(tmp_path, counts={"validation": 1})
    report = check_dataset(tmp_path, progress=False)
    assert [p.kind for p in report.problems] == ["layout"] and not report.ok
    assert "no train/ folder" in report.format()
    shutil.rmtree(tmp_path / "validation")
    make_dataset(tmp_path, counts={"train": 2})
    report = check_dataset(tmp_path, progress=False)
    assert [(p.kind, p.severity) for p in report.problems] == [("no_validation", "warning")]
