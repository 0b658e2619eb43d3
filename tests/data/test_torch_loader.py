import gc
import os
import sys

import pytest
import torch

import phasenets.data as data
from phasenets.data import AugmentConfig, Normalization, build_loader, build_torch_loader, scan_dataset
from phasenets.data.torch_loader import ShardedBatchSampler
from tests.data.corpus import make_indexed_dataset, write_image

IDENTITY = Normalization.identity(1)


def indexed_samples(tmp_path, num_classes=3, per_class=4):
    """The train split of an indexed dataset: sample i is a constant image of value 10 * i."""
    return scan_dataset(make_indexed_dataset(tmp_path, num_classes, per_class)).train


def load_all(loader):
    images, labels, indices = zip(*loader)
    return torch.cat(images), torch.cat(labels), torch.cat(indices)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_labels_and_indices_match_the_file_list(tmp_path, num_workers):
    samples = indexed_samples(tmp_path)
    loader = build_torch_loader(samples, image_size=4, in_channels=1, augment=None, normalization=IDENTITY,
                                batch_size=5, shuffle=True, seed=0, num_workers=num_workers)
    images, labels, indices = load_all(loader)
    assert images.shape == (12, 1, 4, 4) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and indices.dtype == torch.int64
    assert sorted(indices.tolist()) == list(range(12))
    assert indices.tolist() != list(range(12))  # shuffled
    for image, label, index in zip(images, labels, indices):
        assert label == samples[index].label
        assert image.mean().item() * 255 == pytest.approx(10 * index.item(), abs=0.5)
    assert len(loader) == 3 and loader.num_samples == 12
    assert loader.description == ("PIL + DataLoader, 2 worker process(es)" if num_workers else
                                  "PIL + DataLoader, in this process")


def test_shuffle_is_deterministic_per_seed_and_epoch(tmp_path):
    samples = indexed_samples(tmp_path)

    def order(seed, epoch):
        loader = build_torch_loader(samples, image_size=4, in_channels=1, augment=None, normalization=IDENTITY,
                                    batch_size=4, shuffle=True, seed=seed, num_workers=0)
        loader.set_epoch(epoch)
        return load_all(loader)[2].tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 1) != order(1, 1)


def test_persistent_workers_follow_set_epoch_and_set_view(tmp_path):
    samples = indexed_samples(tmp_path, num_classes=2, per_class=3)
    loader = build_torch_loader(samples, image_size=8, in_channels=1, augment=AugmentConfig(rotation=90),
                                normalization=IDENTITY, batch_size=6, shuffle=False, seed=0, num_workers=2)
    by_epoch = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        by_epoch.append(load_all(loader)[0])
    assert not torch.equal(by_epoch[0], by_epoch[1])  # the view follows the epoch
    loader.set_view(0)
    loader.set_epoch(5)
    assert torch.equal(load_all(loader)[0], by_epoch[0])  # pinned view 0 == epoch 0's view
    loader.set_view(None)
    loader.set_epoch(1)
    assert torch.equal(load_all(loader)[0], by_epoch[1])
    with pytest.raises(ValueError, match="non-negative"):
        loader.set_view(-1)


@pytest.mark.parametrize("num_samples,world_size,batch_size,drop_last",
                         [(10, 3, 2, False), (10, 3, 2, True), (12, 4, 3, False), (7, 2, 5, False), (5, 5, 1, True)])
def test_shards_are_disjoint_cover_the_split_and_take_equal_steps(num_samples, world_size, batch_size, drop_last):
    samplers = [ShardedBatchSampler(num_samples, batch_size, shuffle=True, seed=3, drop_last=drop_last,
                                    rank=rank, world_size=world_size) for rank in range(world_size)]
    for sampler in samplers:
        sampler.epoch = 2
    shards = [[index for batch in sampler for index, view in batch] for sampler in samplers]
    assert len({len(sampler) for sampler in samplers}) == 1
    assert all(len(list(sampler)) == len(sampler) for sampler in samplers)
    seen = [index for shard in shards for index in shard]
    if drop_last:
        assert len(seen) == len(set(seen)) == len(samplers[0]) * batch_size * world_size  # full batches only
    else:
        assert set(seen) == set(range(num_samples))
        assert len(seen) - num_samples == (-num_samples) % world_size  # only the wrapped padding repeats
    views = {view for sampler in samplers for batch in sampler for _, view in batch}
    assert views == {2}


