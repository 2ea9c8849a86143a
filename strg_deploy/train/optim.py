"""The paper's optimiser and the schedule: SGD with momentum 0.9 and weight decay, a linear warm-up,
then a cosine decay to zero; learning rates scale linearly with the batch size."""

from __future__ import annotations

import math

import torch
from torch import nn

from strg_deploy.errors import StrgError

REFERENCE_BATCH = 8  # learning rates are quoted for this global batch and scaled linearly


def scaled_lr(lr: float, batch_size: int, reference_batch: int = REFERENCE_BATCH) -> float:
    """The linear scaling rule: ``lr`` quoted for ``reference_batch`` clips, used at ``batch_size``."""
    if lr <= 0 or batch_size < 1:
        raise StrgError(f"need a positive learning rate and batch size, got {lr} and {batch_size}")
    return lr * batch_size / reference_batch


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: weights with ``weight_decay``, and biases and normalisation
    parameters (1-D tensors) without it. Frozen parameters (the RPN) are left out."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    model: nn.Module, lr: float, *, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    """SGD with momentum over the model's trainable parameters (see :func:`parameter_groups`)."""
    return torch.optim.SGD(parameter_groups(model, weight_decay), lr=lr, momentum=momentum)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """A per-step schedule: the factor rises linearly from 1/(warmup+1) to 1 over ``warmup_steps``, then
    follows half a cosine from 1 to 0 at ``total_steps``. Call ``scheduler.step()`` after every step."""
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise StrgError(f"need 0 <= warm-up steps < total steps, got {warmup_steps} and {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
