"""`--help` of every command: `train`'s options in their groups, choices shown, one flag vocabulary."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from phasenets.cli import build_parser
from phasenets.config import OPTION_GROUPS, TrainConfig


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return actions[0].choices if actions else {}


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser by its command line (``phasenets``, ``phasenets train``, ``phasenets data import`` ...)."""
    found, todo = {}, [build_parser()]
    while todo:
        parser = todo.pop()
        found[parser.prog] = parser
        todo += _subcommands(parser).values()
    return found


def _train_parser() -> argparse.ArgumentParser:
    return _subcommands(build_parser())["train"]


def test_train_options_are_grouped_each_in_exactly_one_group():
    groups = {group.title: group for group in _train_parser()._action_groups}
    titles = [title for title, _ in OPTION_GROUPS.values()]
    assert set(titles) <= set(groups)
    assert set(groups) - set(titles) == {"options", "positional arguments"}  # argparse's own two
    assert {action.dest for action in groups["options"]._group_actions} == {"help", "config"}
    assert not groups["positional arguments"]._group_actions

    placed: dict[str, list[str]] = {}
    for title in titles:
        for action in groups[title]._group_actions:
            placed.setdefault(action.dest, []).append(title)
    fields = {item.name for item in dataclasses.fields(TrainConfig)}
    assert set(placed) == fields | {"freeze_layers"}
    assert all(len(where) == 1 for where in placed.values()), {dest: w for dest, w in placed.items() if len(w) > 1}
    assert placed["max_epochs"] == ["phase plan"] and placed["cache_dtype"] == ["feature cache"]
    assert placed["output"] == ["output and logging"] and placed["nproc"] == ["processes and hardware"]


def test_every_field_names_a_known_group():
    """A new option must say where `train --help` lists it (else it lands beside --config)."""
    unknown = {item.name: item.metadata.get("group") for item in dataclasses.fields(TrainConfig)
               if item.metadata.get("group") not in OPTION_GROUPS}
    assert not unknown


def test_train_help_shows_groups_choices_defaults_and_original_flag_names():
    text = _train_parser().format_help()
    for title, _ in OPTION_GROUPS.values():
        assert f"\n{title}:\n" in text
    assert "--optimizer {adadelta,adam,adamw,sgd}" in text
    assert "--cache {off,auto,cuda,host,disk}" in text
    assert "--max-epochs, --max_epoch N" in text and "--nproc, --num_gpu N" in text
    assert "--freeze_layers, --freeze-layers [BOOL]" in text
    assert "[default: adam]" in text and "[default: 15," in text
    assert "lenet5" in text  # the registered models are listed under --model
    assert text.startswith("usage: phasenets train [--config FILE]")


@pytest.mark.parametrize("prog, parser", sorted(_all_parsers().items()))
def test_help_speaks_to_users(prog, parser):
    text = parser.format_help()
    assert "seed 000" not in text.lower()
    assert "--out " not in text and "--out," not in text  # the quiet alias of --output stays unlisted
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and action.dest not in ("help", "version"):
            assert action.help, f"{prog} {action.option_strings[0]} has no help"


@pytest.mark.parametrize("command, flag, choices", [
    (["eval"], "--loader", "{auto,dali,torch}"),
    (["eval"], "--split", "{train,validation,test}"),
    (["eval"], "--device", "{cpu,cuda,cuda:N}"),
    (["summary"], "--head", "{linear,mlp,conv,pooled_conv,conv2x2,mlp_sr}"),
    (["data", "split"], "--mode", "{copy,symlink,hardlink}"),
    (["data", "balance"], "--strategy", "{down,up}"),
    (["export"], "--format", "{onnx,torchscript,safetensors}"),
])
def test_other_commands_show_their_choices(command, flag, choices):
    assert f"{flag} {choices}" in _all_parsers()[" ".join(["phasenets", *command])].format_help()


@pytest.mark.parametrize("command", [
    ["export", "--checkpoint", "c.pt"],
    ["viz", "filters", "--checkpoint", "c.pt"],
    ["data", "balance", "d/train"],
    ["data", "import", "digits"],
    ["demo"],
])
@pytest.mark.parametrize("spelling", ["--output", "--out"])
def test_output_is_one_flag_with_a_quiet_alias(command, spelling):
    args = build_parser().parse_args([*command, spelling, "somewhere"])
    assert args.output == "somewhere"


def test_train_takes_output_spelled_out_or_short():
    assert build_parser().parse_args(["train", "--out", "somewhere"]).output == "somewhere"
