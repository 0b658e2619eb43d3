"""``phasenets <command>``: parses arguments and calls the library; nothing else lives here.

Each subcommand's parser is built by its own small ``_add_<command>`` function and runs through
its own ``_run_<command>`` function, so a new command is two functions and one line in
``_COMMANDS``.

Exit codes: 0 done; 1 the command ran and failed (``data check`` found problems, a training
process died) or the machine refused (no space left, permission denied, a read-only file
system): the same command can succeed once that is fixed; 2 a usage or input error (an option, a
missing or malformed file, a dataset, checkpoint or model that cannot be used): the command or its
inputs must change. Either way the error is one message on stderr, without a traceback; an error
that is none of these is a bug in phasenets and keeps its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from phasenets.config import DEFAULT_HEAD, HEADS, LOADERS
from phasenets.errors import ConfigError, UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# spellings accepted but not shown in --help: the commands that wrote files took --out before --output
QUIET_ALIASES = frozenset({"--out"})


class _HelpFormatter(argparse.HelpFormatter):
    """Help that reads as a table: an option's spellings share one metavar (``--max-epochs,
    --max_epoch N``), quiet aliases are left out, the help column starts further right, and the
    default of each option taking a value is shown unless its help already speaks of one."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        flags = ", ".join(flag for flag in action.option_strings if flag not in QUIET_ALIASES)
        if action.nargs == 0:
            return flags
        return f"{flags} {self._format_args(action, self._get_default_metavar_for_optional(action))}"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if not action.option_strings or action.nargs == 0 or "default" in text or default is None \
                or default == argparse.SUPPRESS:
            return text
        return f"{text} [default: %(default)s]"


def _add_command(commands, name: str, help: str, **kwargs) -> argparse.ArgumentParser:  # noqa: A002
    return commands.add_parser(name, help=help, formatter_class=_HelpFormatter, **kwargs)


def _add_output(parser: argparse.ArgumentParser, help: str, **kwargs) -> None:  # noqa: A002
    """``--output``, the one name of every command's output; ``--out`` still works, unlisted."""
    parser.add_argument("--output", "--out", dest="output", metavar="PATH", help=help, **kwargs)


# ----------------------------------------------------------------------------------------------
# train


