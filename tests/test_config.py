"""TrainConfig: defaults, the original trainer's flags and values, config files, overrides and validation."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from phasenets.config import ConfigError, TrainConfig, add_config_arguments, config_from_args


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults_are_the_studys_and_the_original_trainers_are_one_file_away():
    config = TrainConfig()
    assert (config.model, config.optimizer, config.batch_size, config.max_epochs, config.patience, config.seed) == (
        "alexnet", "adam", 32, None, None, 1)
    assert config.schedule == "phasewise" and not config.use_test
    assert config.learning_rate == 1e-3  # Keras' Adam default
    assert config.lr_schedule == "constant" and config.warmup_epochs == 1.0
    from phasenets.train.plan import build_plan
    assert [phase.max_epochs for phase in build_plan(config, 5)] == [15] * 5
    assert [phase.max_epochs for phase in build_plan(TrainConfig(schedule="standard"), 5)] == [75]
    assert [phase.max_epochs for phase in build_plan(TrainConfig(schedule="standard", max_epochs=9), 5)] == [9]

    original = parse("--config", str(Path(__file__).parents[1] / "examples" / "keras-original.yaml"))
    assert (original.optimizer, original.learning_rate, original.head, original.max_epochs, original.patience,
            original.warmup_epochs) == ("adadelta", 1.0, "linear", 100, 10, 0.0)


@pytest.mark.parametrize("optimizer, lr", [("adadelta", 1.0), ("adam", 1e-3), ("adamw", 1e-3), ("sgd", 0.01)])
def test_learning_rate_defaults_per_optimizer(optimizer, lr):
    assert TrainConfig(optimizer=optimizer).learning_rate == lr
    assert TrainConfig(optimizer=optimizer, lr=0.5).learning_rate == 0.5


def test_seed_000_command_line():
    config = parse(
        "--dataset_name", "flowers", "--num_classes", "5", "--data_dir", "data", "--image_size", "227",
        "--model_name", "alexnet", "--batch_size", "16", "--ckpt_dir", "ckpt", "--num_gpu", "1",
        "--start_phase", "2", "--freeze_layers", "false", "--optimizer", "Adadelta", "--lr", "0.5",
        "--dr", "0.001", "--max_epoch", "7", "--use_test", "true", "--rand_seed", "3",
    )
    assert config.dataset_name == "flowers" and config.num_classes == 5 and config.data_dir == "data"
    assert config.image_size == 227 and config.batch_size == 16 and config.ckpt_dir == "ckpt"
    assert config.start_phase == 2 and config.schedule == "standard"
    assert config.optimizer == "adadelta" and config.lr == 0.5
    assert config.lr_decay == 0.001 and config.lr_schedule == "inverse_time"
    assert config.max_epochs == 7 and config.use_test is True and config.seed == 3


def test_dashed_names_and_bare_booleans():
    config = parse("--data-dir", "d", "--use-test", "--deterministic", "--nesterov", "false", "--max-epochs", "4",
                   "--block-lr-multipliers", "1,0.5,0.25", "--augment-options", "rotation=10",
                   "--augment-options", "hflip=true", "--model-options", "depth=32",
                   "--model-options", "version=2")
    assert config.use_test and config.deterministic and not config.nesterov
    assert config.block_lr_multipliers == [1.0, 0.5, 0.25]
    assert config.augment_options == {"rotation": 10, "hflip": True}
    assert config.model_options == {"depth": 32, "version": 2}
    assert config.start_phase == 1  # seed 000's default 0 and the first phase are the same


def test_freeze_layers_true_keeps_phasewise_and_contradictions_fail():
    assert parse("--freeze_layers", "true").schedule == "phasewise"
    assert parse("--freeze_layers").schedule == "phasewise"
    with pytest.raises(ConfigError, match="contradicts"):
        parse("--freeze_layers", "false", "--schedule", "progressive")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_with_command_line_overrides(tmp_path, suffix):
    values = {"data_dir": "from-file", "max_epoch": 3, "optimizer": "Adam", "freeze_layers": "false",
              "batch_size": 8}
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        import yaml

        path.write_text(yaml.safe_dump(values))
    config = parse("--config", str(path), "--batch_size", "4", "--seed", "9")
    assert config.data_dir == "from-file" and config.max_epochs == 3 and config.optimizer == "adam"
    assert config.schedule == "standard"
    assert config.batch_size == 4 and config.seed == 9  # the command line wins


def test_saved_config_round_trips(tmp_path):
    config = TrainConfig(data_dir="d", optimizer="sgd", augment_options={"zoom": 0.1}, block_lr_multipliers=[1, 2])
    config.save(tmp_path / "config.yaml")
    assert TrainConfig.from_file(tmp_path / "config.yaml") == config


def test_resume_reads_the_runs_saved_config(tmp_path):
    TrainConfig(data_dir="d", max_epochs=3, output=str(tmp_path)).save(tmp_path / "config.yaml")
    config = parse("--resume", str(tmp_path), "--num-workers", "0")
    assert config.max_epochs == 3 and config.resume == str(tmp_path) and config.num_workers == 0
    with pytest.raises(ConfigError, match="no config.yaml"):
        parse("--resume", str(tmp_path / "nowhere"))


@pytest.mark.parametrize("options, message", [
    ({"optimizer": "rmsprop"}, "adadelta, adam, adamw, sgd"),
    ({"amp": "int8"}, "off, bf16, fp16"),
    ({"schedule": "greedy"}, "phasewise, standard, progressive"),
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"val_split": 1.5}, r"val_split must be in \[0, 1\)"),
    ({"use_test": "maybe"}, "expected a boolean"),
    ({"max_epochs": "many"}, "cannot read 'many' as int"),
    ({"start_phase": 3}, "needs --ckpt-dir"),
    ({"in_channels": 2}, "in_channels must be 1 or 3"),
])
def test_invalid_values_say_what_is_valid(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(options)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown option 'epochs'.*max_epochs"):
        TrainConfig.from_dict({"epochs": 3})


@pytest.mark.parametrize("name, text, message", [
    ("run.yaml", "max_epochs: 3\nlr: [0.1\n", r"run\.yaml, line 3, column 1: not valid YAML: expected ',' or ']'"),
    ("run.yml", "max_epochs: 3\n  lr: 0.1\n", r"run\.yml, line 2, column 5: not valid YAML: mapping values"),
    ("run.json", '{"max_epochs": 3,\n "lr": }', r"run\.json, line 2, column 8: not valid JSON: Expecting value"),
    ("run.yaml", "- max_epochs\n- lr\n", r"run\.yaml must hold a mapping"),
])
def test_malformed_config_files_name_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_file(path)


def test_config_file_that_is_not_one(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        TrainConfig.from_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        TrainConfig.from_file(tmp_path)
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\x80\x81\xfe\xff" * 8)
    with pytest.raises(ConfigError, match="is not a text file"):
        TrainConfig.from_file(binary)


def test_user_errors_share_one_base():
    from phasenets.cache.fileformat import CacheFormatError
    from phasenets.cache.tiers import CacheTierError
    from phasenets.data.layout import DatasetError
    from phasenets.errors import CheckpointError, UserError
    from phasenets.models.blockwise import ModelConfigError

    for kind in (ConfigError, CheckpointError, DatasetError, ModelConfigError, CacheTierError, CacheFormatError):
        assert issubclass(kind, UserError) and issubclass(kind, ValueError)  # what callers caught before
