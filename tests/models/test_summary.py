"""summarize / format_summary: per-block numbers checked against hand counts."""

from __future__ import annotations

import json

import torch

from phasenets.models import build_model
from phasenets.models.summary import count_macs, format_summary, summarize


def test_lenet5_summary_matches_hand_counts():
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=32, head="linear")
    summary = summarize(model)
    blocks = summary["blocks"]
    assert [b["params"] for b in blocks] == [156, 2_416, 48_120, 10_164, 850]
    # C1: 28*28 outputs x 6 maps x 25 taps; C3: 10*10 x 16 x 6*25; then the dense layers.
    assert [b["macs"] for b in blocks] == [28 * 28 * 6 * 25, 10 * 10 * 16 * 150, 400 * 120, 120 * 84, 84 * 10]
    assert [b["output_shape"] for b in blocks] == [[6, 14, 14], [16, 5, 5], [120], [84], [10]]
    assert [b["input_shape"] for b in blocks][:2] == [[1, 32, 32], [6, 14, 14]]
    assert [b["cache_bytes_fp16"] for b in blocks] == [2 * 6 * 14 * 14, 2 * 400, 240, 168, 20]
    # linear heads: a Linear from each block's channels (or features) to the 10 classes
    assert [b["head_params"] for b in blocks] == [6 * 10 + 10, 16 * 10 + 10, 120 * 10 + 10, 84 * 10 + 10, 0]
    assert [b["head_macs"] for b in blocks] == [6 * 10, 16 * 10, 120 * 10, 84 * 10, 0]  # pooling is free
    assert summary["totals"] == {
        "params": 61_706,
        "trainable_params": 61_706,
        "head_params": 70 + 170 + 1_210 + 850,
        "head_macs": 60 + 160 + 1_200 + 840,
        "macs": 117_600 + 240_000 + 48_000 + 10_080 + 840,
        "max_cache_bytes_fp16": 2 * 6 * 14 * 14,
    }
    json.dumps(summary)  # JSON-ready


def test_pooled_conv_heads_convolve_at_most_an_8x8_grid():
    # ResNet-20's first blocks output 16x32x32; the conv head's 3x3 convolution to 128 channels runs
    # over all 1,024 positions, the pooled_conv head's over 64, after a 4x4 average pool.
    conv, pooled = (summarize(build_model("resnet_cifar", 10, 1, 32, head=head))["blocks"] for head in ("conv", "pooled_conv"))
    def head_macs(positions):
        return positions * 128 * 16 * 9 + positions * 128 + 128 * 10  # conv, batch norm, linear
    assert conv[0]["head_macs"] == head_macs(32 * 32)
    assert pooled[0]["head_macs"] == head_macs(8 * 8)
    assert conv[3]["head_macs"] == pooled[3]["head_macs"]  # block 4's maps are 8x8 already: no pooling
    assert [b["head_params"] for b in conv] == [b["head_params"] for b in pooled]


def test_frozen_blocks_show_in_trainable_counts():
    model = build_model("lenet5", num_classes=10)
    model.freeze_blocks(2)
    summary = summarize(model)
    assert [b["frozen"] for b in summary["blocks"]] == [True, True, False, False, False]
    assert summary["totals"]["trainable_params"] == 61_706 - 156 - 2_416


def test_batch_norm_counts_one_multiply_add_per_output_element():
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, groups=1, bias=False), torch.nn.BatchNorm2d(4))
    assert count_macs(block, (3, 5, 5)) == 4 * 3 * 3 * (3 * 3 * 3) + 4 * 3 * 3


def test_grouped_convolutions_count_their_groups():
    assert count_macs(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), (8, 4, 4)) == 8 * 4 * 4 * 9


def test_vgg16_macs_at_224_are_the_known_15_5_giga():
    with torch.device("meta"):
        model = build_model("vgg16", 1000, 3, 224)
    assert summarize(model)["totals"]["macs"] == 15_470_264_320


def test_format_summary_is_a_table_with_totals():
    model = build_model("alexnet", num_classes=10, image_size=64)
    text = format_summary(summarize(model))
    lines = text.splitlines()
    assert lines[0].startswith("alexnet: input 3x64x64, 10 classes, pooled_conv auxiliary heads")
    assert lines[1].split()[:3] == ["block", "input", "output"]
    assert len([line for line in lines if line[:1].isdigit()]) == 5
    total = sum(p.numel() for p in model.blocks.parameters())
    assert lines[-1].startswith("total") and f"{total:,}" in lines[-1]
