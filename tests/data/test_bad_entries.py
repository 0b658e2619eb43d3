"""Entries no loader may decode: FIFOs, links that lead nowhere, huge files, pixel bombs.

Each is refused by name, quickly and in bounded memory, by the layout scan, the loaders'
`load_image` and `phasenets data check`; none may hang a reader (hence the timeouts) or let
Pillow's own warnings reach the console.
"""
import os

import pytest
from PIL import Image

from phasenets.cli import main
from phasenets.data import check_dataset, filter_bad, scan_dataset
from phasenets.data import images
from phasenets.data.images import BadImageError, load_image
from tests.data.corpus import BAD_ENTRIES, HANG_GUARD, HUGE_FILE_BYTES, make_dataset, plant_bad_entry, write_image


@pytest.fixture
def small_file_limit(monkeypatch):
    """A byte limit the 4 MiB sparse file exceeds: the tests need not make files of GiBs."""
    monkeypatch.setattr(images, "MAX_FILE_BYTES", HUGE_FILE_BYTES // 4)


def bomb_warnings(recorded) -> list:
    return [w for w in recorded if issubclass(w.category, Image.DecompressionBombWarning)]


@HANG_GUARD
@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_data_check_names_each_bad_entry_once(case, tmp_path, capsys, recwarn, small_file_limit):
    root = make_dataset(tmp_path, counts={"train": 2, "validation": 1})
    path, kind, phrase = plant_bad_entry(tmp_path / "train" / "cat", case)
    assert main(["data", "check", root]) == 1
    out = capsys.readouterr().out
    name = os.path.relpath(path, root)
    [line] = [line for line in out.splitlines() if name in line]
    assert line.strip().startswith(f"[{kind}] {name}: ") and phrase in line
    assert "--on-bad-image skip would leave out the bad files" in out
    assert not bomb_warnings(recwarn)
    assert os.path.lexists(path) and len(os.listdir(tmp_path / "train" / "cat")) == 3  # nothing touched


@HANG_GUARD
@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_the_loaders_refuse_each_bad_entry_by_name(case, tmp_path, recwarn, small_file_limit):
    path, kind, phrase = plant_bad_entry(tmp_path, case)
    with pytest.raises(BadImageError) as error:
        load_image(path, in_channels=1)
    assert error.value.kind == kind and str(error.value).startswith(f"{path}: ") and phrase in str(error.value)
    assert not bomb_warnings(recwarn)


@HANG_GUARD
@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_skipping_leaves_out_exactly_the_bad_entry(case, tmp_path, small_file_limit):
    make_dataset(tmp_path, counts={"train": 2, "validation": 1})
    path, _, _ = plant_bad_entry(tmp_path / "train" / "cat", case)
    is_file = case in ("huge_sparse_file", "pixel_bomb")  # regular files: images to the scan, refused by the check
    report = check_dataset(tmp_path, progress=False)
    assert report.bad_files == [path] and report.blocking == [] and report.num_images == 6 + is_file
    splits = scan_dataset(tmp_path)
    assert set(splits.not_files) == (set() if is_file else {path})
    kept = filter_bad(splits, report)
    assert len(kept.train) == 4 and path not in {s.path for s in kept.train}


@HANG_GUARD
def test_the_default_byte_limit_refuses_a_2_gib_sparse_file_unread(tmp_path):
    make_dataset(tmp_path, counts={"train": 1, "validation": 1})
    huge = tmp_path / "train" / "cat" / "huge.jpg"
    with open(huge, "wb") as file:
        file.truncate(2 * 2**30)  # sparse: no disk space, but 2 GiB for a reader that reads it whole
    [problem] = check_dataset(tmp_path, progress=False).problems
    assert (problem.path, problem.kind) == (str(huge), "too_large")
    assert problem.message.startswith("2,147,483,648 bytes, above the limit of 536,870,912")


def test_limits_are_adjustable_per_call_and_per_process(tmp_path, monkeypatch):
    make_dataset(tmp_path, counts={"train": 1, "validation": 1}, size=(12, 10))
    problems = check_dataset(tmp_path, progress=False, max_pixels=100).problems
    assert {p.kind for p in problems} == {"too_large"} and len(problems) == 4
    assert "12x10 = 120 pixels, above the limit of 100" in problems[0].message
    assert {p.kind for p in check_dataset(tmp_path, progress=False, max_bytes=50).problems} == {"too_large"}
    assert check_dataset(tmp_path, progress=False).ok
    one = str(tmp_path / "train" / "cat" / "cat_0.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 119)
    with pytest.raises(BadImageError, match="above the limit of 119"):
        load_image(one, in_channels=3)


def test_pillows_own_limit_is_reported_not_warned(tmp_path, monkeypatch, recwarn):
    """Above Pillow's limit (and below ours) Pillow warns; above twice its limit it raises."""
    path = write_image(tmp_path / "wide.png", size=(40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(path, in_channels=1).size == (40, 30)  # 1,200 pixels: Pillow warns, ours accepts
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(BadImageError, match="Pillow's own limit") as error:
        load_image(path, in_channels=1)
    assert error.value.kind == "too_large"
    assert not bomb_warnings(recwarn)


def test_a_folder_named_like_an_image_is_a_folder_and_a_linked_one_is_not_followed(tmp_path):
    make_dataset(tmp_path, counts={"train": 1, "validation": 1})
    write_image(tmp_path / "train" / "cat" / "scans.png" / "inner.png")
    os.symlink(tmp_path / "validation" / "dog", tmp_path / "train" / "dog" / "linked.png")
    splits = scan_dataset(tmp_path)
    assert str(tmp_path / "train" / "cat" / "scans.png" / "inner.png") in {s.path for s in splits.train}
    assert splits.not_files == {str(tmp_path / "train" / "dog" / "linked.png"): "a directory, not a regular file: "
                                                                              "no loader opens it"}
    assert len(splits.train) == 3


@HANG_GUARD
def test_a_fifo_is_never_opened_even_if_it_reaches_a_loader(tmp_path):
    os.mkfifo(fifo := str(tmp_path / "pipe.png"))  # e.g. swapped in after the scan
    with pytest.raises(BadImageError, match="a FIFO"):
        load_image(fifo, in_channels=3)
