"""Optimizers: each built with its fastest update kernels, which step like torch's default ones."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from phasenets.config import TrainConfig
from phasenets.train.optim import build_optimizer


@pytest.mark.parametrize("name, kernel", [("adam", "fused"), ("adamw", "fused"), ("adadelta", "foreach"), ("sgd", None)])
def test_fast_kernels_step_like_the_default_ones(name, kernel):
    torch.manual_seed(0)
    fast_net, plain_net = nn.Linear(16, 4), nn.Linear(16, 4)
    plain_net.load_state_dict(fast_net.state_dict())
    config = TrainConfig(optimizer=name, lr=0.01, weight_decay=1e-3, momentum=0.9)
    fast = build_optimizer(config, [(fast_net, 1.0)])
    assert {key: fast.defaults.get(key) for key in ("fused", "foreach") if fast.defaults.get(key)} == (
        {kernel: True} if kernel else {})
    plain_options = dict(lr=0.01, weight_decay=1e-3) | (dict(momentum=0.9) if name == "sgd" else {})
    plain = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adadelta": torch.optim.Adadelta,
             "sgd": torch.optim.SGD}[name](plain_net.parameters(), **plain_options)
    inputs = torch.randn(8, 16)
    for _ in range(3):
        for net, optimizer in ((fast_net, fast), (plain_net, plain)):
            optimizer.zero_grad()
            net(inputs).square().mean().backward()
            optimizer.step()
    for fast_param, plain_param in zip(fast_net.parameters(), plain_net.parameters()):
        torch.testing.assert_close(fast_param, plain_param, rtol=1e-5, atol=1e-6)


def test_warmup_ramps_each_schedule_linearly_over_its_first_epochs():
    from phasenets.train.optim import lr_factor

    plain = lr_factor(TrainConfig(lr_schedule="cosine", warmup_epochs=0), steps_per_epoch=10, total_steps=100)
    warm = lr_factor(TrainConfig(lr_schedule="cosine", warmup_epochs=0.5), steps_per_epoch=10, total_steps=100)
    assert [round(warm(i) / plain(i), 6) for i in range(7)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]
    assert lr_factor(TrainConfig(warmup_epochs=0), 10, 100)(0) == 1.0  # no warm-up: the first step takes the full rate
    assert lr_factor(TrainConfig(), 10, 100)(0) == 0.1  # the default: one epoch of warm-up
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        TrainConfig(warmup_epochs=-1)
