"""Damaged checkpoints are refused by name, never used: a flipped bit, a truncated file, a file a
killed process did not finish writing; --resume falls back to the newest intact checkpoint."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch

from phasenets.cli import main
from phasenets.errors import CheckpointDamaged
from phasenets.models import build_model
from phasenets.train import PhaseTrainer
from phasenets.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from phasenets.train.setup import model_record

from conftest import CLASSES, tiny_config, tiny_net


def flip_a_bit_of(path, tensor: torch.Tensor) -> None:
    """Flip one bit inside ``tensor``'s stored bytes in ``path`` (torch's zip reader does not check
    the CRC it keeps, so the file still loads, with one weight changed)."""
    raw = bytearray(path.read_bytes())
    where = raw.find(tensor.contiguous().numpy().tobytes())
    assert where >= 0, "the tensor's bytes are not stored as they are"
    raw[where + 3] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    """A deterministic 3-phase run of the tiny net and its config."""
    config = tiny_config(tiny_data, tmp_path_factory.mktemp("runs") / "run", deterministic=True, patience=0)
    torch.manual_seed(0)
    PhaseTrainer(config, model=tiny_net()).fit()
    return config


def lenet_checkpoint(path):
    """A registered network's checkpoint (the CLI can rebuild it), as a run writes one."""
    model = build_model("lenet5", len(CLASSES), in_channels=1, image_size=32)
    return Checkpoint(model_state=model.state_dict(), model=model_record(model, model.head_kind), classes=sorted(CLASSES),
                      normalization={"mean": [0.5], "std": [0.25]}).save(path)


def test_a_flipped_bit_is_refused_naming_the_file(tiny_data, tmp_path, capsys):
    final = lenet_checkpoint(tmp_path / "final.pt")
    assert main(["eval", "--checkpoint", str(final), "--data-dir", str(tiny_data), "--loader", "torch",
                 "--num-workers", "0"]) == 0
    capsys.readouterr()
    flip_a_bit_of(final, load_checkpoint(final)["model_state"]["blocks.1.0.weight"])
    with pytest.raises(CheckpointDamaged, match="final.pt is damaged: its contents do not match the checksum"):
        load_checkpoint(final)
    assert main(["eval", "--checkpoint", str(final), "--data-dir", str(tiny_data), "--loader", "torch",
                 "--num-workers", "0"]) == 2
    error = capsys.readouterr().err
    assert f"{final} is damaged" in error and "Traceback" not in error


def test_a_truncated_checkpoint_says_so_in_one_line(finished_run, tiny_data, tmp_path, capsys):
    final = tmp_path / "final.pt"
    data = open(f"{finished_run.output}/checkpoints/final.pt", "rb").read()
    final.write_bytes(data[: len(data) // 2])
    assert main(["export", "--checkpoint", str(final), "--format", "safetensors"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(f"{final} cannot be read: it is truncated or is not a torch.save file")
    assert "miniz" not in error and "weights_only" not in error


def test_resume_skips_a_damaged_last_checkpoint_and_ends_as_the_uninterrupted_run(finished_run, tmp_path, caplog):
    run = tmp_path / "resumed"
    shutil.copytree(finished_run.output, run)
    checkpoints = run / "checkpoints"
    (checkpoints / "final.pt").unlink()
    last = checkpoints / "phase3-last.pt"
    flip_a_bit_of(last, torch.load(last, weights_only=True)["model_state"]["blocks.2.2.weight"])
    stale = checkpoints / ".phase3-last.pt.tmp-999999999"  # what a killed writer leaves
    stale.write_bytes(b"half a checkpoint")

    config = tiny_config(finished_run.data_dir, run, deterministic=True, patience=0, resume=str(run))
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="phasenets"):
        PhaseTrainer(config, model=tiny_net()).fit()
    assert "phase3-last.pt is damaged" in caplog.text and "trying the checkpoint before it" in caplog.text
    assert "continuing from phase3-best.pt" in caplog.text
    assert not stale.exists() and "removed .phase3-last.pt.tmp-999999999" in caplog.text
    expected = load_checkpoint(f"{finished_run.output}/checkpoints/final.pt")["model_state"]
    resumed = load_checkpoint(checkpoints / "final.pt")["model_state"]
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_resume_refuses_when_no_checkpoint_is_intact(finished_run, tmp_path):
    run = tmp_path / "ruined"
    shutil.copytree(finished_run.output, run)
    for path in (run / "checkpoints").glob("phase*.pt"):
        path.write_bytes(path.read_bytes()[:100])
    config = tiny_config(finished_run.data_dir, run, resume=str(run))
    with pytest.raises(ValueError, match="none of its 6 checkpoints reads back intact"):
        PhaseTrainer(config, model=tiny_net()).fit()


def test_a_checkpoint_of_an_older_phasenets_loads_with_a_warning(tmp_path, caplog):
    path = save_checkpoint(tmp_path / "old.pt", {"model_state": {"w": torch.ones(2)}})
    payload = torch.load(path, weights_only=True)
    del payload["checksum"]
    torch.save(payload, path)
    with caplog.at_level(logging.WARNING, logger="phasenets"):
        assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(2))
    assert "old.pt has no checksum" in caplog.text
