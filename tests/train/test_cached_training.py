"""Training later phases from level caches: same results as recomputing the frozen prefix,
disk caches reused by ``--resume``, anything stale rebuilt, ``auto`` off where it cannot pay."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict

import pytest
import torch
from torch import nn

from phasenets.cache import CachedFeatures, default_cache_views
from phasenets.config import ConfigError
from phasenets.models import BlockwiseNet
from phasenets.train import prepare_run, run_phases
from phasenets.train.checkpoint import load_checkpoint, save_checkpoint
from phasenets.train.sources import FrozenPrefixSource

from conftest import CLASSES, IMAGE_SIZE, tiny_config


def dropout_free_net() -> BlockwiseNet:
    """The tiny net without dropout: dropout masks come from the global RNG, which the image loader
    also draws from (one number per DataLoader iterator) and a cached source does not, so with
    dropout the two paths would see different masks although their features are the same."""
    torch.manual_seed(0)
    blocks = [
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, len(CLASSES))),
    ]
    return BlockwiseNet.from_modules(blocks, len(CLASSES), (1, IMAGE_SIZE, IMAGE_SIZE))


def _fit(data, output, **options):
    """Train the tiny net; returns the run's setup (its inputs, plan and model stay usable) and result."""
    with prepare_run(tiny_config(data, output, patience=0, **options), model=dropout_free_net()) as setup:
        return setup, run_phases(setup)


def _losses(result) -> list[float]:
    return [phase.validation["loss"] for phase in result.phases]


@pytest.fixture(scope="module")
def recomputed(tiny_data, tmp_path_factory):
    return _fit(tiny_data, tmp_path_factory.mktemp("runs") / "off", cache="off")


def test_fp32_cache_trains_like_recomputing(tiny_data, tmp_path, recomputed):
    # Same samples, same order, same batches, same features: only float rounding could differ (a
    # conv kernel may pick another algorithm for another batch make-up). On CPU it is bitwise.
    _, cached = _fit(tiny_data, tmp_path / "host", cache="host", cache_dtype="fp32")
    assert cached.cache.builds == 3 * 2  # levels 0 (the images), 1 and 2 of train and validation (test unused)
    assert _losses(cached) == pytest.approx(_losses(recomputed[1]), rel=1e-6)
    reference = recomputed[1].model.state_dict()
    for name, value in cached.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6)


def test_fp16_cache_matches_within_fp16_rounding(tiny_data, tmp_path):
    # Training amplifies any difference step by step, so the comparison is on what the phases
    # read: level 1 is the recomputed block 1 rounded to 11 significant bits, and level 2 is
    # block 2 over the stored level 1, rounded again (levels are built one block at a time).
    setup, _ = _fit(tiny_data, tmp_path / "fp16", cache="host", cache_dtype="fp16", max_epochs=1)
    inputs, model = setup.inputs, setup.model
    source = inputs.source("validation", setup.plan[1])
    assert isinstance(source, CachedFeatures) and source.cache.dtype == "fp16"
    exact = FrozenPrefixSource(inputs.loaders["validation"], model, 1, torch.device("cpu"))
    level1 = {}
    for (features, labels, indices), (expected, expected_labels, expected_indices) in zip(source, exact):
        assert torch.equal(indices, expected_indices) and torch.equal(labels, expected_labels)
        torch.testing.assert_close(features, expected, rtol=2**-10, atol=1e-6)
        level1.update(zip(indices.tolist(), features))
    with torch.no_grad():
        for features, _, indices in inputs.source("validation", setup.plan[2]):
            expected = model.blocks[1](torch.stack([level1[index] for index in indices.tolist()]))
            torch.testing.assert_close(features, expected, rtol=2**-10, atol=1e-6)
    inputs.close()