def _add_train(commands) -> argparse.ArgumentParser:
    from phasenets.config import add_config_arguments

    parser = _add_command(
        commands, "train", "train a network phase by phase (or end to end)",
        usage="%(prog)s [--config FILE] [--data-dir DIR] [--model NAME] [OPTION ...]",
        description="Train a network phase by phase (or end to end: --schedule standard). Each option "
                    "comes from its default, then --config FILE, then the command line. The original "
                    "Keras trainer's flag names (train_blockwise.py: --data_dir, --model_name, --max_epoch, "
                    "--rand_seed, --num_gpu, --freeze_layers false, ...) are accepted beside the dashed "
                    "names, and listed with them below.",
    )
    add_config_arguments(parser)
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from phasenets.config import config_from_args
    from phasenets.train import PhaseTrainer
    from phasenets.train.launch import inside_launcher, launch_training

    config = config_from_args(args)
    if config.nproc > 1 and not inside_launcher():
        return launch_training(config)  # starts `phasenets train` in each process, waits for them
    result = PhaseTrainer(config).fit()
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
        print(f"done in {result.seconds:.1f}s; run directory: {result.run_dir}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# eval


def _add_eval(commands) -> argparse.ArgumentParser:
    parser = _add_command(
        commands, "eval", "evaluate a checkpoint on one split of a dataset, or run the forgetting test",
        description="Evaluate --checkpoint on --data-dir; or, with --forgetting, evaluate the old task's data "
                    "with the old run's head on top of each new run's blocks (ModNet's forgetting test).",
    )
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a .pt file from a run's checkpoints/ folder, or a run directory (its final network)")
    parser.add_argument("--data-dir", "--data_dir", required=True, metavar="DIR",
                        help="dataset root (train/, validation/, test/)")
    parser.add_argument("--split", default=None, choices=("train", "validation", "test"),
                        help="the split to evaluate [default: test; --forgetting: test if there is one, "
                             "else validation]")
    forgetting = parser.add_argument_group("forgetting test")
    forgetting.add_argument("--forgetting", action="store_true", help="run the forgetting test instead")
    forgetting.add_argument("--old-run", metavar="PATH",
                            help="run directory or checkpoint of the old task; --data-dir is its data")
    forgetting.add_argument("--new-run", nargs="+", metavar="PATH",
                            help="run directories or checkpoints trained from the old run's blocks")
    forgetting.add_argument("--blocks", default=None, metavar="BLOCKS",
                            help="the new runs' blocks to use, e.g. 1-3 [default: all but the last]")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch")
    parser.add_argument("--loader", default="auto", choices=LOADERS,
                        help="image loader: auto uses NVIDIA DALI where installed, else torch")
    parser.add_argument("--num-workers", type=int, default=2, metavar="N", help="data loading worker processes")
    parser.add_argument("--device", default="cpu", metavar="{cpu,cuda,cuda:N}", help="where to evaluate")
    parser.add_argument("--json", action="store_true", help="print every metric as JSON")
    return parser


def _run_eval(args: argparse.Namespace) -> int:
    from phasenets.train import evaluate_checkpoint

    if args.forgetting:
        return _run_forgetting(args)
    if args.checkpoint is None or args.old_run or args.new_run:
        raise UserError("give --checkpoint C, or --forgetting with --old-run A --new-run B")
    metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split or "test", batch_size=args.batch_size,
                                  loader=args.loader, num_workers=args.num_workers, device=args.device)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return EXIT_OK
    top5 = "" if metrics["top5"] is None else f"  top-5 {metrics['top5']:.4f}"
    how = "  (the mean of every phase's head)" if metrics["prediction"] == "heads" else ""
    print(f"{metrics['split']}: {metrics['count']} images  loss {metrics['loss']:.4f}  "
          f"accuracy {metrics['accuracy']:.4f}{top5}{how}")
    for name, accuracy in metrics["per_class_accuracy"].items():
        print(f"  {name:<20} {'-' if accuracy is None else f'{accuracy:.4f}'}")
    return EXIT_OK


def _run_forgetting(args: argparse.Namespace) -> int:
    from phasenets.train.forgetting import format_forgetting, forgetting_test

    if not (args.old_run and args.new_run) or args.checkpoint:
        raise UserError("--forgetting compares runs: give --old-run A and --new-run B [B ...], not --checkpoint")
    rows = forgetting_test(args.old_run, args.new_run, args.data_dir, blocks=args.blocks, split=args.split,
                           batch_size=args.batch_size, loader=args.loader, num_workers=args.num_workers,
                           device=args.device)
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    else:
        print(format_forgetting(rows))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# demo


def _add_demo(commands) -> argparse.ArgumentParser:
    parser = _add_command(commands, "demo",
                          "digits as PNG folders; LeNet-5 trained phase-wise and end to end, compared")
    parser.add_argument("--data-dir", default="data/demo", metavar="DIR",
                        help="where the digits PNG folders are written")
    _add_output(parser, default="runs/demo", help="the runs go to PATH/phasewise and PATH/standard")
    parser.add_argument("--max-epochs", type=int, default=None, metavar="N",
                        help="epochs per phase [default: train's; end to end gets those of all phases together]")
    parser.add_argument("--patience", type=int, default=None, metavar="N",
                        help="stop a phase after this many epochs without validation improvement [default: train's]")
    parser.add_argument("--num-workers", type=int, default=1, metavar="N", help="data loading worker processes")
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
    from phasenets.models import list_models

    parser = _add_command(commands, "summary", "blocks, shapes, parameters and FLOPs of an architecture")
    parser.add_argument("--model", required=True, metavar="NAME", help=f"architecture: {', '.join(list_models())}")
    parser.add_argument("--num-classes", type=int, required=True, metavar="N", help="classes of its classifier")
    parser.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="side of the square input in pixels [default: the model's]")
    parser.add_argument("--in-channels", type=int, default=None, choices=(1, 3),
                        help="1 (grayscale) or 3 (RGB) [default: the model's]")
    parser.add_argument("--head", default=DEFAULT_HEAD, choices=HEADS, help="auxiliary head of each intermediate phase")
    parser.add_argument("--model-options", default=[], action="append", metavar="NAME=VALUE",
                        help="an option of the architecture (repeatable; they are listed below the table), as for "
                             "`train`")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _run_summary(args: argparse.Namespace) -> int:
    from phasenets.config import parse_assignments
    from phasenets.models import build_model, model_options
    from phasenets.models.summary import format_summary, summarize

    try:
        chosen = parse_assignments(args.model_options)
    except ValueError as error:
        raise ConfigError(f"--model-options: {error}") from None
    model = build_model(args.model, args.num_classes, in_channels=args.in_channels, image_size=args.image_size,
                        head=args.head, **chosen)
    summary = summarize(model)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        options = {name: getattr(model.config, name) for name in model_options(args.model)
                   if name not in ("in_channels", "image_size")}
        print(format_summary(summary))
        print("options (--model-options): " + (", ".join(f"{k}={v}" for k, v in options.items()) or "none"))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# data


