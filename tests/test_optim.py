"""Optimiser and schedule."""

from __future__ import annotations

import math

import pytest
import torch

from strg_deploy.config import preset
from strg_deploy.errors import StrgError
from strg_deploy.models.strg import STRG
from strg_deploy.train.optim import make_optimizer, scaled_lr, warmup_cosine


def test_linear_scaling_rule():
    assert scaled_lr(0.01, 32) == pytest.approx(0.04)
    assert scaled_lr(0.01, 4) == pytest.approx(0.005)
    with pytest.raises(StrgError):
        scaled_lr(0.0, 8)


def test_optimizer_skips_the_frozen_rpn_and_decays_only_weights():
    model = STRG(preset("tiny"))
    optimizer = make_optimizer(model, 0.1, weight_decay=1e-4)
    assert optimizer.defaults["momentum"] == 0.9
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_groups & {id(p) for p in model.rpn.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])


def test_warmup_then_cosine():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_steps=3)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert rates[3] == pytest.approx(1.0)
    assert rates[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 7)))
    assert all(a >= b for a, b in zip(rates[3:], rates[4:], strict=False))
    with pytest.raises(StrgError):
        warmup_cosine(optimizer, total_steps=5, warmup_steps=5)
