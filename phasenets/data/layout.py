"""Dataset layout: ``data_dir/{train,validation|val,test}/<class>/<images>``.

The class index comes from the sorted names of the train class folders and is the same in every
split. A sample's index is its position in its split's list, which is sorted by (class, path), so
the same folder always gives the same indices: the feature cache keys on them.

A sample is always a regular file (after following symbolic links) with an image extension. An
entry named like an image that is anything else (a FIFO, socket, device, a link to a directory, a
dangling link or a link loop) is never a sample, so no loader, with or without the preflight, opens
one (a FIFO would block it forever); the scan lists such entries by name (``not_files``) and the
preflight reports them as bad files. A real folder is a folder whatever its name: its images count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from phasenets.data.images import IMAGE_EXTENSIONS, is_image_file, not_a_file
from phasenets.errors import UserError

SPLIT_NAMES = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


class DatasetError(UserError, ValueError):
    """The dataset folder cannot be used as it is; the message names the files and classes."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class DatasetSplits:
    """The samples of every split; ``test`` is empty when the dataset has none."""

    root: str
    classes: list[str]
    train: list[Sample]
    validation: list[Sample]
    test: list[Sample] = field(default_factory=list)
    validation_carved: bool = False  # validation was carved out of train by ``val_split``
    not_files: dict[str, str] = field(default_factory=dict)  # entries named like images left out: path -> why

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> list[Sample]:
        """The samples of ``name`` ("train", "validation" or "val", "test")."""
        name = "validation" if name == "val" else name
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def manifest(self, split: str | None = None) -> list[tuple[str, int, int]]:
        """``(path, size_bytes, mtime_ns)`` per sample of ``split`` (all splits, train first, when
        None), in index order: the ``dataset_manifest`` the cache fingerprint hashes. Any added,
        removed, reordered or rewritten file changes it."""
        samples = self.split(split) if split else [s for name in SPLIT_NAMES for s in getattr(self, name)]
        manifest = []
        for sample in samples:
            stat = os.stat(sample.path)
            manifest.append((sample.path, stat.st_size, stat.st_mtime_ns))
        return manifest


@dataclass(frozen=True)
class LayoutProblem:
    kind: str      # "empty_class", "no_classes" or "class_mismatch"
    path: str      # the folder concerned
    message: str


@dataclass
class LayoutScan:
    """What is on disk, before any judgement: used by :func:`scan_dataset` and the preflight."""

    root: str
    split_dirs: dict[str, str]                 # split name -> folder, for the splits present
    files: dict[str, dict[str, list[str]]]     # split -> class -> sorted image paths
    ignored: list[str]                         # non-image files inside class folders
    not_files: dict[str, str]                  # entries named like images that are no regular file: path -> why
    problems: list[LayoutProblem]              # structural problems


def find_split_dir(root: str, split: str) -> str | None:
    """The folder holding ``split`` under ``root`` (accepting ``val`` for validation), or None."""
    present = [name for name in _SPLIT_ALIASES[split] if os.path.isdir(os.path.join(root, name))]
    if len(present) > 1:
        raise DatasetError(f"{root} has both {' and '.join(present)}/ folders: keep one validation split")
    return os.path.join(root, present[0]) if present else None


def list_class_files(split_dir: str) -> tuple[dict[str, list[str]], list[str]]:
    """``{class: sorted image paths}`` for every class folder of a split, and the other entries
    (non-image files, and entries named like images that are no regular file)."""
    files, ignored, not_files = _walk_split(split_dir)
    return files, ignored + sorted(not_files)


