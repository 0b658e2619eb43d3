"""Record tests/fixtures/pretrained_reference.json from the real torchvision and timm.

For every architecture whose weights phasenets maps (see phasenets/models/pretrained.py), the
fixture keeps the library's state-dict entries (key, shape, dtype, checksum) and the logits its
model gives on a fixed input after loading the pseudo-random state dict that
tests/fixtures/pretrained_reference.py makes from those entries. tests/test_pretrained.py loads
the same state dict into phasenets' model and expects the same logits, so the name mapping is
checked against the real libraries wherever the tests run, without them and without any weights
file. Nothing is downloaded: the models are built with random weights and filled by this script.

Rerun it when torchvision or timm change their layouts, or when phasenets maps a new architecture
(add it to CASES), in a virtual environment of its own (torchvision's wheels need their matching
torch; the project's torch stays as it is):

    python3.11 -m venv /tmp/tv
    /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm   # the torch pin keeps timm off other torch
    cd <repository> && /tmp/tv/bin/python scripts/record_pretrained_reference.py

It refuses to run where torchvision or timm do not import. Recorded with torch 2.14.1,
torchvision 0.29.1 and timm 1.0.31 (the versions are written into the fixture).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach for a hub here

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
from pretrained_reference import FIXTURE, checksum, pseudo_random_state, reference_input  # noqa: E402

NUM_CLASSES = 7
# (library, architecture, image size, batch): the sizes at which phasenets' network computes the
# same function as the library's (VGG's and timm's first fully connected layers read a 7x7 map,
# so 224 px); small ones elsewhere to keep the tests quick
CASES = [
    ("torchvision", "resnet18", 64, 2),
    ("torchvision", "resnet50", 64, 2),
    ("torchvision", "vgg11", 224, 1),
    ("torchvision", "vgg11_bn", 224, 1),
    ("torchvision", "vgg16", 224, 1),
    ("torchvision", "vgg16_bn", 224, 1),
    ("torchvision", "alexnet", 224, 1),
    ("torchvision", "alexnet", 64, 2),
    ("timm", "resnet18", 64, 2),
    ("timm", "resnet50", 64, 2),
    ("timm", "vgg16", 224, 1),
    ("timm", "inception_v4", 99, 2),
]


def _libraries():
    try:
        import timm
        import torchvision
    except Exception as error:  # a torchvision built for another torch fails with RuntimeError
        sys.exit(f"record_pretrained_reference.py needs the real torchvision and timm ({error}); "
                 "see this script's docstring for the environment to run it in")
    return {"torchvision": torchvision, "timm": timm}


def _build(libraries, library: str, architecture: str) -> torch.nn.Module:
    if library == "torchvision":
        return getattr(libraries["torchvision"].models, architecture)(weights=None, num_classes=NUM_CLASSES)
    return libraries["timm"].create_model(architecture, pretrained=False, num_classes=NUM_CLASSES)


@torch.no_grad()
def record_case(libraries, library: str, architecture: str, image_size: int, batch: int) -> dict:
    model = _build(libraries, library, architecture).eval()
    entries = [[key, list(value.shape), str(value.dtype).removeprefix("torch.")]
               for key, value in model.state_dict().items()]
    state = pseudo_random_state(entries)
    model.load_state_dict(state, strict=True)
    images = reference_input(batch, image_size)
    return {
        "library": library, "architecture": architecture, "num_classes": NUM_CLASSES,
        "image_size": image_size, "batch": batch, "input_checksum": checksum(images),
        "tensors": [[*entry, checksum(state[entry[0]])] for entry in entries],
        "logits": model(images).tolist(),
    }


def main() -> None:
    libraries = _libraries()
    cases = []
    for library, architecture, image_size, batch in CASES:
        print(f"{library} {architecture} at {image_size} px", flush=True)
        cases.append(record_case(libraries, library, architecture, image_size, batch))
    versions = {"torch": torch.__version__, **{name: module.__version__ for name, module in libraries.items()}}
    FIXTURE.write_text(json.dumps({"recorded_with": versions, "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
