"""``phasenets <command>``: parses arguments and calls the library; nothing else lives here.

Each subcommand's parser is built by its own small ``_add_<command>`` function and runs through
its own ``_run_<command>`` function, so a new command is two functions and one line in
``_COMMANDS``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# train


def _add_train(commands) -> argparse.ArgumentParser:
    from phasenets.config import add_config_arguments

    parser = commands.add_parser(
        "train", help="train a network phase by phase (or end to end)",
        description="Train a network phase by phase. Seed 000's flags (--data_dir, --max_epoch, "
                    "--freeze_layers false, ...) are accepted as well as the dashed names below.",
    )
    add_config_arguments(parser)
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from phasenets.config import config_from_args
    from phasenets.train import PhaseTrainer

    result = PhaseTrainer(config_from_args(args)).fit()
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"done in {result.seconds:.1f}s; run directory: {result.run_dir}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# eval


def _add_eval(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("eval", help="evaluate a checkpoint on one split of a dataset")
    parser.add_argument("--checkpoint", required=True, help="a .pt file from a run's checkpoints/ folder, or a run directory (its final network)")
    parser.add_argument("--data-dir", "--data_dir", required=True, help="dataset root (train/, validation/, test/)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loader", default="auto", choices=("auto", "dali", "torch"))
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print every metric as JSON")
    return parser


def _run_eval(args: argparse.Namespace) -> int:
    from phasenets.train import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, batch_size=args.batch_size,
                                  loader=args.loader, num_workers=args.num_workers, device=args.device)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return EXIT_OK
    top5 = "" if metrics["top5"] is None else f"  top-5 {metrics['top5']:.4f}"
    print(f"{metrics['split']}: {metrics['count']} images  loss {metrics['loss']:.4f}  "
          f"accuracy {metrics['accuracy']:.4f}{top5}")
    for name, accuracy in metrics["per_class_accuracy"].items():
        print(f"  {name:<20} {'-' if accuracy is None else f'{accuracy:.4f}'}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# demo


def _add_demo(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "demo", help="digits as PNG folders; LeNet-5 trained phase-wise and end to end, compared")
    parser.add_argument("--data-dir", default="data/demo", help="where the digits PNG folders are written")
    parser.add_argument("--output", default="runs/demo", help="the runs go to OUTPUT/phasewise and OUTPUT/standard")
    parser.add_argument("--max-epochs", type=int, default=15, help="epochs per phase")
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=1)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from phasenets.train.demo import format_demo, run_demo

    runs = run_demo(args.data_dir, args.output, max_epochs=args.max_epochs, patience=args.patience,
                    num_workers=args.num_workers)
    print(format_demo(runs))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# summary


def _add_summary(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("summary", help="blocks, shapes, parameters and FLOPs of an architecture")
    parser.add_argument("--model", required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--in-channels", type=int, default=None, help="default: the model's")
    parser.add_argument("--head", default="linear", choices=("linear", "mlp", "conv"))
    parser.add_argument("--json", action="store_true")
    return parser


def _run_summary(args: argparse.Namespace) -> int:
    from phasenets.models import build_model
    from phasenets.models.summary import format_summary, summarize

    model = build_model(args.model, args.num_classes, in_channels=args.in_channels, image_size=args.image_size,
                        head=args.head)
    summary = summarize(model)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# data


def _add_data(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("data", help="check, split, balance or import datasets")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    check = actions.add_parser("check", help="decode every image; exit 1 when something would break training")
    check.add_argument("data_dir")
    check.add_argument("--image-size", type=int, default=None)

    split = actions.add_parser("split", help="split SRC/<class>/ into OUT/{train,validation[,test]}/<class>/")
    split.add_argument("src")
    split.add_argument("out")
    split.add_argument("--ratios", default="0.8,0.2", help="train,validation[,test] fractions summing to 1")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--mode", default="copy", choices=("copy", "symlink", "hardlink"))

    balance = actions.add_parser("balance", help="equal class counts in one split folder")
    balance.add_argument("split_dir")
    balance.add_argument("--out", default=None, help="default: SPLIT_DIR_balanced")
    balance.add_argument("--strategy", default="down", choices=("down", "up"))
    balance.add_argument("--seed", type=int, default=0)
    balance.add_argument("--mode", default="copy", choices=("copy", "symlink", "hardlink"))

    importer = actions.add_parser("import", help="write a bundled dataset (digits, fashion-mnist) as PNG folders")
    importer.add_argument("name")
    importer.add_argument("out")
    importer.add_argument("--per-class", type=int, default=None)
    importer.add_argument("--val-per-class", type=int, default=None)
    importer.add_argument("--test-per-class", type=int, default=None)
    importer.add_argument("--image-size", type=int, default=None)
    importer.add_argument("--seed", type=int, default=0)
    return parser


def _run_data(args: argparse.Namespace) -> int:
    from phasenets.data import balance_dataset, check_dataset, import_dataset, split_dataset

    if args.data_command == "check":
        report = check_dataset(args.data_dir, image_size=args.image_size)
        print(report.format())
        return EXIT_OK if report.ok else EXIT_FAILED
    if args.data_command == "split":
        ratios = [float(part) for part in args.ratios.split(",")]
        counts = split_dataset(args.src, args.out, ratios, seed=args.seed, mode=args.mode)
    elif args.data_command == "balance":
        counts = balance_dataset(args.split_dir, args.out, strategy=args.strategy, mode=args.mode, seed=args.seed)
    else:
        counts = import_dataset(args.name, args.out, per_class=args.per_class, val_per_class=args.val_per_class,
                                image_size=args.image_size, seed=args.seed, test_per_class=args.test_per_class)
    for split, per_class in counts.items():
        print(f"{split or '.'}: {sum(per_class.values())} images in {len(per_class)} classes")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------

_COMMANDS: dict[str, tuple[Callable, Callable[[argparse.Namespace], int]]] = {
    "train": (_add_train, _run_train),
    "eval": (_add_eval, _run_eval),
    "demo": (_add_demo, _run_demo),
    "summary": (_add_summary, _run_summary),
    "data": (_add_data, _run_data),
}


def build_parser() -> argparse.ArgumentParser:
    from phasenets import __version__

    parser = argparse.ArgumentParser(prog="phasenets", description="Phase-wise training of CNNs on small datasets.")
    parser.add_argument("--version", action="version", version=f"phasenets {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, run) in _COMMANDS.items():
        add(commands).set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``phasenets``; returns the exit code (2 for a usage or input error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        # configuration, dataset, model and checkpoint errors all say what is valid
        print(f"phasenets {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
