"""The accuracy study (issue 8) as a script: ``python benchmarks/accuracy.py [--quick] [options]``.

The same as ``phasenets bench accuracy``; the logic lives in ``phasenets/study.py`` so that the
installed command can run it. By default the table goes into ``benchmarks/ACCURACY.md`` (the
notes around its generated block are kept) and the plot into ``benchmarks/accuracy.png``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from phasenets.study import add_study_arguments, run_from_args  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    parser.set_defaults(report=os.path.relpath(Path(__file__).with_name("ACCURACY.md")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    outcome = run_from_args(args, program="python benchmarks/accuracy.py")
    print(f"{outcome.new_runs} new runs, {len(outcome.records)} in all; table: {outcome.report}; plot: {outcome.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
