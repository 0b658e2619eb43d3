"""Phase-wise training on a GPU (issue 17): a run reading its frozen prefix from the cuda-tier
cache learns what a run recomputing it learns, and mixed precision (bf16 autocast; fp16 with a
GradScaler) trains with finite losses. Skipped where there is no CUDA device.
"""
from __future__ import annotations

import math

import pytest
import torch

from phasenets.train import PhaseTrainer

from conftest import tiny_config, write_dataset
from test_cached_training import dropout_free_net

pytestmark = pytest.mark.cuda

VALIDATION_PER_CLASS = 12  # 36 validation images: one image is 1/36 of the accuracy


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("gpu-data"), {"train": 24, "validation": VALIDATION_PER_CLASS})


@pytest.fixture(autouse=True, scope="module")
def _exact_float32():
    """Full float32 convolutions (no TF32) from deterministic cuDNN algorithms: what is left between
    a cached and a recomputed run is then the storage dtype's rounding alone. (Not the run's
    deterministic=True: it turns on torch.use_deterministic_algorithms for the whole process.)
    Module-scoped, so that it is in force before the module-scoped ``recomputed`` run."""
    flags = {
        (torch.backends.cudnn, "allow_tf32"): False, (torch.backends.cuda.matmul, "allow_tf32"): False,
        (torch.backends.cudnn, "deterministic"): True, (torch.backends.cudnn, "benchmark"): False,
    }
    saved = {key: getattr(*key) for key in flags}
    for (module, name), value in flags.items():
        setattr(module, name, value)
    yield
    for (module, name), value in saved.items():
        setattr(module, name, value)


def fit(data, output, **options):
    config = tiny_config(data, output, device="cuda", patience=0, **options)
    return PhaseTrainer(config, model=dropout_free_net()).fit()


def validation(result) -> list[tuple[float, float]]:
    """(loss, accuracy) of each phase's best weights on the validation split."""
    return [(phase.validation["loss"], phase.validation["accuracy"]) for phase in result.phases]


@pytest.fixture(scope="module")
def recomputed(gpu_data, tmp_path_factory):
    return fit(gpu_data, tmp_path_factory.mktemp("runs") / "off", cache="off")


@pytest.mark.parametrize("dtype, loss_tolerance, images", [("fp32", 1e-3, 0), ("fp16", 5e-2, 2)])
def test_a_cuda_cache_trains_like_recomputing(gpu_data, tmp_path, recomputed, dtype, loss_tolerance, images):
    """V=1 without augmentation: the same samples in the same batches read the same features,
    exactly for fp32 storage up to float rounding, within fp16's 11 bits otherwise."""
    cached = fit(gpu_data, tmp_path / dtype, cache="cuda", cache_dtype=dtype)
    assert len(cached.phases) == len(recomputed.phases) == 3
    for (loss, accuracy), (want_loss, want_accuracy) in zip(validation(cached), validation(recomputed)):
        assert loss == pytest.approx(want_loss, rel=loss_tolerance)
        assert abs(accuracy - want_accuracy) <= images / (3 * VALIDATION_PER_CLASS) + 1e-9
    assert abs(cached.final["accuracy"] - recomputed.final["accuracy"]) <= images / (3 * VALIDATION_PER_CLASS) + 1e-9


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_phases_train_with_finite_losses(gpu_data, tmp_path, amp):
    """bf16 autocast, and fp16 autocast with its GradScaler, each over every phase (the later ones
    reading the cuda-tier cache built under autocast)."""
    result = fit(gpu_data, tmp_path / amp, amp=amp, cache="cuda", max_epochs=1)
    assert len(result.phases) == 3
    for loss, accuracy in validation(result):
        assert math.isfinite(loss) and 0.0 <= accuracy <= 1.0
    assert math.isfinite(result.final["loss"])
    for name, parameter in result.model.named_parameters():
        assert bool(torch.isfinite(parameter).all()), f"{name} holds NaN or infinite values after {amp} training"
