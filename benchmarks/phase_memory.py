"""Peak anonymous memory (RssAnon, sampled every 50 ms) per phase of a phase-wise AlexNet run.

    python benchmarks/phase_memory.py DATA OUTPUT [--epochs 2] [--image-size 64]

DATA is a dataset folder, e.g. ``phasenets data import fashion-mnist --output DATA --per-class 100
--val-per-class 20 --test-per-class 20 --image-size 64`` (1,000 training images). Prints one JSON
line: MiB per phase ("setup" before phase 1, "final" the closing evaluation). What phase 5 (the
18.8M-parameter classifier block) adds over phase 4 is what issue 22 asked about.
"""
from __future__ import annotations

import argparse
import json
import logging
import threading
import time

from phasenets import PhaseTrainer, TrainConfig


def rss_anon() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("output")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    phase, peaks = ["setup"], {}

    def sample() -> None:
        while True:
            peaks[phase[0]] = max(peaks.get(phase[0], 0), rss_anon())
            time.sleep(0.05)

    class PhaseMarker(logging.Handler):  # the trainer's own lines say when a phase starts
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if ": training blocks" in message:
                phase[0] = message.split("/")[0]
            elif message.startswith("final"):
                phase[0] = "final"

    threading.Thread(target=sample, daemon=True).start()
    logging.getLogger("phasenets").addHandler(PhaseMarker())
    config = TrainConfig(data_dir=args.data, output=args.output, model="alexnet", image_size=args.image_size,
                         in_channels=1, optimizer="adam", head="conv", max_epochs=args.epochs, patience=0,
                         num_threads=1, num_workers=1, seed=0, tensorboard=False, cache="host")
    PhaseTrainer(config).fit()
    print(json.dumps({name: round(value / 2**20) for name, value in peaks.items()}))


if __name__ == "__main__":
    main()
