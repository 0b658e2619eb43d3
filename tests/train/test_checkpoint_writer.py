"""CheckpointWriter: background writes are the files a direct save would write, taken at submit time."""
from __future__ import annotations

import pytest
import torch

from phasenets.train.checkpoint import SHARED_STATE_KEY, CheckpointError, CheckpointWriter, load_checkpoint, save_checkpoint


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


def test_a_failed_background_write_is_raised_by_wait(tmp_path):
    def failing_save(path, payload, copies=()):
        raise OSError(f"disk full writing {path.name}")

    writer = CheckpointWriter(failing_save, max_pending=1)
    writer.write([tmp_path / "last.pt"], {"epoch": 1})
    with pytest.raises(OSError, match="disk full writing last.pt"):
        writer.write([tmp_path / "last.pt"], {"epoch": 2})  # a full queue waits on the failed write
    writer.write([tmp_path / "last.pt"], {"epoch": 3})
    with pytest.raises(OSError, match="disk full writing last.pt"):
        writer.wait()
    writer.close()


def test_max_pending_must_be_positive():
    with pytest.raises(ValueError, match="max_pending must be at least 1, got 0"):
        CheckpointWriter(max_pending=0)


def test_a_checkpoint_naming_a_shared_state_file_loads_whole(tmp_path):
    save_checkpoint(tmp_path / "phase2-shared.pt", {"model_state": {"blocks.0.weight": torch.ones(2), "blocks.1.weight": torch.zeros(2)}})
    save_checkpoint(tmp_path / "phase2-last.pt", {"model_state": {"blocks.1.weight": torch.full((2,), 5.0)},
                                                  SHARED_STATE_KEY: "phase2-shared.pt", "epoch": 1})
    payload = load_checkpoint(tmp_path / "phase2-last.pt")
    assert SHARED_STATE_KEY not in payload and payload["epoch"] == 1
    assert torch.equal(payload["model_state"]["blocks.0.weight"], torch.ones(2))
    assert torch.equal(payload["model_state"]["blocks.1.weight"], torch.full((2,), 5.0))
    (tmp_path / "phase2-shared.pt").unlink()
    with pytest.raises(CheckpointError, match="phase2-shared.pt, which is not beside it"):
        load_checkpoint(tmp_path / "phase2-last.pt")


@pytest.mark.parametrize("links", [True, False])
def test_copies_hold_the_same_bytes_and_outlive_a_rewrite_of_the_original(tmp_path, monkeypatch, links):
    if not links:  # a filesystem without hard links: the bytes are copied instead
        def no_links(source, target):
            raise OSError(95, "Operation not supported")
        monkeypatch.setattr("phasenets.train.checkpoint.os.link", no_links)
    save_checkpoint(tmp_path / "best.pt", {"epoch": 1, "model_state": {"w": torch.ones(3)}}, copies=[tmp_path / "last.pt"])
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert ((tmp_path / "best.pt").stat().st_ino == (tmp_path / "last.pt").stat().st_ino) == links
    save_checkpoint(tmp_path / "last.pt", {"epoch": 2, "model_state": {"w": torch.zeros(3)}})  # the next epoch
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model_state"]["w"], torch.ones(3))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left


def test_a_full_disk_while_saving_names_the_checkpoint(tmp_path, monkeypatch):
    """torch's zip writer turns a failed write into its own RuntimeError; the save says what it was."""
    import builtins
    import errno

    real_open = builtins.open

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def opening(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if "tmp-" in str(path) and "w" in mode else handle

    monkeypatch.setattr(builtins, "open", opening)
    target = tmp_path / "phase1-last.pt"
    with pytest.raises(OSError) as raised:
        save_checkpoint(target, {"model_state": {"w": torch.ones(1000)}})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written left behind