def _add_data(commands) -> argparse.ArgumentParser:
    parser = _add_command(commands, "data", "check, split, balance or import datasets")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    link_help = "how images reach the new folders: copied, or linked to the originals"

    check = _add_command(actions, "check", "decode every image; exit 1 when something would break training")
    check.add_argument("data_dir", help="dataset root (train/, validation/, test/) or one folder of class folders")
    check.add_argument("--image-size", type=int, default=None, metavar="N",
                       help="the network's input side: images under half of it are reported as too small")

    split = _add_command(actions, "split", "split SRC/<class>/ into OUT/{train,validation[,test]}/<class>/")
    split.add_argument("src", help="a folder of class folders")
    split.add_argument("out", help="the dataset folder to write (must be empty or absent)")
    split.add_argument("--ratios", default="0.8,0.2", type=_fractions, metavar="F,F[,F]",
                       help="train,validation[,test] fractions summing to 1")
    split.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the deterministic split")
    split.add_argument("--mode", default="copy", choices=("copy", "symlink", "hardlink"), help=link_help)

    balance = _add_command(actions, "balance", "equal class counts in one split folder")
    balance.add_argument("split_dir", help="one split's folder of class folders, e.g. DATA/train")
    _add_output(balance, default=None, help="the balanced folder to write [default: SPLIT_DIR_balanced]")
    balance.add_argument("--strategy", default="down", choices=("down", "up"),
                         help="down: drop images of the larger classes; up: repeat images of the smaller ones")
    balance.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the deterministic draw")
    balance.add_argument("--mode", default="copy", choices=("copy", "symlink", "hardlink"), help=link_help)

    importer = _add_command(actions, "import", "write a bundled dataset (digits, fashion-mnist) as PNG folders")
    importer.add_argument("name", choices=("fashion-mnist", "digits"), help="the dataset")
    _add_output(importer, required=True, help="output folder (must be empty or absent)")
    importer.add_argument("--per-class", type=int, default=None, metavar="N",
                          help="training images per class, how small datasets are made [default: all]")
    importer.add_argument("--val-per-class", type=int, default=None, metavar="N",
                          help="validation images per class, drawn from the remaining training images")
    importer.add_argument("--test-per-class", type=int, default=None, metavar="N",
                          help="test images per class [default: the whole official test split]")
    importer.add_argument("--image-size", type=int, default=None, metavar="N",
                          help="resize images to this side [default: the dataset's own]")
    importer.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the deterministic subset draw")
    return parser


