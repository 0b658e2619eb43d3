"""Frozen backbone + linear head, trained from a feature cache.

The classic transfer-learning job (seed 001): load a network's weights, freeze a prefix of its
blocks, run that prefix over the data once, keep its outputs in a ``FeatureCache``, then train a
small head for many epochs from the cache without ever running the backbone again. A second run
with the same weights, data and settings finds the committed cache on disk and skips the backbone
entirely; change any of them (even one weight by one ulp) and the fingerprint forces a rebuild.

    python examples/frozen_backbone.py                       # demo: saves random weights first
    python examples/frozen_backbone.py --weights my.pt --freeze 3 --dtype int8 --epochs 30

The data are scikit-learn's 8x8 digits upscaled to 32x32 (a synthetic stand-in where scikit-learn
is absent). ``--weights`` takes a state dict saved with ``torch.save(model.state_dict(), path)``
for ``build_model(--model, num_classes=10, in_channels=1, image_size=32)``.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from phasenets.cache import CacheSpec, FeatureCache, cache_fingerprint, dataset_manifest
from phasenets.models import build_model

IMAGE_SIZE = 32
NUM_CLASSES = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="state-dict file of the backbone (default: save random weights)")
    parser.add_argument("--model", default="lenet5", help="registered architecture (default: lenet5)")
    parser.add_argument("--freeze", type=int, default=2, help="number of leading blocks to freeze and cache")
    parser.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16", "int8"])
    parser.add_argument("--tier", default="disk", choices=["disk", "host", "cuda"],
                        help="where the cache is read from (it is always saved to disk for reuse)")
    parser.add_argument("--cache-dir", default="runs/frozen_backbone")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load_images(seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Return normalized images ``[N, 1, 32, 32]``, labels ``[N]`` and the dataset's name."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return synthetic_images(seed) + ("synthetic",)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    return (images - 0.5) / 0.5, torch.tensor(digits.target), "sklearn-digits"


def synthetic_images(seed: int, per_class: int = 150) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten noisy class prototypes: linearly separable enough for a quick demo."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(NUM_CLASSES, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return prototypes[labels] + 1.5 * noise, labels


def split(images: torch.Tensor, labels: torch.Tensor, seed: int, test_fraction: float = 0.25):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test_size = int(len(labels) * test_fraction)
    test, train = order[:test_size], order[test_size:]
    return (images[train], labels[train]), (images[test], labels[test])


def load_backbone(args: argparse.Namespace) -> tuple[nn.Module, str]:
    model = build_model(args.model, num_classes=NUM_CLASSES, in_channels=1, image_size=IMAGE_SIZE)
    weights = args.weights
    if weights is None:  # demo: stand in for user weights with a randomly initialised model
        weights = os.path.join(args.cache_dir, f"{args.model}-random-seed{args.seed}.pt")
        if not os.path.exists(weights):
            torch.save(model.state_dict(), weights)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if not 1 <= args.freeze < model.num_blocks:
        raise SystemExit(f"--freeze must be in 1..{model.num_blocks - 1} for {args.model}, got {args.freeze}")
    model.freeze_blocks(args.freeze)
    return model, weights


def fingerprint_for(model, args, split_name: str, images: torch.Tensor, weights: str, spec: CacheSpec) -> str:
    # The images live in memory, so their bytes stand in for a file manifest; the weights file is
    # listed too, so that replacing it invalidates the cache even before its tensors are compared.
    preprocessing = {"dataset": split_name, "image_size": IMAGE_SIZE, "normalize": [0.5, 0.5],
                     "images_sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest()}
    return cache_fingerprint(
        [model.blocks[k].state_dict() for k in range(args.freeze)],
        {"model": args.model, "config": model.config, "frozen_blocks": args.freeze},
        preprocessing,
        dataset_manifest([weights]),
        spec,
    )


def cached_features(model, args, split_name: str, images: torch.Tensor, weights: str) -> FeatureCache:
    feature_shape = model.block_output_shapes[args.freeze - 1]
    spec = CacheSpec(len(images), feature_shape, views=1, dtype=args.dtype)

    built = []

    def build(cache: FeatureCache) -> None:
        print(f"  {split_name}: running blocks 1..{args.freeze} over {len(images)} images once")
        built.append(True)
        with torch.inference_mode():
            for start in range(0, len(images), 256):
                indices = torch.arange(start, min(start + 256, len(images)))
                cache.write(indices, model.features(images[indices], args.freeze))

    started = time.perf_counter()
    name = f"{split_name}-{args.model}-upto{args.freeze}"
    cache = FeatureCache.open_or_build(
        build, cache_dir=args.cache_dir, name=name, spec=spec, tier=args.tier,
        fingerprint=fingerprint_for(model, args, split_name, images, weights, spec),
    )
    if not built:
        print(f"  {split_name}: found the committed cache {args.cache_dir}/{name}.pncache of these weights, "
              "settings and data: the backbone does not run")
    print(f"  {split_name}: {cache.num_samples} x {feature_shape} {cache.dtype} on {cache.tier.value}, "
          f"{cache.nbytes / 2**20:.2f} MiB, ready in {time.perf_counter() - started:.2f}s")
    return cache


def evaluate(head: nn.Module, cache: FeatureCache, labels: torch.Tensor) -> float:
    correct = 0
    with torch.inference_mode():
        for features, indices in cache.batches(torch.arange(cache.num_samples), batch_size=512, device="cpu"):
            correct += int((head(features).argmax(1) == labels[indices]).sum())
    return correct / cache.num_samples


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.cache_dir, exist_ok=True)
    images, labels, dataset = load_images(args.seed)
    (train_images, train_labels), (test_images, test_labels) = split(images, labels, args.seed)
    model, weights = load_backbone(args)
    print(f"{args.model} from {weights}: blocks 1..{args.freeze} frozen; data: {dataset}")

    train_cache = cached_features(model, args, "train", train_images, weights)
    test_cache = cached_features(model, args, "test", test_images, weights)

    feature_shape = train_cache.feature_shape
    head = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(feature_shape), NUM_CLASSES))
    optimizer = torch.optim.SGD(head.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(train_cache.num_samples)
        for features, indices in train_cache.batches(order, args.batch_size, device="cpu"):
            loss = F.cross_entropy(head(features), train_labels[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if epoch % 5 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:3d}  loss {loss.item():.3f}  test accuracy {evaluate(head, test_cache, test_labels):.3f}")
    print(f"trained the head for {args.epochs} epochs in {time.perf_counter() - started:.2f}s "
          f"without running the backbone; final test accuracy {evaluate(head, test_cache, test_labels):.3f}")
    train_cache.close()
    test_cache.close()


if __name__ == "__main__":
    main()
