"""Validation loss and perplexity over token windows (the same loss as training)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from doctune.train.batches import WindowsLike, collate
from doctune.train.loss import causal_lm_loss

if TYPE_CHECKING:
    import torch

    from doctune.device import Precision


def evaluate_loss(
    model: torch.nn.Module,
    windows: WindowsLike,
    *,
    batch_size: int,
    device: torch.device,
    precision: Precision,
    pad_id: int,
    max_batches: int | None = None,
    fused: bool = False,
) -> tuple[float, int]:
    """Mean loss per token over ``windows`` (in order) and the number of tokens it covers.

    Each token is counted once: the overlap a window shares with the previous window of
    its document is context only. Returns ``(nan, 0)`` for an empty set.
    """
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(windows)
    n_batches = math.ceil(n / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    with torch.no_grad():
        for b in range(n_batches):
            batch = [windows[i] for i in range(b * batch_size, min(n, (b + 1) * batch_size))]
            input_ids, labels = collate(batch, pad_id)
            with precision.autocast(device):
                loss_sum, n_tok = causal_lm_loss(model, input_ids.to(device), labels.to(device),
                                                 fused=fused)
            total += float(loss_sum)
            count += int(n_tok)
    model.train(was_training)
    return (total / count if count else float("nan")), count


def perplexity(loss: float) -> float:
    """``exp(loss)``: ``inf`` past overflow (a diverged model) and ``nan`` for no tokens."""
    if math.isnan(loss):
        return loss
    return math.exp(loss) if loss < 700 else float("inf")
