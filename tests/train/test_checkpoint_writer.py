"""CheckpointWriter: background writes are the files a direct save would write, taken at submit time."""
from __future__ import annotations

import pytest
import torch

from phasenets.train.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint


def _payload(weight: torch.Tensor) -> dict:
    return {"model_state": {"weight": weight}, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}},
            "rng": {"numpy": ("MT19937", torch.arange(4), 2, 0, 0.0)}, "epoch": 2}


@pytest.mark.parametrize("background", [True, False])
def test_writes_every_path_with_the_payload_as_it_was_when_submitted(tmp_path, background):
    weight = torch.randn(8, 4)
    expected = weight.clone()
    writer = CheckpointWriter(background=background)
    writer.write([tmp_path / "best.pt", tmp_path / "last.pt"], _payload(weight))
    weight.add_(1.0)  # the next training step changes the live tensor in place
    writer.close()
    for name in ("best.pt", "last.pt"):
        written = load_checkpoint(tmp_path / name)
        assert torch.equal(written["model_state"]["weight"], expected)
        assert written["rng"]["numpy"][0] == "MT19937" and written["epoch"] == 2


def test_writes_in_order_and_matches_a_direct_save(tmp_path):
    writer = CheckpointWriter()
    for epoch in range(3):
        writer.write([tmp_path / "last.pt"], {"epoch": epoch, "model_state": {"w": torch.full((2,), float(epoch))}})
    writer.wait()
    save_checkpoint(tmp_path / "direct.pt", {"epoch": 2, "model_state": {"w": torch.full((2,), 2.0)}})
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "direct.pt").read_bytes()
    writer.close()


def test_a_failed_background_write_is_raised_by_the_next_call(tmp_path):
    def failing_save(path, payload):
        raise OSError(f"disk full writing {path.name}")

    writer = CheckpointWriter(failing_save)
    writer.write([tmp_path / "last.pt"], {"epoch": 1})
    with pytest.raises(OSError, match="disk full writing last.pt"):
        writer.write([tmp_path / "last.pt"], {"epoch": 2})
    writer.close()
