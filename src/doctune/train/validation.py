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
    total, count = evaluate_sums(model, windows, batch_size=batch_size, device=device,
                                 precision=precision, pad_id=pad_id, max_batches=max_batches,
                                 fused=fused)
    return (total / count if count else float("nan")), count


def evaluate_sums(
    model: torch.nn.Module,
    windows: WindowsLike,
    *,
    batch_size: int,
    device: torch.device,
    precision: Precision,
    pad_id: int,
    max_batches: int | None = None,
    fused: bool = False,
    rank: int = 0,
    world: int = 1,
) -> tuple[float, int]:
    """The summed token loss and the token count of :func:`evaluate_loss`, over this
    ``rank``'s share of the batches: batch ``b`` belongs to rank ``b % world``. Every rank
    runs the same number of forward passes (a sharded model gathers its layers in each):
    one without a batch of its own repeats batch 0 and does not count it."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(windows)
    n_batches = math.ceil(n / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    with torch.no_grad():
        for b in range(rank, math.ceil(n_batches / world) * world, world):
            first = b * batch_size if b < n_batches else 0
            batch = [windows[i] for i in range(first, min(n, first + batch_size))]
            input_ids, labels = collate(batch, pad_id)
            with precision.autocast(device):
                loss_sum, n_tok = causal_lm_loss(model, input_ids.to(device), labels.to(device),
                                                 fused=fused)
            if b < n_batches:
                total += float(loss_sum)
                count += int(n_tok)
    model.train(was_training)
    return total, count


def perplexity(loss: float) -> float:
    """``exp(loss)``: ``inf`` past overflow (a diverged model) and ``nan`` for no tokens."""
    if math.isnan(loss):
        return loss
    return math.exp(loss) if loss < 700 else float("inf")
