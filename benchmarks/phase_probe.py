"""Retrain one phase of a finished phase-wise run under variants, several seeds each, and report
how that phase's new block comes out: validation accuracy per epoch, test accuracy, and the share of
its ReLU units that are dead (zero for every one of the validation images).

    python benchmarks/phase_probe.py RUN_DIR --phase 5 --seeds 0,1,2 \\
        --variant base: --variant warmup:warmup_epochs=1 --variant lr1e-4:lr=0.0001 [--output OUT]

The run's resolved config is reused (data, model, head, optimizer, epochs), with ``--start-phase``
and ``--ckpt-dir`` pointing at the run, so the frozen blocks are exactly the run's; a variant's
``name:field=value,...`` overrides config fields, and the seed sets the new block's initialization
and its shuffling. Made for issue 20's AlexNet phase-5 stall: it tells a stall that comes from the
phase's own start (dead units, a validation curve that falls from its first epoch) from one the
frozen features cause. One JSON line per probe goes to OUT/probes.jsonl; a markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # phasenets from this checkout


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:field=value,...`` -> (name, {field: value}); values typed as the config file's are
    (YAML), and TrainConfig checks and converts them as it does any option."""
    from phasenets.config import parse_assignments

    name, _, assignments = text.partition(":")
    return name, parse_assignments(assignments) if assignments else {}


def dead_units(model, block, data_dir: str, normalization, images: int = 512) -> tuple[int, int]:
    """ReLU units of ``block`` that output zero for all of the first ``images`` validation images."""
    import torch
    from torch import nn

    from phasenets.data.layout import scan_dataset
    from phasenets.train.evaluate import score_samples

    alive: dict[nn.Module, torch.Tensor] = {}

    def record(module, _inputs, output):
        fired = (output > 0).flatten(2).any(-1) if output.dim() > 2 else output > 0
        seen = fired.any(0)
        alive[module] = seen if module not in alive else alive[module] | seen

    relus = [module for module in model.blocks[block - 1].modules() if isinstance(module, nn.ReLU)]
    hooks = [relu.register_forward_hook(record) for relu in relus]
    try:
        samples = scan_dataset(data_dir).split("validation")[:images]
        score_samples(model, samples, normalization, batch_size=128, loader="torch", num_workers=0, device="cpu")
    finally:
        for hook in hooks:
            hook.remove()
    total = sum(int(seen.numel()) for seen in alive.values())
    return total - sum(int(seen.sum()) for seen in alive.values()), total


def probe(run_dir: Path, phase: int, seed: int, overrides: dict, output: Path) -> dict:
    """Train the probe into ``output`` (a probe found finished there is read, not retrained)."""
    import csv

    import torch

    from phasenets import PhaseTrainer, TrainConfig
    from phasenets.train.checkpoint import Checkpoint
    from phasenets.train.evaluate import load_trained_model

    settings = Checkpoint.load(run_dir / "checkpoints" / f"phase{phase - 1}-best.pt").config
    settings = {**settings, "start_phase": phase, "ckpt_dir": str(run_dir), "seed": seed, "output": str(output),
                "resume": None, "tensorboard": False, **overrides}
    config = TrainConfig(**{key: value for key, value in settings.items() if key in TrainConfig.__dataclass_fields__})
    if not (output / "summary.json").exists():
        torch.manual_seed(seed)
        PhaseTrainer(config).fit()
    summary = json.loads((output / "summary.json").read_text())
    model, trained = load_trained_model(output)
    dead, total = dead_units(model, phase, config.data_dir, trained.normalization)
    with open(output / "metrics.csv") as handle:  # validation accuracy, epoch by epoch
        history = [float(row["accuracy"]) for row in csv.DictReader(handle)
                   if row["split"] == "validation" and int(row["phase"]) == phase]
    last = summary["phases"][-1]
    return {"phase": phase, "seed": seed, "overrides": overrides, "test_accuracy": summary["final"]["accuracy"],
            "validation_accuracy": last["validation"]["accuracy"], "epochs": last["epochs"],
            "best_epoch": last["best_epoch"], "dead_units": dead, "units": total,
            "seconds": round(summary["seconds"], 1), "history": history}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--phase", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variant", action="append", default=[], help="name:field=value,... (repeatable)")
    parser.add_argument("--output", type=Path, default=None, help="default: RUN_DIR/../probe-RUNNAME")
    args = parser.parse_args()
    output = args.output or args.run_dir.parent / f"probe-{args.run_dir.name}"
    output.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(text) for text in (args.variant or ["base:"])]
    records = []
    for name, overrides in variants:
        for seed in (int(part) for part in args.seeds.split(",")):
            record = {"variant": name, **probe(args.run_dir, args.phase, seed, overrides, output / f"{name}-seed{seed}")}
            records.append(record)
            with open(output / "probes.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(json.dumps({key: value for key, value in record.items() if key != "history"}), flush=True)
    print(f"\n| variant | seeds | test accuracy | worst seed | dead ReLU units | epochs |\n|---|---:|---:|---:|---:|---:|")
    for name, _ in variants:
        mine = [record for record in records if record["variant"] == name]
        tests = [record["test_accuracy"] for record in mine]
        dead = ", ".join(f"{record['dead_units']}/{record['units']}" for record in mine)
        epochs = ", ".join(str(record["epochs"]) for record in mine)
        print(f"| {name} | {len(mine)} | {statistics.mean(tests):.4f} | {min(tests):.4f} | {dead} | {epochs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
