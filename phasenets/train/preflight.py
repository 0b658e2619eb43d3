"""The data preflight of ``phasenets train``: every image is decoded once before the first step.

`check_images` runs `phasenets.data.check_dataset` over the dataset folder, or reuses the report a
run directory keeps (``preflight.json``) when none of the files changed (same paths, sizes and
modification times): a resumed run, or a second start after fixing a flag, begins at once. `apply_report` then stops the run with the
list of unreadable images (``--on-bad-image error``, the default) or leaves them out (``skip``).
Only the images the task uses count: a broken file of a class a hierarchy leaves out stops nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from phasenets.data.check import CheckReport, Problem, check_dataset, filter_bad
from phasenets.data.layout import DatasetError, DatasetSplits

__all__ = ["BAD_IMAGE_ACTIONS", "REPORT_FILE", "apply_report", "check_images"]

REPORT_FILE = "preflight.json"
BAD_IMAGE_ACTIONS = ("error", "skip")  # what apply_report does with unreadable images

log = logging.getLogger("phasenets")


def check_images(splits: DatasetSplits, image_size: int | None = None, run_dir: Path | None = None) -> CheckReport:
    """The preflight report of ``splits.root``: the one kept in ``run_dir`` if still valid, else a fresh
    check, which is then kept there (``run_dir`` is created if needed: the file alone does not make
    it a run directory that ``--output`` refuses)."""
    key = _files_key(splits, image_size)
    kept = None if run_dir is None else Path(run_dir) / REPORT_FILE
    if kept is not None and kept.is_file():
        stored = json.loads(kept.read_text())
        if stored.get("key") == key:
            log.info("preflight: no file changed since %s was written; its report stands", kept)
            return _report_from_dict(stored["report"])
    log.info("preflight: checking every image under %s (--skip-preflight skips this, unsafely)", splits.root)
    report = check_dataset(splits.root, image_size=image_size)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_name(f"{kept.name}.partial-{os.getpid()}")
        partial.write_text(json.dumps({"key": key, "report": asdict(report)}))
        partial.replace(kept)  # a reader never sees half a file
    return report


def apply_report(splits: DatasetSplits, report: CheckReport, on_bad_image: str = "error") -> DatasetSplits:
    """``splits`` as training may use them: raise `DatasetError` listing the problems, or leave bad images out.

    Problems no skipping can fix (an empty class folder, classes differing between splits) always
    raise; unreadable images raise with ``on_bad_image="error"`` and are left out with ``"skip"``.
    """
    used = {sample.path for name in ("train", "validation", "test") for sample in splits.split(name)}
    bad = [p for p in report.problems if p.path in used and p.severity == "fatal" and p.skippable]
    if report.blocking:
        raise DatasetError(_listing(report, report.blocking, "problem(s) that stop training"))
    if bad and on_bad_image == "error":
        raise DatasetError(_listing(report, bad, "unreadable image(s)")
                           + "\nfix or delete them, or pass --on-bad-image skip to train without them")
    if bad:
        log.warning("preflight: leaving out %d unreadable image(s) (--on-bad-image skip):\n%s", len(bad),
                    "\n".join(_lines(report, bad)))
        splits = filter_bad(splits, report)
    notes = report.count("converted") + report.count("warning")
    log.info("preflight: %d images checked, %d left out, %d converted, %d warnings%s", report.num_images, len(bad),
             report.count("converted"), report.count("warning"),
             f" (phasenets data check {report.root} lists them)" if notes else "")
    return splits


def _files_key(splits: DatasetSplits, image_size: int | None) -> str:
    """A digest of every file's path, size and mtime (and of what the check's size warnings use)."""
    content = json.dumps([splits.root, image_size, splits.manifest()])
    return hashlib.sha256(content.encode()).hexdigest()


def _report_from_dict(values: dict) -> CheckReport:
    return CheckReport(values["root"], values["num_images"], [Problem(**problem) for problem in values["problems"]])


def _listing(report: CheckReport, problems: list[Problem], what: str) -> str:
    return f"the preflight found {len(problems)} {what} in {report.root}:\n" + "\n".join(_lines(report, problems))


def _lines(report: CheckReport, problems: list[Problem]) -> list[str]:
    return [f"  [{p.kind}] {os.path.relpath(p.path, report.root)}: {p.message}" for p in problems]
