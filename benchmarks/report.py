"""Run every benchmark in this folder and write ``benchmarks/RESULTS.md``.

Usage: ``python benchmarks/report.py [--json PATH] [--from-json PATH] [pytest arguments...]``

The benchmarks run once under pytest-benchmark (``--benchmark-json``); the table is made from that
JSON: each benchmark that judges a target leaves ``target_id``, ``ratio``, ``target``, ``met`` and
``note`` in its ``extra_info``; T4 (gather) and T5 (loader) ratios are computed here from their
medians. ``--from-json`` rewrites the report from an earlier run without running anything. The
sections after the table (the scale runs' and the accuracy study's, written by their own scripts and
``benchmarks/accuracy.py``) are kept. Run it
on an otherwise idle machine: ratios are measured side by side, but other jobs still skew them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
sys.path[:0] = [str(ROOT), str(HERE)]  # phasenets from this checkout, and study.py beside this file


T4_TARGETS = {"fp16": 1.0, "fp16_to_fp32": 1.0, "int8_dequant_fp32": 1.5, "int8_dequant_fp16": 1.5}
T5_TARGET = 1.3


def run_benchmarks(json_path: Path, extra: list[str]) -> tuple[list[str], int]:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pytest", str(HERE.relative_to(ROOT)), "-q", "-s", "-p", "no:cacheprovider",
               f"--benchmark-json={json_path}", *extra]
    completed = subprocess.run(command, cwd=ROOT)
    return command, completed.returncode


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        kib = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")).split()[1])
        ram = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {"CPU": cpu, "cores": str(len(os.sched_getaffinity(0))), "RAM": ram, "GPU": gpu,
            "torch": torch.__version__, "Python": platform.python_version(), "load average": _load()}


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def judged_rows(benchmarks: list[dict]) -> list[dict]:
    """Rows of the benchmarks that judged their own target (T1, T2, T3, memory)."""
    rows = []
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if "target_id" in info:
            rows.append({key: info[key] for key in ("target_id", "ratio", "target", "met", "note")})
    return rows


def _medians(benchmarks: list[dict], module: str) -> dict[str, float]:
    """Median seconds by the parametrization id of the tests in ``module``."""
    found = {}
    for bench in benchmarks:
        if bench["fullname"].split("::")[0].endswith(module):
            found[bench["param"] or bench["name"]] = bench["stats"]["median"]
    return found


def gather_rows_t4(benchmarks: list[dict]) -> list[dict]:
    medians = _medians(benchmarks, "test_gather.py")
    rows = []
    for case, target in T4_TARGETS.items():
        native, reference = medians.get(f"{case}-native"), medians.get(f"{case}-reference")
        if native is None or reference is None:
            continue
        ratio = reference / native
        rows.append({"target_id": f"T4 {case}", "ratio": round(ratio, 3), "target": f">= {target:.1f}x",
                     "met": ratio >= target,
                     "note": f"native {native * 1e6:.0f} us vs reference {reference * 1e6:.0f} us per 256-row batch"})
    return rows


def loader_rows_t5(benchmarks: list[dict]) -> list[dict]:
    medians = _medians(benchmarks, "test_loader_throughput.py")
    dali, torch_loader = medians.get("dali"), medians.get("torch")
    if dali is None or torch_loader is None:
        return []
    ratio = torch_loader / dali  # the same epoch of images: the time ratio is the rate ratio
    return [{"target_id": "T5", "ratio": round(ratio, 3), "target": f">= {T5_TARGET}x images/s", "met": ratio >= T5_TARGET,
             "note": f"DALI CPU epoch {dali:.2f}s vs DataLoader + PIL {torch_loader:.2f}s, same workers"}]


def _missed_by(row: dict) -> str:
    if row["met"]:
        return "met"
    target = row["target"]
    number = float(target.split()[1].rstrip("x%"))
    if target.startswith(">="):
        return f"MISSED by {100 * (1 - row['ratio'] / number):.0f}%"
    if "%" in target:
        return f"MISSED by {100 * row['ratio'] - number:.1f} points"
    return f"MISSED by {100 * (row['ratio'] / number - 1):.0f}%"


def render(rows: list[dict], host: dict[str, str], command: str, exit_code: int) -> str:
    lines = [
        "# Benchmark results", "",
        f"Written by `benchmarks/report.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.", "",
        "Machine: " + "; ".join(f"{key} {value}" for key, value in host.items()), "",
        f"Command: `{command}` (exit code {exit_code})", "",
        "Ratios are measured side by side in one run. Memory rows give the overhead over N x V x bytes "
        "per feature; T3 the share of step time spent waiting.", "",
        "| target | measured | target value | verdict | note |", "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['target_id']} | {row['ratio']:.3f} | {row['target']} | {_missed_by(row)} | {row['note']} |")
    if not rows:
        lines.append("| (none) | | | | no benchmark reported a target: see the pytest output |")
    return "\n".join(lines) + "\n"


def kept_sections(text: str) -> str:
    """What follows the generated table in an earlier RESULTS.md: every ``## `` section (the scale
    runs', the accuracy study's), from the first such heading to the end; "" if there is none."""
    start = text.find("\n## ")
    return text[start:] if start >= 0 else ""


def _natural_order(name: str) -> list:
    """Numbers inside a name sort as numbers: "T2 5 epochs" before "T2 15 epochs"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=HERE / ".benchmarks" / "latest.json",
                        help="where pytest-benchmark writes its JSON")
    parser.add_argument("--from-json", type=Path, default=None, help="only rewrite RESULTS.md from this JSON")
    args, extra = parser.parse_known_args(argv)
    if args.from_json is not None:
        json_path, command, exit_code = args.from_json, "(from an earlier run's JSON)", 0
    else:
        json_path = args.json
        argv_used, exit_code = run_benchmarks(json_path, extra)
        command = "python benchmarks/report.py " + shlex.join(extra) if extra else "python benchmarks/report.py"
        command += "  # runs: " + shlex.join(["python", *argv_used[1:]])
    benchmarks = json.loads(json_path.read_text())["benchmarks"] if json_path.is_file() else []
    rows = judged_rows(benchmarks) + gather_rows_t4(benchmarks) + loader_rows_t5(benchmarks)
    rows.sort(key=lambda row: _natural_order(row["target_id"]))
    kept = kept_sections(RESULTS.read_text()) if RESULTS.is_file() else ""
    RESULTS.write_text(render(rows, machine(), command, exit_code) + kept)
    print(f"wrote {RESULTS} ({len(rows)} targets)")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
