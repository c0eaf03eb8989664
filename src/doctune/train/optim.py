"""AdamW with decoupled weight decay, and the warm-up + decay learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def lr_lambda(schedule: str, *, warmup_steps: int, total_steps: int,
              min_lr_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak LR for update number ``step`` (0-based): warm-up, then decay.

    Warm-up rises linearly to 1 at update ``warmup_steps - 1``; ``cosine`` and ``linear``
    then fall to exactly ``min_lr_ratio`` at the last update (``total_steps - 1``);
    ``constant`` stays at 1.
    """

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - 1 - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # linear
            decay = 1.0 - progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay

    return f


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases, norms and embeddings of size 1-D get no decay."""
    import torch

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    from doctune.train.speed import adamw_kwargs

    # the single-kernel (fused) AdamW where PyTorch has it: faster, and no temporaries
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, **adamw_kwargs(device))
