"""The accuracy study (issue 8) as a script: ``python benchmarks/accuracy.py [--quick] [options]``.

The same as ``phasenets bench accuracy``; the logic lives in ``phasenets/study.py`` so that the
installed command can run it. By default the records go to the committed
``benchmarks/accuracy-results.jsonl`` (so that the study's raw data travel with the repository and
any machine can extend it), the table into ``benchmarks/ACCURACY.md`` (the notes around its
generated block are kept), a copy of the table into ``benchmarks/RESULTS.md`` (under its
"Accuracy study" heading) and the plot into ``benchmarks/accuracy.png``. ``--quick`` (a smoke run)
keeps all of them in its own output folder instead, as ``phasenets bench accuracy`` does.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from phasenets.study import add_study_arguments, run_from_args  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without --quick, --results defaults to benchmarks/accuracy-results.jsonl (committed) and "
               "--report to benchmarks/ACCURACY.md; with these two the table is copied into benchmarks/RESULTS.md too.")
    add_study_arguments(parser)
    args = parser.parse_args()
    also_into = []
    if not args.quick:  # a smoke run's records would mix into the committed study
        args.results = args.results or os.path.relpath(HERE / "accuracy-results.jsonl")
        args.report = args.report or os.path.relpath(HERE / "ACCURACY.md")
        committed = (Path(args.results).resolve(), Path(args.report).resolve()) == (
            HERE / "accuracy-results.jsonl", HERE / "ACCURACY.md")
        if committed:  # the committed study's table goes into RESULTS.md too
            also_into.append(os.path.relpath(HERE / "RESULTS.md"))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    outcome = run_from_args(args, program="python benchmarks/accuracy.py", also_into=also_into)
    print(outcome.summary())
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
