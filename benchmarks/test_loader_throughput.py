"""T5: DALI's CPU pipeline vs the torch DataLoader + PIL, same number of workers, 224 px training.

Run: ``python -m pytest benchmarks/test_loader_throughput.py -q -s`` (on an otherwise idle machine).
Each benchmark round is one epoch over the same few hundred 320x240 JPEGs: decode, random resized
crop to 224, flip, normalize. The last test prints both rates and their ratio (target >= 1.3x).
"""
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")

from phasenets.data.dali_loader import build_dali_loader  # noqa: E402
from phasenets.data.torch_loader import build_torch_loader  # noqa: E402
from phasenets.data.transforms import AugmentConfig, Normalization  # noqa: E402

NUM_IMAGES = 384
WORKERS = 2
LOADER_OPTIONS = dict(image_size=224, in_channels=3, augment=AugmentConfig.preset("crop"),
                      normalization=Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                      batch_size=64, shuffle=True, seed=0, num_workers=WORKERS)
LOADERS = {"dali": build_dali_loader, "torch": build_torch_loader}
_images_per_second = {}


def _check_batch(loader, samples):
    images, labels, indices = next(iter(loader))
    images = images.cpu()
    assert images.shape == (64, 3, 224, 224) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.abs().max() <= 2.0 + 1e-5  # (0..1 - 0.5) / 0.25
    assert labels.tolist() == [samples[i].label for i in indices]
    return dict(zip(indices.tolist(), images))


def _run_epoch(loader, epoch):
    loader.set_epoch(epoch)  # a fresh order and fresh views each round
    return sum(images.shape[0] for images, _, _ in loader)


@pytest.mark.parametrize("kind", list(LOADERS))
def test_training_epoch_throughput(benchmark, jpeg_samples, monkeypatch, kind):
    # T5 is about DALI's CPU pipeline: hide a GPU so that the loader does not pick its GPU graph.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    samples = jpeg_samples(NUM_IMAGES)
    loader = LOADERS[kind](samples, **LOADER_OPTIONS)
    first = _check_batch(loader, samples)
    # Both loaders make the same view with the same arithmetic: compare with the other kind.
    other_kind = "torch" if kind == "dali" else "dali"
    other = _check_batch(LOADERS[other_kind](samples, **{**LOADER_OPTIONS, "num_workers": 1}), samples)
    for index in first.keys() & other.keys():
        assert (first[index] - other[index]).abs().max() < 1e-3, f"{kind} and {other_kind} disagree on sample {index}"

    epochs = iter(range(1, 100))
    count = benchmark.pedantic(lambda: _run_epoch(loader, next(epochs)), rounds=5, warmup_rounds=1)
    assert count == NUM_IMAGES
    rate = NUM_IMAGES / benchmark.stats.stats.median
    benchmark.extra_info["images_per_second"] = round(rate, 1)
    _images_per_second[kind] = rate


def test_t5_ratio():
    if _images_per_second.keys() != LOADERS.keys():
        pytest.skip("needs both throughput benchmarks of this run")
    ratio = _images_per_second["dali"] / _images_per_second["torch"]
    print(f"\nT5 ({WORKERS} workers, {NUM_IMAGES} 320x240 JPEGs -> 224 px, crop + flip): "
          f"DALI CPU {_images_per_second['dali']:.0f} images/s, torch DataLoader + PIL "
          f"{_images_per_second['torch']:.0f} images/s, ratio {ratio:.2f}x (target >= 1.3x)")
