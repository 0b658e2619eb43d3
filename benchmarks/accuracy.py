"""The accuracy study as a script: ``python benchmarks/accuracy.py [--quick] [options]``.

The study's logic lives in ``benchmarks/study.py`` (a research harness, kept outside the library
as torchvision keeps ``references/``). By default the records go to the committed
``benchmarks/accuracy-results.jsonl`` (so that the study's raw data travel with the repository and
any machine can extend it), the table into ``benchmarks/ACCURACY.md`` (the notes around its
generated block are kept), a copy of the table into ``benchmarks/RESULTS.md`` (under its
"Accuracy study" heading) and the plot into ``benchmarks/accuracy.png``. ``--quick`` (a smoke run)
keeps all of them in its own output folder (``--output``) instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # phasenets from this checkout, and study.py beside this file

from study import add_study_arguments, run_from_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the study as the command line (``argv``, default ``sys.argv[1:]``) says; the exit code:
    0 when every run finished, 1 when one failed, 2 for a bad option."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without --quick, --results defaults to benchmarks/accuracy-results.jsonl (committed) and "
               "--report to benchmarks/ACCURACY.md; with these two the table is copied into benchmarks/RESULTS.md too.")
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    also_into = []
    if not args.quick:  # a smoke run's records would mix into the committed study
        args.results = args.results or os.path.relpath(HERE / "accuracy-results.jsonl")
        args.report = args.report or os.path.relpath(HERE / "ACCURACY.md")
        committed = (Path(args.results).resolve(), Path(args.report).resolve()) == (
            HERE / "accuracy-results.jsonl", HERE / "ACCURACY.md")
        if committed:  # the committed study's table goes into RESULTS.md too
            also_into.append(os.path.relpath(HERE / "RESULTS.md"))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        outcome = run_from_args(args, program="python benchmarks/accuracy.py", also_into=also_into)
    except ValueError as error:
        print(f"accuracy.py: error: {error}", file=sys.stderr)
        return 2
    print(outcome.summary())
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
