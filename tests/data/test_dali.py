"""The DALI loader (CPU pipelines): batches, views, shards, bad files (pixels: test_loader_agreement.py)."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")

from phasenets.data.dali_loader import build_dali_loader  # noqa: E402
from phasenets.data.layout import Sample  # noqa: E402
from phasenets.data.torch_loader import build_torch_loader  # noqa: E402
from phasenets.data.transforms import AugmentConfig, Normalization  # noqa: E402

pytestmark = pytest.mark.dali

IMAGE_SIZE = 24
# Every augmentation on, so that every graph input is exercised.
ALL_AUGMENTATIONS = AugmentConfig(random_resized_crop=True, hflip=True, rotation=20.0, shift=0.1,
                                  shear=10.0, zoom=0.2, brightness=0.3, contrast=0.3,
                                  random_erasing=0.5)
# Sizes around IMAGE_SIZE: landscape, portrait, square, one smaller than the crop (upsampled).
SIZES = [(48, 36), (30, 52), (40, 40), (20, 17), (64, 27), (33, 45)]


def _photo_like(rng, width, height, channels):
    """Gradients plus noise: smooth enough to compress like a photo, varied enough to compare."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [255 * x / width, 255 * y / height, 127 * (x + y) / (width + height) + 64][:channels]
    image = np.stack(planes, axis=-1) + rng.normal(0, 12, (height, width, channels))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def _loader(build, samples, **options):
    defaults = dict(image_size=IMAGE_SIZE, in_channels=3, augment=None,
                    normalization=Normalization.identity(options.get("in_channels", 3)),
                    batch_size=4, shuffle=False, seed=3, num_workers=0 if build is build_torch_loader else 2)
    return build(samples, **{**defaults, **options})


def _by_index(loader):
    """{index: image} over one epoch (on the CPU: where CUDA exists, DALI's batches are on the GPU)."""
    return {int(i): image for images, _, indices in loader for i, image in zip(indices, images.cpu())}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEGs of several sizes and aspect ratios, one of them grayscale."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    samples = []
    for index, (width, height) in enumerate(SIZES):
        path = root / f"{index}.jpg"
        Image.fromarray(_photo_like(rng, width, height, 1 if index == 2 else 3)).save(path, quality=95)
        samples.append(Sample(str(path), index % 3))
    return samples


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """PNGs of one gray level each (10 + 20 * index): an image tells which sample it is."""
    root = tmp_path_factory.mktemp("flat")
    samples = []
    for index in range(11):
        path = root / f"{index:02d}.png"
        Image.new("RGB", (30 + index, 26), (10 + 20 * index,) * 3).save(path)
        samples.append(Sample(str(path), index % 4))
    return samples


def _assert_images_show_their_indices(loader, samples):
    """One epoch over ``flat``-style samples: each image has its index's gray level and its label; returns
    the indices in the order they came."""
    seen = []
    for images, labels, indices in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert labels.dtype == torch.int64 and indices.dtype == torch.int64
        assert labels.tolist() == [samples[i].label for i in indices]
        levels = images.cpu().mean(dim=(1, 2, 3)) * 255
        torch.testing.assert_close(levels, 10 + 20 * indices.float(), atol=0.5, rtol=0)
        seen += indices.tolist()
    assert sorted(seen) == list(range(len(samples)))
    return seen


def test_batches_carry_the_labels_and_indices_of_their_images(flat):
    loader = _loader(build_dali_loader, flat, shuffle=True, batch_size=4)
    loader.set_epoch(1)
    seen = _assert_images_show_their_indices(loader, flat)
    assert seen != sorted(seen), "shuffle=True should not give the file order"
    assert len(loader) == 3 and loader.num_samples == len(flat)
    expected = "CPU pipelines" if not torch.cuda.is_available() else "GPU operators on cuda:"
    assert loader.description.startswith("DALI, ") and expected in loader.description