def _fractions(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 0.7,0.15,0.15, got {text!r}") from None


def _run_data(args: argparse.Namespace) -> int:
    from phasenets.data import balance_dataset, check_dataset, import_dataset, split_dataset

    if args.data_command == "check":
        report = check_dataset(args.data_dir, image_size=args.image_size)
        print(report.format())
        return EXIT_OK if report.ok else EXIT_FAILED
    if args.data_command == "split":
        counts = split_dataset(args.src, args.out, args.ratios, seed=args.seed, mode=args.mode)
    elif args.data_command == "balance":
        counts = balance_dataset(args.split_dir, args.output, strategy=args.strategy, mode=args.mode, seed=args.seed)
    else:
        counts = import_dataset(args.name, args.output, per_class=args.per_class, val_per_class=args.val_per_class,
                                image_size=args.image_size, seed=args.seed, test_per_class=args.test_per_class)
    for split, per_class in counts.items():
        print(f"{split or '.'}: {sum(per_class.values())} images in {len(per_class)} classes")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# export


def _add_export(commands) -> argparse.ArgumentParser:
    from phasenets.export import EXPORT_FORMATS

    parser = _add_command(
        commands, "export", "write a checkpoint's network as ONNX, TorchScript or safetensors (checked against it)")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint file, or a run directory (its final network)")
    parser.add_argument("--format", default="onnx", choices=EXPORT_FORMATS, help="the file format")
    _add_output(parser, default=None, help="output file [default: next to the checkpoint]")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="do not run the exported file against the checkpoint's network")
    parser.add_argument("--include-aux-heads", action="store_true",
                        help="safetensors: keep the auxiliary heads' weights (the full training state) "
                             "[default: what inference runs; the heads too for a network that predicts with them]")
    return parser


