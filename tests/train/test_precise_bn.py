"""``precise_bn``: a finished phase's batch-norm statistics are those of its whole training set,
checkpointed and cached as such, on every rank alike; a net without batch norm is unchanged."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from phasenets.models import BlockwiseNet
from phasenets.train import prepare_run, run_phases
from phasenets.train.batch_norm import reestimate_batch_norm
from phasenets.train.checkpoint import load_checkpoint

from conftest import CLASSES, IMAGE_SIZE, tiny_config


def bn_net(batch_norm: bool = True) -> BlockwiseNet:
    """Conv + batch norm in blocks 1 and 2 (the norm optional), dropout in the classifier."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d if batch_norm else (lambda channels: nn.Identity())
    blocks = [
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm(4), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), norm(8), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 4 * 4, len(CLASSES))),
    ]
    return BlockwiseNet.from_modules(blocks, len(CLASSES), (1, IMAGE_SIZE, IMAGE_SIZE))


def _fit(data, output, batch_norm=True, **options):
    # fp32 cache: phase 2 then reads exactly what block 1 computes, so the statistics can be checked exactly
    config = tiny_config(data, output, **{"patience": 0, "cache": "host", "cache_dtype": "fp32", **options})
    with prepare_run(config, model=bn_net(batch_norm)) as setup:
        return setup, run_phases(setup)


def _batch_norm_inputs(setup, block: int) -> torch.Tensor:
    """What block ``block``'s batch norm sees over the whole training set: the frozen blocks before
    it in eval mode, then its conv."""
    model = setup.model.eval()
    images = torch.cat([images for images, _, _ in setup.inputs.loaders["train"]])
    assert len(images) == 36  # every training image (12 per class), none dropped
    with torch.no_grad():
        return model.blocks[block - 1][0](model.features(images, upto=block - 1))


def _assert_statistics_of(layer: nn.BatchNorm2d, inputs: torch.Tensor) -> None:
    torch.testing.assert_close(layer.running_mean, inputs.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var, inputs.var((0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_frozen_blocks_hold_the_statistics_of_their_whole_training_inputs(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="phasenets"):
        setup, result = _fit(tiny_data, tmp_path / "run", precise_bn=True)
    model = setup.model
    for block in (1, 2):  # block 2 from the level-1 cache
        _assert_statistics_of(model.blocks[block - 1][1], _batch_norm_inputs(setup, block))
        assert f"phase {block}: batch-norm statistics re-estimated over 36 images" in caplog.text
    assert "phase 3: batch-norm" not in caplog.text  # no batch norm in block 3: no extra pass

    # the phase's checkpoints hold the new statistics, and its validation scores are theirs
    state = model.state_dict()
    for kind in ("best", "last"):
        saved = load_checkpoint(tmp_path / "run" / "checkpoints" / f"phase2-{kind}.pt")["model_state"]
        for name in ("blocks.1.1.running_mean", "blocks.1.1.running_var"):
            assert torch.equal(saved[name], state[name])
    correct = total = 0
    with torch.no_grad():
        for images, labels, _ in setup.inputs.loaders["validation"]:
            logits = model.phase_forward(model.features(images, upto=1), 2)
            correct, total = correct + (logits.argmax(1) == labels).sum().item(), total + len(labels)
    assert result.phases[1].validation["accuracy"] == pytest.approx(correct / total)


def test_standard_training_is_re_estimated_at_its_end(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="phasenets"):
        setup, _ = _fit(tiny_data, tmp_path / "run", schedule="standard", cache="auto", precise_bn=True)
    assert "standard: batch-norm statistics re-estimated over 36 images" in caplog.text
    # block 1's inputs are images (block 2's depend on block 1 normalizing by its batches)
    _assert_statistics_of(setup.model.blocks[0][1], _batch_norm_inputs(setup, 1))


def test_without_batch_norm_the_flag_changes_nothing(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="phasenets"):
        _, plain = _fit(tiny_data, tmp_path / "plain", batch_norm=False)
        _, flagged = _fit(tiny_data, tmp_path / "flagged", batch_norm=False, precise_bn=True)
    assert "batch-norm statistics" not in caplog.text
    assert [p.validation for p in flagged.phases] == [p.validation for p in plain.phases]
    expected = plain.model.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in flagged.model.state_dict().items())

    def no_batches():
        raise AssertionError("a block without batch norm needs no pass over the data")
        yield

    assert reestimate_batch_norm(list(flagged.model.blocks), no_batches()) == 0


def test_a_resumed_run_reuses_the_caches_built_from_the_new_statistics(tiny_data, tmp_path):
    run = tmp_path / "run"
    _, first = _fit(tiny_data, run, precise_bn=True, cache="disk")
    resumable = tmp_path / "resumable"
    shutil.copytree(run, resumable)
    for path in (resumable / "checkpoints").glob("phase3-*.pt"):
        path.unlink()
    # phase 3 starts again from phase 2's closing checkpoint: its block 2 must be the one level 2 was
    # built from, or the fingerprint (frozen weights and buffers) would force a rebuild
    _, again = _fit(tiny_data, resumable, precise_bn=True, cache="disk", resume=str(resumable))
    assert again.cache.builds == 0 and again.cache.reuses > 0
    expected = first.model.state_dict()
    for name, value in again.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


# One rank of two (gloo): re-estimates a conv + batch-norm block over its half of 21 images and
# prints the statistics it ends with.
RANK_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from torch import nn
from phasenets.train.batch_norm import reestimate_batch_norm

rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
images = torch.randn(21, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 + 1
torch.manual_seed(0)
block = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
shard = images[rank::2]  # uneven: 11 and 10 images
count = reestimate_batch_norm([block], shard.split(4), lambda tensor: dist.all_reduce(tensor) or tensor)
print(json.dumps([count, block[1].running_mean.tolist(), block[1].running_var.tolist()]))
dist.destroy_process_group()
"""


def test_ranks_end_with_the_same_statistics_of_the_whole_set(tmp_path):
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), str(tmp_path / "store")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [errors for _, errors in outputs]
    images = torch.randn(21, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 + 1
    torch.manual_seed(0)
    with torch.no_grad():
        inputs = nn.Conv2d(1, 4, 3)(images)
    for printed, _ in outputs:
        count, mean, var = json.loads(printed)
        assert count == 21
        torch.testing.assert_close(torch.tensor(mean), inputs.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(var), inputs.var((0, 2, 3)), rtol=1e-5, atol=1e-6)