def test_resume_reuses_the_disk_cache_and_a_changed_weight_rebuilds(tiny_data, tmp_path):
    run = tmp_path / "run"
    _, first = _fit(tiny_data, run, cache="disk")
    names = sorted(p.name for p in (run / "cache").iterdir())  # no lock or partial file left either
    assert first.cache.builds == 4 and [name.rsplit("-", 1)[0] for name in names] == [
        f"level{level}-{split}" for level in (1, 2) for split in ("train", "validation")]
    assert all(re.fullmatch(r"level\d-\w+-[0-9a-f]{16}\.pncache", name) for name in names)

    # forget phase 3: resuming starts it again and needs level 2, which is on disk
    resumable = tmp_path / "resumable"
    shutil.copytree(run, resumable)
    for path in (resumable / "checkpoints").glob("phase3-*.pt"):
        path.unlink()
    _, resumed = _fit(tiny_data, resumable, cache="disk", resume=str(resumable))
    assert (resumed.cache.builds, resumed.cache.reuses) == (0, 2)

    # one ulp more in one frozen weight of block 1: every level-1 and level-2 cache is stale, and
    # level 2 is built from a new level 1, as the uninterrupted run built it
    checkpoint_path = resumable / "checkpoints" / "phase2-last.pt"
    checkpoint = load_checkpoint(checkpoint_path)
    weight = checkpoint["model_state"]["blocks.0.0.weight"]
    weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(float("inf")))
    save_checkpoint(checkpoint_path, checkpoint)
    for path in (resumable / "checkpoints").glob("phase3-*.pt"):
        path.unlink()
    _, changed = _fit(tiny_data, resumable, cache="disk", resume=str(resumable))
    assert (changed.cache.builds, changed.cache.reuses) == (4, 0)


def test_a_standard_run_reads_its_images_from_memory_and_trains_as_from_the_loader(tiny_data, tmp_path):
    # level 0 holds the loader's float32 images: the same batches, bit for bit, without decoding each epoch
    _, from_loader = _fit(tiny_data, tmp_path / "off", schedule="standard", max_epochs=3, cache="off")
    _, cached = _fit(tiny_data, tmp_path / "auto", schedule="standard", max_epochs=3)
    assert cached.cache.enabled and cached.cache.builds == 2  # train and validation images
    assert set(cached.cache.wait_fractions) == {"standard"}
    assert _losses(cached) == _losses(from_loader)
    reference = from_loader.model.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in cached.model.state_dict().items())


def test_auto_stays_off_where_the_images_cannot_be_kept(tiny_data, tmp_path):
    _, augmented = _fit(tiny_data, tmp_path / "augmented", schedule="standard", augment="light", max_epochs=1)
    assert not augmented.cache.enabled and augmented.cache.builds == 0
    with pytest.raises(ConfigError, match="no phase has a frozen prefix .* images are augmented"):
        _fit(tiny_data, tmp_path / "forced", schedule="progressive", cache="host", augment="light", max_epochs=1)
    with pytest.raises(ConfigError, match="images are kept in memory only"):
        _fit(tiny_data, tmp_path / "disk", schedule="standard", cache="disk", max_epochs=1)
    # over the memory budget: a phase-wise run still caches the later levels, phase 1 reads the loader
    setup, small = _fit(tiny_data, tmp_path / "budget", cache_budget_gb=1e-5, cache_dir=str(tmp_path / "files"),
                        max_epochs=1)
    assert not setup.inputs.levels.keeps_images and isinstance(setup.inputs.source("train", setup.plan[0]),
                                                               FrozenPrefixSource)
    assert small.cache.builds == 4 and set(small.cache.wait_fractions) == {"phase 2", "phase 3"}
    # the record says so: no level 0, and each later level where its size sent it (the budget is 10 KiB)
    assert [(record.level, record.split, record.tier) for record in small.cache.levels] == [
        (1, "train", "disk"), (1, "validation", "host"), (2, "train", "host"), (2, "validation", "host")]
    setup.inputs.close()