def test_augmented_views_are_reproducible_and_match_the_pil_views(photos):
    options = dict(augment=ALL_AUGMENTATIONS)
    first = _loader(build_dali_loader, photos, shuffle=True, batch_size=4, **options)
    first.set_epoch(5)  # view 5
    again = _loader(build_dali_loader, photos, shuffle=False, batch_size=3, num_workers=1, **options)
    again.set_view(5)
    view5, view5_again = _by_index(first), _by_index(again)
    again.set_view(6)
    view6 = _by_index(again)
    reference = _loader(build_torch_loader, photos, **options)
    reference.set_view(5)
    pil_view5 = _by_index(reference)
    for index, image in view5.items():
        assert torch.equal(image, view5_again[index]), "a view must not depend on batch or order"
        assert not torch.equal(image, view6[index])
        assert 0.0 <= image.min() and image.max() <= 1.0
        # Same parameters, same arithmetic (test_loader_agreement.py measures it pixel by pixel).
        assert (image - pil_view5[index]).abs().max() < 1e-3


def test_erasing_fills_the_normalized_mean(photos):
    # A mean of 127.5 / 255 that no 8-bit pixel equals: exact zeros are erased pixels only.
    normalization = Normalization((0.5, 0.5, 0.5), (0.2, 0.3, 0.4))
    loader = _loader(build_dali_loader, photos, normalization=normalization,
                     augment=AugmentConfig(random_erasing=1.0))
    reference = _loader(build_torch_loader, photos, normalization=normalization,
                        augment=AugmentConfig(random_erasing=1.0))
    dali_images, pil_images = _by_index(loader), _by_index(reference)
    for index, image in dali_images.items():
        erased = image == 0
        assert erased.any(), "random_erasing=1.0 erases one box in every image"
        assert torch.equal(erased, pil_images[index] == 0)


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_disjoint_cover_the_split_and_take_equal_steps(flat, drop_last):
    world_size = 3
    shards = []
    for rank in range(world_size):
        loader = _loader(build_dali_loader, flat, shuffle=True, batch_size=2, drop_last=drop_last,
                         rank=rank, world_size=world_size)
        loader.set_epoch(2)
        batches = [indices.tolist() for _, _, indices in loader]
        assert len(batches) == len(loader)
        shards.append([index for batch in batches for index in batch])
    assert len({len(shard) for shard in shards}) == 1 and len({len(s) // 2 for s in shards}) == 1
    everything = [index for shard in shards for index in shard]
    if drop_last:  # 11 samples over 3 ranks: 9 distinct, each once; then 2 per batch, 1 dropped
        assert len(set(everything)) == len(everything) == 6
    else:  # padded by wrapping around to 12: all 11 samples, one of them twice
        assert set(everything) == set(range(len(flat))) and len(everything) == 12


def test_an_abandoned_epoch_does_not_leak_into_the_next(flat):
    loader = _loader(build_dali_loader, flat, batch_size=2)
    unfinished = iter(loader)
    next(unfinished)  # leaves prefetched batches behind, and stays referenced
    _assert_images_show_their_indices(loader, flat)
    next(iter(loader))  # dropped at once
    _assert_images_show_their_indices(loader, flat)


def test_bad_files_are_replaced_without_stopping_the_epoch(flat, tmp_path):
    good = open(flat[0].path, "rb").read()
    truncated, empty, corrupt = tmp_path / "truncated.png", tmp_path / "empty.jpg", tmp_path / "corrupt.png"
    truncated.write_bytes(good[: len(good) // 2])
    empty.write_bytes(b"")
    # A flipped byte inside the pixel data: the header parses and the file ends properly, so only
    # the decoder notices; the loader then finds the culprit and replays the batch.
    data = bytearray(good)
    data[data.find(b"IDAT") + 8] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    samples = [flat[1], Sample(str(truncated), 0), Sample(str(empty), 0), flat[2], Sample(str(corrupt), 0), flat[3]]
    loader = _loader(build_dali_loader, samples, batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = [indices.tolist() for _, _, indices in loader]
    assert batches == [[0, 3], [3, 3], [5, 5]]  # each bad slot takes the next good sample
    assert [message.split(":")[0] for message in loader.bad_files] == [str(truncated), str(empty), str(corrupt)]
    assert len(caught) == 3
    assert [indices.tolist() for _, _, indices in loader] == batches  # no second warning, same batches


def test_invalid_arguments_are_refused(flat):
    with pytest.raises(ValueError, match="empty sample list"):
        _loader(build_dali_loader, [])
    with pytest.raises(ValueError, match="in_channels"):
        _loader(build_dali_loader, flat, in_channels=2)
    with pytest.raises(ValueError, match="rank"):
        _loader(build_dali_loader, flat, rank=2, world_size=2)
    with pytest.raises(ValueError, match="view"):
        _loader(build_dali_loader, flat).set_view(-1)
