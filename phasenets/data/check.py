"""The data preflight: find every file and folder that would break or skew training, up front.

``check_dataset`` fully decodes every image (threads: PIL decodes with the GIL released), hashes
its bytes, and reports problems in three severities:

- ``fatal``: training cannot use it as it is. Bad files are *skippable*: ``filter_bad`` drops them
  (``--on-bad-image skip``): ``not_a_file`` (named like an image, but a FIFO, socket, device,
  link to a folder, dangling link or link loop: never opened), ``unreadable`` (cannot be opened),
  ``too_large`` (over the byte or pixel limit of :mod:`phasenets.data.images`: refused before it
  is read or decoded), ``empty_file``, ``not_an_image``, ``corrupt``, ``unsupported_mode``. Layout
  problems (``layout``, ``empty_class``, ``no_classes``, ``class_mismatch``) are not.
- ``converted``: the loaders convert it (``converted``: CMYK, 16-bit, alpha); nothing to do.
- ``warning``: usable, worth a look (``too_small``, ``duplicate`` across splits, ``ignored_file``
  with a non-image extension, ``no_validation``).

One rule says what is too small, whoever asks (``phasenets train`` passes its ``--image-size``,
``phasenets data check`` its own): :func:`too_small_below`. Without an image size only
:data:`MIN_SIDE` applies, so ``data check`` flags fewer images than a training at 32 px or more
unless it is given the same ``--image-size``; each report keeps the threshold it used.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from PIL import UnidentifiedImageError
from tqdm import tqdm

from phasenets.data.images import (IMAGE_EXTENSIONS, BadImageError, conversion_note, open_image_file, read_header,
                                   to_channels)
from phasenets.data.layout import SPLIT_NAMES, DatasetError, DatasetSplits, Sample, inspect_layout

SEVERITIES = ("fatal", "converted", "warning")
MIN_SIDE = 8  # pixels: a shorter side below this is too small for any network input size


def too_small_below(image_size: int | None = None, crop_size: int | None = None) -> int:
    """The side in pixels below which an image is reported ``too_small``: the largest of
    :data:`MIN_SIDE`, half of ``image_size`` (the network's input side: more than 2x upscaling)
    and ``crop_size``."""
    return max(MIN_SIDE, (image_size or 0) // 2, crop_size or 0)


@dataclass(frozen=True)
class Problem:
    path: str          # the file or folder concerned
    kind: str          # e.g. "corrupt", "empty_class"; see the module docstring
    message: str
    severity: str      # one of SEVERITIES
    skippable: bool = False  # a bad file that filter_bad can leave out


@dataclass
class CheckReport:
    root: str
    num_images: int
    problems: list[Problem]
    image_size: int | None = None  # the network input side the check was run for, if given
    min_side: int = MIN_SIDE       # its too_small threshold: too_small_below(image_size, crop_size)

    @property
    def ok(self) -> bool:
        """True when nothing fatal was found."""
        return not any(p.severity == "fatal" for p in self.problems)

    @property
    def bad_files(self) -> list[str]:
        """Files that would break training and can be skipped."""
        return sorted({p.path for p in self.problems if p.severity == "fatal" and p.skippable})

    @property
    def blocking(self) -> list[Problem]:
        """Fatal problems that skipping bad files does not fix."""
        return [p for p in self.problems if p.severity == "fatal" and not p.skippable]

    def count(self, severity: str) -> int:
        return sum(p.severity == severity for p in self.problems)

    def format(self) -> str:
        """A human-readable report: problems grouped by severity, then a one-line verdict."""
        lines = []
        for severity in SEVERITIES:
            found = [p for p in self.problems if p.severity == severity]
            if found:
                lines.append(f"{severity} ({len(found)}):")
                lines += [f"  [{p.kind}] {os.path.relpath(p.path, self.root)}: {p.message}" for p in found]
        verdict = "OK" if self.ok else "NOT OK"
        if not self.ok and not self.blocking:
            verdict += " (--on-bad-image skip would leave out the bad files)"
        lines.append(f"{self.root}: {self.num_images} images, {self.count('fatal')} fatal, "
                     f"{self.count('converted')} converted, {self.count('warning')} warnings "
                     f"(too small: under {self.min_side} px on a side): {verdict}")
        return "\n".join(lines)


def check_dataset(data_dir: str | os.PathLike, image_size: int | None = None,
                  crop_size: int | None = None, num_workers: int | None = None,
                  progress: bool | None = None, max_bytes: int | None = None,
                  max_pixels: int | None = None) -> CheckReport:
    """Scan and fully decode a dataset folder; see the module docstring for what is reported.

    ``progress`` None shows a progress bar only on a terminal. ``max_bytes`` and ``max_pixels``
    override :data:`~phasenets.data.images.MAX_FILE_BYTES` and
    :data:`~phasenets.data.images.MAX_IMAGE_PIXELS`; memory stays within one decoded image per
    thread whatever the files hold.
    """
    root = os.path.abspath(os.fspath(data_dir))
    min_side = too_small_below(image_size, crop_size)
    try:
        scan = inspect_layout(root)
    except DatasetError as error:
        return CheckReport(root, 0, [Problem(root, "layout", str(error), "fatal")], image_size, min_side)
    problems = [Problem(p.path, p.kind, p.message, "fatal") for p in scan.problems]
    if "validation" not in scan.split_dirs:
        problems.append(Problem(root, "no_validation", "no validation/ (or val/) folder: train needs "
                                "--val-split to carve one", "warning"))
    problems += [Problem(path, "ignored_file", f"not a {'/'.join(IMAGE_EXTENSIONS)} file, ignored",
                         "warning") for path in scan.ignored]
    problems += [Problem(path, "not_a_file", why, "fatal", skippable=True) for path, why in scan.not_files.items()]

    split_of = {path: split for split, by_class in scan.files.items()
                for images in by_class.values() for path in images}
    digests = defaultdict(list)
    with ThreadPoolExecutor(max_workers=num_workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda path: _inspect_image(path, min_side, max_bytes, max_pixels), split_of)
        bar = tqdm(zip(split_of, results), total=len(split_of), unit="img", desc="checking images",
                   disable=None if progress is None else not progress)  # None: on a terminal only
        for path, (digest, found) in bar:
            problems += found
            if digest is not None:
                digests[digest].append(path)
    problems += _cross_split_duplicates(root, digests, split_of)
    problems.sort(key=lambda p: (SEVERITIES.index(p.severity), p.path, p.kind))
    return CheckReport(root, len(split_of), problems, image_size, min_side)


def filter_bad(splits: DatasetSplits, report: CheckReport) -> DatasetSplits:
    """``splits`` without the report's bad files (indices are renumbered by the new lists).

    Raises :class:`DatasetError` when leaving them out would empty a class of a split.
    """
    bad = set(report.bad_files)

    def keep(samples: list[Sample], split: str) -> list[Sample]:
        kept = [s for s in samples if s.path not in bad]
        emptied = sorted({splits.classes[s.label] for s in samples} - {splits.classes[s.label] for s in kept})
        if emptied:
            raise DatasetError(f"leaving out bad files empties class(es) {', '.join(emptied)} of {split}")
        return kept

    return replace(splits, train=keep(splits.train, "train"),
                   validation=keep(splits.validation, "validation"), test=keep(splits.test, "test"))


def _inspect_image(path: str, min_side: int, max_bytes: int | None,
                   max_pixels: int | None) -> tuple[str | None, list[Problem]]:
    """(sha1 of the bytes, or None for a bad file; problems) for one file. The file is hashed and
    decoded from disk, never held in memory whole."""
    try:
        with open_image_file(path, max_bytes) as file:
            digest = _sha1(file)
            if file.tell() == 0:
                raise BadImageError(path, "zero-byte file", "empty_file")
            file.seek(0)
            return digest, _decode(file, path, min_side, max_pixels)
    except BadImageError as error:
        return None, [Problem(path, error.kind, error.reason, "fatal", skippable=True)]


def _sha1(file) -> str:
    digest = hashlib.sha1()
    for block in iter(lambda: file.read(2**20), b""):
        digest.update(block)
    return digest.hexdigest()


def _decode(file, path: str, min_side: int, max_pixels: int | None) -> list[Problem]:
    """The warnings of one decodable image; :class:`BadImageError` for an image training cannot use."""
    try:
        image = read_header(file, path, max_pixels)
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image file (its contents match no image format)", "not_an_image") from None
    except BadImageError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to parse the header makes the file bad
        raise BadImageError(path, f"header cannot be read: {error}") from None
    with image:
        try:
            image.load()
        except Exception as error:  # noqa: BLE001 - truncated or broken streams
            raise BadImageError(path, f"cannot be decoded ({image.format}): {error}") from None
        try:
            to_channels(image, 3)
        except Exception as error:  # noqa: BLE001
            raise BadImageError(path, f"mode {image.mode} cannot be converted to RGB: {error}",
                                "unsupported_mode") from None
        problems = []
        if note := conversion_note(image):
            problems.append(Problem(path, "converted", note, "converted"))
        width, height = image.size
        if min(width, height) < min_side:
            problems.append(Problem(path, "too_small", f"{width}x{height} pixels, smaller than {min_side} "
                                    "on a side: it will be upscaled", "warning"))
    return problems


def _cross_split_duplicates(root: str, digests: dict[str, list[str]], split_of: dict[str, str]) -> list[Problem]:
    """One warning per set of identical files found in more than one split, on its first file."""
    problems = []
    for first, *others in digests.values():
        splits = sorted({split_of[p] for p in (first, *others)}, key=SPLIT_NAMES.index)
        if len(splits) > 1:
            where = "evaluation would see training data" if "train" in splits else "the evaluation splits overlap"
            copies = ", ".join(os.path.relpath(path, root) for path in others)
            problems.append(Problem(first, "duplicate", f"identical to {copies} (one image in "
                                    f"{' and '.join(splits)}: {where})", "warning"))
    return problems
