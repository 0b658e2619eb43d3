"""Phase-wise training at scale: the whole of Fashion-MNIST, and a level cache larger than the RAM.

    python benchmarks/scale.py fashion --data DATA --output OUT [--epochs 1]
    python benchmarks/scale.py beyond-ram --output OUT [--images 12000]

``fashion``: AlexNet at 64 px on DATA (``phasenets data import fashion-mnist --output DATA
--image-size 64``: the 60,000 training images as 50,000 train and 10,000 validation), all five phases, once with the level caches in RAM
(host tier), once on disk under a memory budget smaller than every level (``--cache-budget-gb
0.2``: the disk tier), and once without a cache (each phase recomputes its frozen prefix). Each run
is a process of its own; each reports its per-phase epoch times, its cache builds and its peak
resident memory.

``beyond-ram``: a network whose first block keeps 256 channels at 64 x 64 (2 MiB per image in
fp16), over synthetic images in memory, so that level 1 of ``--images`` images is larger than the
machine's free RAM (12,000 images: 24 GiB). Phase 2 reads it through the disk tier: the report gives
the build's and an epoch's time and read throughput, the disk's own sequential read speed of the
same file (its pages dropped from the page cache first), and the process's peak resident memory,
which must stay far below the cache.

Both print one JSON line per run and a markdown table (for benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # phasenets from this checkout

FASHION_RUNS = {  # name -> cache options
    "host tier": {"cache": "host"},
    "disk tier, budget 0.2 GiB": {"cache": "auto", "cache_budget_gb": 0.2},
    "no cache (recompute)": {"cache": "off"},
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------
# fashion: one run per process


def fashion_run(data: str, output: str, name: str, epochs: int) -> dict:
    from phasenets import PhaseTrainer, TrainConfig

    options = dict(FASHION_RUNS[name])
    if "cache_budget_gb" in options:
        options["cache_dir"] = str(Path(output) / "cache")
    config = TrainConfig(data_dir=data, output=output, model="alexnet", image_size=64, in_channels=1,
                         optimizer="adam", head="conv", max_epochs=epochs, patience=0, seed=0, tensorboard=False,
                         batch_size=128, warmup_epochs=0.0, **options)
    lines: list[str] = []

    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logging.getLogger("phasenets").addHandler(Keep())
    started = time.perf_counter()
    result = PhaseTrainer(config).fit()
    seconds = time.perf_counter() - started
    builds = [(int(match[1]), match[2], match[3], float(match[4])) for line in lines
              if (match := re.match(r"level (\d) cache \((\w+)\): (\w+) tier.*built in ([\d.]+)s", line))]
    epoch_seconds = {phase.name: round(phase.seconds / max(1, phase.epochs), 1) for phase in result.phases}
    return {"run": name, "seconds": round(seconds, 1), "epoch_seconds": epoch_seconds,
            "builds": [{"level": level, "split": split, "tier": tier, "seconds": build_seconds}
                       for level, split, tier, build_seconds in builds],
            "peak_rss_mib": round(peak_rss_mib()), "test_accuracy": result.test_accuracy,
            "cache_mib": None}


def fashion(args: argparse.Namespace) -> list[dict]:
    records = []
    for name in FASHION_RUNS:
        output = Path(args.output) / name.split(",")[0].replace(" ", "-")
        done = subprocess.run([sys.executable, __file__, "fashion-run", "--data", args.data, "--output", str(output),
                               "--name", name, "--epochs", str(args.epochs)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        record = json.loads(done.stdout.strip().splitlines()[-1])
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


def fashion_table(records: list[dict], args: argparse.Namespace) -> str:
    host = next(record for record in records if record["run"] == "host tier")
    phases = list(host["epoch_seconds"])
    lines = [f"| run | {' | '.join(f'{p} s/epoch' for p in phases)} | builds s | peak RSS | test acc | vs host |",
             "|---" * (len(phases) + 5) + "|"]
    for record in records:
        builds = sum(build["seconds"] for build in record["builds"])
        ratio = record["seconds"] / host["seconds"]
        lines.append(f"| {record['run']} | " + " | ".join(str(record["epoch_seconds"][p]) for p in phases)
                     + f" | {builds:.1f} | {record['peak_rss_mib']} MiB | {record['test_accuracy']:.4f} | "
                     f"{ratio:.2f}x ({record['seconds']:.0f} s) |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# beyond RAM


def beyond_ram(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from phasenets.cache import FeatureLevels, LevelSettings, Placement, SplitFeed
    from phasenets.cache.tiers import available_ram_bytes
    from phasenets.data.torch_loader import ShardedBatchSampler
    from phasenets.models import BlockwiseNet

    torch.manual_seed(0)
    torch.set_num_threads(2)
    images, size, batch = args.images, 64, 64
    model = BlockwiseNet.from_modules([
        nn.Sequential(nn.Conv2d(1, 256, 3, padding=1), nn.ReLU()),  # 256 x 64 x 64: 2 MiB per image in fp16
        nn.Sequential(nn.AvgPool2d(8), nn.Conv2d(256, 32, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 64, 10)),
    ], 10, (1, size, size))
    model.freeze_block(1)
    labels = torch.randint(0, 10, (images,))

    class SyntheticLoader:  # images made on the fly from their index: nothing held in memory
        def __init__(self):
            self.view = None

        def set_view(self, view):
            self.view = view

        def __iter__(self):
            for start in range(0, images, batch):
                indices = torch.arange(start, min(start + batch, images))
                generator = torch.Generator().manual_seed(start)
                yield torch.randn(len(indices), 1, size, size, generator=generator), labels[indices], indices

    cache_dir = Path(args.output) / "cache"
    feed = SplitFeed(labels=labels, manifest=[], make_loader=SyntheticLoader,
                     make_sampler=lambda: ShardedBatchSampler(images, batch, shuffle=True, seed=0, drop_last=False,
                                                              rank=0, world_size=1),
                     preprocessing={"synthetic": images}, augmented=False)
    levels = FeatureLevels(model, {"train": feed}, LevelSettings(1, "fp16", Placement("disk", cache_dir=cache_dir)),
                           torch.device("cpu"), info=lambda *a: None)
    free_ram = available_ram_bytes()
    started = time.perf_counter()
    source = levels.features("train", 1)
    build_seconds = time.perf_counter() - started
    cache = source.cache
    path = next(cache_dir.glob("*.pncache"))
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # from the disk, not the page cache
    started = time.perf_counter()
    while os.read(fd, 64 << 20):
        pass
    sequential = path.stat().st_size / (time.perf_counter() - started)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)

    stage = nn.Sequential(model.blocks[1])
    optimizer = torch.optim.Adam(stage.parameters(), lr=1e-3)
    started = time.perf_counter()
    steps = 0
    for features, batch_labels, _ in source:
        loss = nn.functional.cross_entropy(stage(features), batch_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    epoch_seconds = time.perf_counter() - started
    record = {"run": "beyond RAM", "images": images, "cache_gib": round(cache.nbytes / 2**30, 2),
              "free_ram_gib_before": round(free_ram / 2**30, 2), "build_seconds": round(build_seconds, 1),
              "epoch_seconds": round(epoch_seconds, 1), "steps": steps,
              "epoch_read_gb_per_s": round(cache.nbytes / epoch_seconds / 1e9, 3),
              "sequential_read_gb_per_s": round(sequential / 1e9, 3), "waited": round(source.wait_fraction, 3),
              "peak_rss_mib": round(peak_rss_mib())}
    levels.close()
    if not args.keep:
        path.unlink()
    print(json.dumps(record), flush=True)
    return record


def beyond_ram_table(record: dict) -> str:
    return "\n".join([
        "| level-1 cache | free RAM before | build | epoch (phase 2) | epoch read | disk sequential read | waited | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
        f"| {record['cache_gib']} GiB ({record['images']} images) | {record['free_ram_gib_before']} GiB | "
        f"{record['build_seconds']} s | {record['epoch_seconds']} s | {record['epoch_read_gb_per_s']} GB/s | "
        f"{record['sequential_read_gb_per_s']} GB/s | {100 * record['waited']:.1f}% | {record['peak_rss_mib']} MiB |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("fashion", "fashion-run", "beyond-ram"))
    parser.add_argument("--data")
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--name")
    parser.add_argument("--keep", action="store_true", help="beyond-ram: keep the cache file (a rerun reuses it)")
    args = parser.parse_args()
    if args.mode == "fashion-run":
        print(json.dumps(fashion_run(args.data, args.output, args.name, args.epochs)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; python {' '.join(sys.argv)}")
    if args.mode == "fashion":
        print(fashion_table(fashion(args), args))
    else:
        print(beyond_ram_table(beyond_ram(args)))


if __name__ == "__main__":
    main()