def test_sampler_rejects_impossible_sharding():
    with pytest.raises(ValueError, match="rank < world_size"):
        ShardedBatchSampler(10, 2, shuffle=False, seed=0, drop_last=False, rank=2, world_size=2)
    with pytest.raises(ValueError, match="3 samples cannot be sharded over 4 ranks"):
        ShardedBatchSampler(3, 2, shuffle=False, seed=0, drop_last=False, rank=0, world_size=4)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        ShardedBatchSampler(3, 0, shuffle=False, seed=0, drop_last=False, rank=0, world_size=1)


def test_images_of_any_mode_come_out_with_in_channels(tmp_path):
    from phasenets.data import Sample

    paths = [write_image(tmp_path / "rgba.png", (9, 7), "RGBA"), write_image(tmp_path / "gray.bmp", (5, 5), "L"),
             write_image(tmp_path / "cmyk.jpg", (6, 8), "CMYK"), write_image(tmp_path / "p.png", (6, 6), "P")]
    samples = [Sample(path, 0) for path in paths]
    for channels in (1, 3):
        loader = build_torch_loader(samples, image_size=6, in_channels=channels, augment=None,
                                    normalization=Normalization.identity(channels), batch_size=4,
                                    shuffle=False, seed=0, num_workers=0)
        assert load_all(loader)[0].shape == (4, channels, 6, 6)


def test_a_corrupt_file_error_names_the_file(tmp_path):
    from phasenets.data import DatasetError, Sample

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    loader = build_torch_loader([Sample(str(bad), 0)], image_size=4, in_channels=3, augment=None,
                                normalization=Normalization.identity(3), batch_size=1, shuffle=False,
                                seed=0, num_workers=0)
    with pytest.raises(DatasetError, match=r"bad\.jpg: cannot be decoded.*phasenets data check"):
        next(iter(loader))


def test_build_loader_falls_back_to_torch_when_dali_is_missing(tmp_path, monkeypatch, caplog):
    samples = indexed_samples(tmp_path, num_classes=2, per_class=2)
    options = dict(image_size=4, in_channels=1, augment=None, normalization=IDENTITY, batch_size=2,
                   shuffle=False, seed=0, num_workers=0)
    monkeypatch.setitem(sys.modules, "phasenets.data.dali_loader", None)  # makes the import fail
    monkeypatch.setattr(data, "_fallback_logged", False)
    with caplog.at_level("INFO", logger="phasenets.data"):
        assert isinstance(build_loader(samples, kind="auto", **options), data.TorchImageLoader)
        build_loader(samples, kind="auto", **options)
    assert sum("DALI loader unavailable" in r.message for r in caplog.records) == 1
    with pytest.raises(ImportError, match="--loader torch"):
        build_loader(samples, kind="dali", **options)
    assert isinstance(build_loader(samples, kind="torch", **options), data.TorchImageLoader)
    with pytest.raises(ValueError, match="valid: auto, dali, torch"):
        build_loader(samples, kind="pil", **options)


class _ParentOnlyGarbage:
    """Cyclic garbage that records it if a process other than its creator finalizes it."""

    def __init__(self, marker):
        self.creator, self.marker, self.cycle = os.getpid(), marker, self

    def __del__(self):
        if os.getpid() != self.creator:
            self.marker.write_text("finalized in a worker")


def test_workers_never_finalize_the_parents_garbage(tmp_path, monkeypatch):
    """A worker forked while the parent holds uncollected garbage would finalize it (DALI
    pipelines hang there): the loader collects it before its workers start."""
    import phasenets.data.torch_loader as torch_loader

    worker_init = torch_loader._single_threaded_worker
    monkeypatch.setattr(torch_loader, "_single_threaded_worker", lambda worker: (worker_init(worker), gc.collect()))
    samples = indexed_samples(tmp_path)
    marker = tmp_path / "finalized"
    enabled = gc.isenabled()
    gc.disable()  # no automatic collection may come between the garbage and the fork
    try:
        _ParentOnlyGarbage(marker)
        loader = build_torch_loader(samples, image_size=4, in_channels=1, augment=None, normalization=IDENTITY,
                                    batch_size=5, shuffle=False, seed=0, num_workers=2)
        assert len(load_all(loader)[0]) == 12
    finally:
        if enabled:
            gc.enable()
    assert not marker.exists()