def _run_export(args: argparse.Namespace) -> int:
    from phasenets.export import export_checkpoint
    from phasenets.train.rundir import resolve_checkpoint

    result = export_checkpoint(resolve_checkpoint(args.checkpoint), args.format, args.output, verify=args.verify,
                               include_aux_heads=args.include_aux_heads)
    check = ("" if result.max_abs_diff is None else
             f"; largest difference from the checkpoint's logits {result.max_abs_diff:.2g} ({result.verified_with})")
    print(f"wrote {result.path} ({result.format}){check}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# viz and plot


def _add_viz(commands) -> argparse.ArgumentParser:
    parser = _add_command(commands, "viz", "PNG pictures of first-block filters or of each block's feature maps")
    parser.add_argument("what", choices=("filters", "features"),
                        help="filters: the first convolution's; features: each block's output for --image")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint file, or a run directory (its final network)")
    parser.add_argument("--image", default=None, metavar="FILE", help="features: the image to run through the network")
    parser.add_argument("--block", type=int, default=None, metavar="K",
                        help="features: only this block [default: every block]")
    _add_output(parser, default=None, help="output folder [default: viz/ in the checkpoint's run directory]")
    return parser


def _run_viz(args: argparse.Namespace) -> int:
    from phasenets.train.rundir import RunDirectory
    from phasenets.viz import plot_features, plot_filters

    out = Path(args.output) if args.output else RunDirectory.of_checkpoint(args.checkpoint).viz_dir
    if args.what == "filters":
        if args.image or args.block:
            raise UserError("viz filters draws the first convolution: --image and --block are for viz features")
        paths = [plot_filters(args.checkpoint, out / "filters.png")]
    else:
        if args.image is None:
            raise UserError("viz features needs --image FILE: the image whose feature maps are drawn")
        paths = plot_features(args.checkpoint, args.image, out, block=args.block)
    print("\n".join(f"wrote {path}" for path in paths))
    return EXIT_OK


def _add_plot(commands) -> argparse.ArgumentParser:
    parser = _add_command(commands, "plot", "redraw a run's accuracy and loss curves from its metrics.csv")
    parser.add_argument("run_dir", help="a run directory")
    return parser


def _run_plot(args: argparse.Namespace) -> int:
    from phasenets.viz import replot_run

    print("\n".join(f"wrote {path}" for path in replot_run(args.run_dir)))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------

_COMMANDS: dict[str, tuple[Callable, Callable[[argparse.Namespace], int]]] = {
    "train": (_add_train, _run_train),
    "eval": (_add_eval, _run_eval),
    "demo": (_add_demo, _run_demo),
    "summary": (_add_summary, _run_summary),
    "data": (_add_data, _run_data),
    "export": (_add_export, _run_export),
    "viz": (_add_viz, _run_viz),
    "plot": (_add_plot, _run_plot),
}


def build_parser() -> argparse.ArgumentParser:
    from phasenets import __version__

    parser = argparse.ArgumentParser(
        prog="phasenets", description="Phase-wise training of CNNs on small datasets.", formatter_class=_HelpFormatter,
        epilog="`phasenets COMMAND --help` lists a command's options. Exit codes: 0 done; 1 the command ran and "
               "failed, or the machine refused (no space left, permission denied): the same command can work "
               "once that is fixed; 2 a usage or input error: the command or its inputs must change.",
    )
    parser.add_argument("--version", action="version", version=f"phasenets {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, run) in _COMMANDS.items():
        add(commands).set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``phasenets``; returns the exit code (see the module's docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        return args.run(args)
    except BrokenPipeError:
        # the reader went away (`phasenets summary --json | head`): not an error of ours; point
        # stdout at devnull so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"{_name(args)}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - sorted by _explain; a bug is raised again, with its traceback
        explained = _explain(error)
        if explained is None:
            raise
        code, message = explained
        print(f"{_name(args)}: error: {message}", file=sys.stderr)
        return code


def _name(args: argparse.Namespace) -> str:
    """``phasenets train``, ``phasenets data import``: what the messages start with."""
    return " ".join(["phasenets", args.command] + ([args.data_command] if args.command == "data" else []))


# ----------------------------------------------------------------------------------------------
# errors: what the user can act on becomes one message and an exit code; anything else is a bug


def _explain(error: Exception) -> tuple[int, str] | None:
    """(exit code, message) for an error the user can act on; None for a bug."""
    if isinstance(error, OSError):
        return _explain_os_error(error)
    # ValueError: the library's argument checks that do not derive from UserError yet say what is
    # valid too; ImportError: an optional package an option needs (DALI, onnx) is not installed
    if isinstance(error, (UserError, ValueError, ImportError)):
        return EXIT_USAGE, str(error)
    return None


# the path given cannot be used as it is: the command must change (exit 2); "{path} ..."
_PATH_PROBLEMS = {
    errno.ENOENT: "does not exist; check the path",
    errno.ENOTDIR: "cannot be used: a part of it is a file, not a folder; choose another path",
    errno.EISDIR: "is a folder, where a file is needed; give a file",
    errno.EEXIST: "already exists where phasenets must create a folder or file; remove it or choose another path",
    errno.ENAMETOOLONG: "is too long a name for its file system; choose a shorter path",
    errno.ELOOP: "goes through too many symbolic links; choose another path",
}
_NO_ACCESS = "give this user access to it or its folder (chmod, chown), or choose another path; then run again"
_NO_SPACE = "free some space on that disk or write to another one; then run again"
# the machine refused: the same command can work once this is fixed (exit 1); "{what}: {path}; {advice}"
_MACHINE_PROBLEMS = {
    errno.EACCES: ("permission denied", _NO_ACCESS),
    errno.EPERM: ("operation not permitted", _NO_ACCESS),
    errno.EROFS: ("read-only file system", "choose a path on a writable file system"),
    errno.ENOSPC: ("no space left on the device", _NO_SPACE),
    errno.EDQUOT: ("disk quota exceeded", _NO_SPACE),
    errno.EFBIG: ("file too large for its file system", _NO_SPACE),
}
# what a write can fail with even where Python does not know the file (a write to an open handle)
_WRITE_PROBLEMS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _explain_os_error(error: OSError) -> tuple[int, str] | None:
    if error.errno is None:  # raised by phasenets with a message for the user (FileExistsError("..."))
        return EXIT_USAGE, str(error)
    if error.filename is None:
        if error.errno not in _WRITE_PROBLEMS:
            return None  # no file to name, nothing the user did: a bug, or the system failing
        what, advice = _MACHINE_PROBLEMS[error.errno]
        return EXIT_FAILED, f"{what} while writing a file; {advice}"
    path = _path_name(error.filename)
    if error.filename2 is not None:
        path += f" -> {_path_name(error.filename2)}"
    if error.errno in _PATH_PROBLEMS:
        return EXIT_USAGE, f"{path} {_PATH_PROBLEMS[error.errno]}"
    what, advice = _MACHINE_PROBLEMS.get(error.errno, (error.strerror, "check the file and its disk"))
    return EXIT_FAILED, f"{what}: {path}; {advice}"


def _path_name(name) -> str:
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)  # or a descriptor
