"""The data preflight of ``phasenets train``: every image is checked once per dataset, before the first step.

`check_images` runs `phasenets.data.check_dataset` over the dataset folder, unless a report of the
folder in the same state is kept. Reports are kept under a key: the sha256 of the folder's layout
scan (every image's path, size and modification time, the entries named like images that are no
file, the other files) and of what the check was asked (the too-small threshold, the byte and pixel
limits, the phasenets version). They are kept in two places:

- a user-level cache folder, `cache_dir()`: ``$PHASENETS_CACHE_DIR/preflight`` when set, else
  ``$XDG_CACHE_HOME/phasenets/preflight``, else ``~/.cache/phasenets/preflight``; one
  ``<key>.json`` per dataset state, so a new run on an unchanged dataset begins at once;
- the run directory (``preflight.json``), so every run records the report it trained under.

Any added, removed, rewritten or touched file changes the key and the check runs again. A kept
report that cannot be read or parsed only costs a fresh check; one that cannot be written only
costs the next run its reuse. `apply_report` then stops the run with the list of unreadable images
(``--on-bad-image error``, the default) or leaves them out (``skip``). Only the class folders the
task uses count: a broken file of a class a hierarchy leaves out stops nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from phasenets._version import __version__
from phasenets._atomic import write_atomically
from phasenets.data import images
from phasenets.data.check import CheckReport, Problem, check_dataset, filter_bad, too_small_below
from phasenets.data.layout import DatasetError, DatasetSplits, inspect_layout

__all__ = ["BAD_IMAGE_ACTIONS", "REPORT_FILE", "apply_report", "cache_dir", "check_images"]

REPORT_FILE = "preflight.json"
BAD_IMAGE_ACTIONS = ("error", "skip")  # what apply_report does with unreadable images
CACHE_ENV = "PHASENETS_CACHE_DIR"
LISTED_NOTES = 10  # converted and warned files named in the log; `phasenets data check` lists the rest

log = logging.getLogger("phasenets")


def cache_dir() -> Path:
    """The folder of preflight reports kept across runs (see the module docstring)."""
    if override := os.environ.get(CACHE_ENV):
        return Path(override).expanduser() / "preflight"
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is invalid and ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "phasenets" / "preflight"


def check_images(splits: DatasetSplits, image_size: int | None = None, run_dir: Path | None = None) -> CheckReport:
    """The preflight report of ``splits.root``: a kept one of the folder in its present state, else a
    fresh check. It is kept in `cache_dir()` and, given ``run_dir``, as ``run_dir/preflight.json``
    (``run_dir`` is created if needed: the file alone does not make it a run directory that
    ``--output`` refuses)."""
    key = _dataset_key(splits.root, image_size)
    cached = cache_dir() / f"{key}.json"
    in_run = None if run_dir is None else Path(run_dir) / REPORT_FILE
    for source in (cached, in_run):
        if source is not None and (report := _read_kept(source, key)) is not None:
            log.info("preflight: reusing the report of an unchanged dataset (%d images, from %s)",
                     report.num_images, source)
            break
    else:
        log.info("preflight: checking every image under %s (--skip-preflight skips this, unsafely)", splits.root)
        report, source = check_dataset(splits.root, image_size=image_size), None
    payload = json.dumps({"key": key, "report": asdict(report)})
    if source != cached:
        try:
            _write(cached, payload)
        except OSError as error:
            log.warning("preflight: cannot keep the report in %s (%s); the next run checks every image again",
                        cached.parent, error)
    if in_run is not None and source != in_run:
        _write(in_run, payload)
    return report


def apply_report(splits: DatasetSplits, report: CheckReport, on_bad_image: str = "error") -> DatasetSplits:
    """``splits`` as training may use them: raise `DatasetError` listing the problems, or leave bad images out.

    Problems no skipping can fix (an empty class folder, classes differing between splits) always
    raise; bad files of the class folders the splits use raise with ``on_bad_image="error"`` and
    are left out with ``"skip"``. The closing log line names the converted and warned files.
    """
    used = {_class_folder(splits.root, sample.path) for name in ("train", "validation", "test")
            for sample in splits.split(name)}
    bad = [p for p in report.problems
           if p.severity == "fatal" and p.skippable and _class_folder(splits.root, p.path) in used]
    if report.blocking:
        raise DatasetError(_listing(report, report.blocking, "problem(s) that stop training"))
    if bad and on_bad_image == "error":
        raise DatasetError(_listing(report, bad, "unreadable image(s)")
                           + "\nfix or delete them, or pass --on-bad-image skip to train without them")
    if bad:
        log.warning("preflight: leaving out %d unreadable image(s) (--on-bad-image skip):\n%s", len(bad),
                    "\n".join(_lines(report, bad)))
        splits = filter_bad(splits, report)
    notes = [p for p in report.problems if p.severity != "fatal"]
    log.info("preflight: %d images checked, %d left out, %d converted, %d warnings%s", report.num_images, len(bad),
             report.count("converted"), report.count("warning"), _notes(report, notes))
    return splits


def _dataset_key(root: str, image_size: int | None) -> str:
    """A digest of everything a check of ``root`` reports on: the layout scan with every image's
    path, size and mtime, and the check's settings."""
    scan = inspect_layout(root)
    paths = sorted(path for by_class in scan.files.values() for images_of_class in by_class.values()
                   for path in images_of_class)
    manifest = [(path, *_size_and_mtime(path)) for path in paths]
    content = json.dumps({
        "root": scan.root, "splits": scan.split_dirs, "images": manifest, "not_files": scan.not_files,
        "ignored": scan.ignored, "min_side": too_small_below(image_size), "max_bytes": images.MAX_FILE_BYTES,
        "max_pixels": images.MAX_IMAGE_PIXELS, "phasenets": __version__,
    }, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()


def _size_and_mtime(path: str) -> tuple[int, int] | tuple[str]:
    try:
        info = os.stat(path)
    except OSError as error:  # gone since the scan: the check reports what it finds
        return (error.strerror,)
    return info.st_size, info.st_mtime_ns


def _read_kept(path: Path, key: str) -> CheckReport | None:
    """The report kept at ``path`` under ``key``; None when absent, of another key, or unusable."""
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") != key:
            return None
        return _report_from_dict(stored["report"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("preflight: ignoring the kept report %s, which cannot be read (%s)", path, error)
        return None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(text))  # a reader never sees half a file


def _report_from_dict(values: dict) -> CheckReport:
    return CheckReport(**{**values, "problems": [Problem(**problem) for problem in values["problems"]]})


def _class_folder(root: str, path: str) -> tuple[str, ...]:
    """``(split folder, class folder)`` of a path inside the dataset."""
    return tuple(os.path.relpath(path, root).split(os.sep)[:2])


def _notes(report: CheckReport, notes: list[Problem]) -> str:
    if not notes:
        return ""
    text = f" (too small: under {report.min_side} px on a side):\n" + "\n".join(_lines(report, notes[:LISTED_NOTES]))
    if len(notes) > LISTED_NOTES:
        size = f" --image-size {report.image_size}" if report.image_size else ""
        text += f"\n  ... and {len(notes) - LISTED_NOTES} more: phasenets data check {report.root}{size} lists them all"
    return text


def _listing(report: CheckReport, problems: list[Problem], what: str) -> str:
    return f"the preflight found {len(problems)} {what} in {report.root}:\n" + "\n".join(_lines(report, problems))


def _lines(report: CheckReport, problems: list[Problem]) -> list[str]:
    return [f"  [{p.kind}] {os.path.relpath(p.path, report.root)}: {p.message}" for p in problems]