def test_auto_caches_a_phasewise_run(tiny_data, tmp_path):
    _, result = _fit(tiny_data, tmp_path / "auto", max_epochs=1)
    assert result.cache.enabled and result.cache.builds == 6  # levels 0 (the images), 1 and 2
    assert not (tmp_path / "auto" / "cache").exists()  # small enough for RAM: no file written
    assert set(result.cache.wait_fractions) == {"phase 1", "phase 2", "phase 3"}
    # summary.json records every level cache held: the images in float32, then the blocks' outputs
    recorded = json.loads((tmp_path / "auto" / "summary.json").read_text())["cache"]
    assert recorded["builds"] == 6 and recorded["levels"] == [asdict(record) for record in result.cache.levels]
    assert [(r["level"], r["split"], r["tier"], r["dtype"], r["reused"]) for r in recorded["levels"]] == [
        (level, split, "host", "fp32" if level == 0 else "fp16", False)
        for level in (0, 1, 2) for split in ("train", "validation")]


def test_augmented_views_are_the_loader_views(tiny_data, tmp_path):
    setup, _ = _fit(tiny_data, tmp_path / "views", cache="host", cache_dtype="fp32", augment="light",
                    cache_views=3, max_epochs=1)
    source = setup.inputs.source("train", setup.plan[1])
    assert source.cache.views == 3 and len(source) == len(setup.inputs.loaders["train"])
    loader = setup.inputs.levels.feeds["train"].make_loader()
    for view in range(3):
        loader.set_view(view)
        images, _, indices = next(iter(loader))
        with torch.no_grad():
            expected = setup.model.blocks[0](images)
        torch.testing.assert_close(source.cache.read(indices, views=view), expected, rtol=1e-5, atol=1e-6)
    # each epoch draws one view per sample, reproducibly, and over epochs every view gets drawn
    draws = []
    for epoch in range(4):
        source.set_epoch(epoch)
        draws.append(source.epoch_views())
    source.set_epoch(0)
    assert torch.equal(source.epoch_views(), draws[0])
    assert set(torch.cat(draws).tolist()) == {0, 1, 2}
    setup.inputs.close()


def test_default_views():
    assert default_cache_views(augmenting=False, max_epochs=50) == 1
    assert default_cache_views(augmenting=True, max_epochs=50) == 4
    assert default_cache_views(augmenting=True, max_epochs=2) == 2


def test_runs_sharing_a_cache_dir_reuse_what_is_the_same_and_keep_apart_what_is_not(tiny_data, tmp_path):
    """--cache-dir shared by runs: an identical run builds nothing (even in a memory tier, the
    levels go through the shared files), and a run with another seed keeps files of its own
    instead of overwriting the first run's (their names carry the fingerprint)."""
    shared = tmp_path / "shared"
    # the images (level 0, train and validation) stay in each run's memory: never a shared file
    _, first = _fit(tiny_data, tmp_path / "a", cache="host", cache_dir=str(shared), max_epochs=1)
    assert (first.cache.builds, first.cache.reuses) == (2 + 4, 0) and len(list(shared.glob("*.pncache"))) == 4
    _, same = _fit(tiny_data, tmp_path / "b", cache="host", cache_dir=str(shared), max_epochs=1)
    assert (same.cache.builds, same.cache.reuses) == (2, 4)
    _, other = _fit(tiny_data, tmp_path / "c", cache="host", cache_dir=str(shared), max_epochs=1, seed=1)
    assert (other.cache.builds, other.cache.reuses) == (2 + 4, 0) and len(list(shared.glob("*.pncache"))) == 8
    _, again = _fit(tiny_data, tmp_path / "d", cache="host", cache_dir=str(shared), max_epochs=1)
    assert (again.cache.builds, again.cache.reuses) == (2, 4)
    assert not list(shared.glob("*.lock")) and not list(shared.glob("*partial*"))
