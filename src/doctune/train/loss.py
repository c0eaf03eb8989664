"""The causal language-model loss, summed over real tokens.

The loop weights gradient accumulation by real (unmasked) tokens, so this returns the
*sum* of token losses and the token count rather than a mean: four micro-batches of one
then give exactly the update of one micro-batch of four.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


def causal_lm_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(loss_sum, n_tokens)`` for next-token prediction.

    ``labels`` has the shape of ``input_ids`` (B, T) with ``IGNORE_INDEX`` where a position
    carries no loss; the shift by one happens here (position t predicts label t+1).
    """
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    loss_sum = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    n_tokens = (shift_labels != IGNORE_INDEX).sum()
    return loss_sum, n_tokens
