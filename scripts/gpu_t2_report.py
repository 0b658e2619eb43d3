"""T2 on a GPU from the training runs of ``scripts/gpu_checks.sh``: writes ``t2-gpu.json`` and
``t2-gpu.md`` (wall and training time, test accuracy of each run, the GPU they ran on).

    python scripts/gpu_t2_report.py --out DIR --runs RUNS_DIR --steps STEPS_TSV NAME...

Each NAME is a run directory under RUNS_DIR holding the run's ``summary.json`` and a step of that
name in STEPS_TSV (``name<TAB>status<TAB>seconds<TAB>limit``, the script's record of each step).
T2 is the phase-wise run reading its cache over standard training with the same epochs per phase,
by the trainer's own time (``summary.json``'s ``seconds``: startup and imports left out); the wall
time of each whole command is shown beside it. A run that failed or left no summary is listed as
such and T2 is then not judged.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

T2_TARGET = 1.0  # whole phase-wise run (cache) / standard training, same epochs per phase
CACHED, STANDARD = "phasewise-cache-cuda", "standard"


def read_steps(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as file:
        return {row["name"]: row for row in csv.DictReader(file, delimiter="\t",
                                                             fieldnames=["name", "status", "seconds", "limit"])}


def read_run(run_dir: Path, step: dict[str, str] | None) -> dict:
    record = {"status": step["status"] if step else "not run", "wall_seconds": float(step["seconds"]) if step else None}
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return record
    summary = json.loads(summary_path.read_text())
    config = summary["config"]
    record.update({
        "schedule": config["schedule"], "cache": cache_label(summary["cache"]),
        "amp": config["amp"], "image_size": config["image_size"], "batch_size": config["batch_size"],
        "max_epochs": config["max_epochs"], "phases": len(summary["phases"]),
        "epochs": sum(phase["epochs"] for phase in summary["phases"]),
        "train_seconds": round(summary["seconds"], 2),
        "final_split": summary["final"]["split"], "final_accuracy": summary["final"]["accuracy"],
    })
    return record


def device_description() -> dict[str, str]:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return {"gpu": gpu, "torch": torch.__version__, "cuda": str(torch.version.cuda)}


def judge_t2(runs: dict[str, dict]) -> dict:
    cached, standard = runs.get(CACHED, {}), runs.get(STANDARD, {})
    if "train_seconds" not in cached or "train_seconds" not in standard or cached["status"] != "ok" \
            or standard["status"] != "ok":
        return {"ratio": None, "target": T2_TARGET, "met": None, "note": f"needs the {CACHED} and {STANDARD} runs"}
    ratio = cached["train_seconds"] / standard["train_seconds"]
    return {"ratio": round(ratio, 3), "target": T2_TARGET, "met": ratio <= T2_TARGET,
            "note": f"{CACHED} / {STANDARD}, training seconds"}


def markdown(report: dict) -> str:
    device, runs, t2 = report["device"], report["runs"], report["t2"]
    lines = [
        "# T2 on the GPU: a whole phase-wise run against standard training",
        "",
        f"{device['gpu']}, torch {device['torch']} (CUDA {device['cuda']}). AlexNet on Fashion-MNIST (50 training "
        "images per class, 28 px upscaled), the same epochs per phase in every run. Made by "
        "`bash scripts/gpu_checks.sh`.",
        "",
        "| run | schedule | cache | amp | px | batch | phases | epochs | status | wall s | training s | accuracy |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, run in runs.items():
        if "train_seconds" not in run:
            lines.append(f"| {name} | | | | | | | | {run['status']} | {_number(run['wall_seconds'])} | | |")
            continue
        lines.append(
            f"| {name} | {run['schedule']} | {run['cache']} | {run['amp']} | {run['image_size']} | {run['batch_size']} | "
            f"{run['phases']} | {run['epochs']} | {run['status']} | {_number(run['wall_seconds'])} | "
            f"{run['train_seconds']:.1f} | {run['final_accuracy']:.3f} ({run['final_split']}) |")
    verdict = "not judged" if t2["met"] is None else ("met" if t2["met"] else "NOT met")
    ratio = "n/a" if t2["ratio"] is None else f"{t2['ratio']:.2f}x"
    lines += ["", f"**T2**: {ratio} (target <= {t2['target']:.1f}x): {verdict}; {t2['note']}.", ""]
    return "\n".join(lines)


def cache_label(cache: dict) -> str:
    """What the run's feature cache held, from its summary's record: the tiers, and the images
    (level 0) and frozen blocks' outputs (levels 1 and up) with their storage dtypes."""
    if not cache["enabled"]:
        return "off"
    levels = cache["levels"]
    kept = [f"{what} {'/'.join(sorted({record['dtype'] for record in records}))}"
            for what, records in (("features", [r for r in levels if r["level"] > 0]),
                                  ("images", [r for r in levels if r["level"] == 0])) if records]
    tiers = "/".join(sorted({record["tier"] for record in levels})) or "on"
    return f"{tiers} ({', '.join(kept) or 'nothing kept'})"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where t2-gpu.json and t2-gpu.md go")
    parser.add_argument("--runs", type=Path, required=True, help="the folder holding one folder per run")
    parser.add_argument("--steps", type=Path, required=True, help="gpu_checks.sh's steps.tsv")
    parser.add_argument("names", nargs="+", help="the runs, in the order of the table")
    args = parser.parse_args(argv)
    steps = read_steps(args.steps) if args.steps.is_file() else {}
    runs = {name: read_run(args.runs / name, steps.get(name)) for name in args.names}
    report = {"device": device_description(), "runs": runs, "t2": judge_t2(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "t2-gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "t2-gpu.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