def _walk_split(split_dir: str) -> tuple[dict[str, list[str]], list[str], dict[str, str]]:
    """``({class: sorted image paths}, non-image files, {entry named like an image that is no
    regular file: why})`` of a split folder.

    Class folders are searched recursively; hidden files and folders (``.DS_Store``,
    ``.ipynb_checkpoints``) are skipped silently. Links to folders are not followed.
    """
    files, ignored, not_files = {}, [], {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            ignored.append(entry.path)
            continue
        images = []
        for folder, subdirs, names in os.walk(entry.path):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            linked = [d for d in subdirs if is_image_file(d) and os.path.islink(os.path.join(folder, d))]
            for name in sorted(names + linked):
                if name.startswith("."):
                    continue
                path = os.path.join(folder, name)
                if not is_image_file(name):
                    ignored.append(path)
                elif why := not_a_file(path):
                    not_files[path] = why
                else:
                    images.append(path)
        files[entry.name] = sorted(images)
    return files, ignored, not_files


def inspect_layout(data_dir: str | os.PathLike) -> LayoutScan:
    """List every split, class and image file, collecting the structural problems found.

    Raises :class:`DatasetError` when the folder or its train split is missing; collects class
    folders with no images, a train split with no class folders and class sets that differ
    between splits. A missing validation split is not a problem here: ``val_split`` may carve it.
    """
    root = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder {root} does not exist")
    split_dirs = {split: path for split in SPLIT_NAMES if (path := find_split_dir(root, split))}
    if "train" not in split_dirs:
        found = sorted(e.name for e in os.scandir(root) if e.is_dir())
        raise DatasetError(
            f"{root} has no train/ folder (found: {', '.join(found) or 'nothing'}); expected "
            "data_dir/train/<class>/<images>, plus validation/ (or val/) and optionally test/")

    files, ignored, not_files, problems = {}, [], {}, []
    for split, path in split_dirs.items():
        files[split], split_ignored, split_not_files = _walk_split(path)
        ignored += split_ignored
        not_files.update(split_not_files)
        for name, images in files[split].items():
            if not images:
                folder = os.path.join(path, name)
                problems.append(LayoutProblem("empty_class", folder, f"empty class folder {folder}: "
                                              f"no {'/'.join(IMAGE_EXTENSIONS)} images in it"))
    if not files["train"]:
        problems.append(LayoutProblem("no_classes", split_dirs["train"],
                                      f"{split_dirs['train']} has no class folders"))
    train_classes = set(files["train"])
    for split, path in split_dirs.items():
        if split != "train" and set(files[split]) != train_classes:
            problems.append(LayoutProblem("class_mismatch", path,
                                          _class_mismatch(split, train_classes, set(files[split]))))
    return LayoutScan(root, split_dirs, files, ignored, not_files, problems)


def scan_dataset(data_dir: str | os.PathLike, val_split: float = 0.0, seed: int = 0) -> DatasetSplits:
    """Read a dataset folder into labelled sample lists.

    Without a validation (or val) folder, ``val_split`` in (0, 1) carves a stratified validation
    split out of train: per class, a seeded shuffle puts ``round(val_split * n)`` images (at least
    one, and never all of them) in validation. With a validation folder, ``val_split`` is ignored.
    Raises :class:`DatasetError` for a missing train folder, a missing validation split without
    ``val_split``, empty class folders and class sets that differ between splits. Entries named
    like images that are no regular file are left out and listed in ``not_files``.
    """
    if not 0.0 <= val_split < 1.0:
        raise DatasetError(f"val_split must be in [0, 1), got {val_split}")
    scan = inspect_layout(data_dir)
    if scan.problems:
        raise DatasetError(f"dataset {scan.root} cannot be used:\n  "
                           + "\n  ".join(p.message for p in scan.problems))
    classes = sorted(scan.files["train"])
    label_of = {name: label for label, name in enumerate(classes)}

    def samples(split: str) -> list[Sample]:
        by_class = scan.files.get(split, {})
        return [Sample(path, label_of[name]) for name in classes for path in by_class.get(name, [])]

    train, validation, carved = samples("train"), samples("validation"), False
    if "validation" not in scan.split_dirs:
        if val_split <= 0.0:
            raise DatasetError(
                f"{scan.root} has no validation/ (or val/) folder; add one, or carve one from "
                "train with val_split (e.g. --val-split 0.2)")
        train, validation = carve_validation(train, val_split, seed, classes)
        carved = True
    return DatasetSplits(scan.root, classes, train, validation, samples("test"), carved, scan.not_files)


def carve_validation(train: list[Sample], fraction: float, seed: int,
                     classes: list[str]) -> tuple[list[Sample], list[Sample]]:
    """Split ``train`` into (train, validation), stratified by label; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    kept, carved = [], []
    for label in sorted({s.label for s in train}):
        members = [s for s in train if s.label == label]
        if len(members) < 2:
            raise DatasetError(f"class {classes[label]} has {len(members)} training image: cannot "
                               "carve a validation split from it; add images or a validation/ folder")
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        chosen = set(rng.permutation(len(members))[:count].tolist())
        for position, sample in enumerate(members):
            (carved if position in chosen else kept).append(sample)
    return kept, carved


def _class_mismatch(split: str, train_classes: set[str], other: set[str]) -> str:
    parts = []
    if missing := sorted(train_classes - other):
        parts.append(f"missing from {split}: {', '.join(missing)}")
    if extra := sorted(other - train_classes):
        parts.append(f"only in {split}, not in train: {', '.join(extra)}")
    return f"class folders differ between train and {split} ({'; '.join(parts)})"
