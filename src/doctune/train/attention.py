"""Scaled dot-product attention with dropout that keeps 12 MB per layer instead of 160 MB.

PyTorch's fast CPU attention kernel (flash attention for CPU) has no dropout, so a model
trained with attention dropout (GPT-2: ``attn_pdrop=0.1``) falls back to SDPA's *math*
path: it materialises the (B, H, T, T) scores, their softmax, the dropout mask and the
dropped probabilities, and autograd keeps most of them until the backward pass: ~160 MB
per layer for a 4 x 512 micro-batch of a 12-head model, two thirds of all activations.

:class:`DropoutAttention` computes the same function one batch row at a time and keeps only
what cannot be recomputed: the dropout mask (bool, 1 byte per score); the backward pass
recomputes the softmax (one more q k^T product, ~3% of a GPT-2 step's FLOPs). Where there is no
dropout to apply (evaluation, ``dropout == 0``, CUDA whose flash kernels do dropout
themselves) it simply calls PyTorch's SDPA. Registered with transformers as
``attn_implementation="doctune_sdpa"`` by :func:`register_attention`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

ATTN_IMPLEMENTATION = "doctune_sdpa"


def register_attention() -> str:
    """Make ``attn_implementation="doctune_sdpa"`` known to transformers; returns the name.

    The masks are built as for ``sdpa`` (None for a purely causal batch).
    """
    from doctune.quantize import import_torchao_quietly

    import_torchao_quietly()  # transformers' model code imports it when it is installed
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, lean_sdpa_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION


def lean_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: (B, H, T, D) inputs -> ((B, T, H, D) output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    # Under torch.compile the compiler fuses SDPA's dropout itself (and cannot trace this
    # class's random draw): the plain call there too.
    plain = (dropout == 0.0 or query.device.type == "cuda" or not torch.is_grad_enabled()
             or torch.compiler.is_compiling()
             or getattr(module, "num_key_value_groups", 1) > 1 or q_len != kv_len
             or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None)
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    causal = causal and attention_mask is None and q_len > 1
    scale = scaling if scaling is not None else query.size(-1) ** -0.5
    out = DropoutAttention.apply(query, key, value, attention_mask, dropout, scale, causal)
    return out.transpose(1, 2).contiguous(), None


_UNIFORM_BITS = 15


def drop_mask(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of ``shape`` that is True with probability ``p`` (the positions dropped).

    PyTorch's CPU ``bernoulli_`` draws one Mersenne-Twister number per element, serially:
    ~90 ms for the 12.6M scores of one 4 x 12-head x 512 layer, ~8% of a training step. On
    the CPU this draws 31-bit integers instead and uses each as two 15-bit uniforms, 3x
    faster; the drop rate is ``p`` rounded to a multiple of 2**-15 (off by at most 1.5e-5),
    so it is used for ``p >= 0.01`` only. Elsewhere (and for smaller ``p``) it is
    ``bernoulli_``. Both follow ``torch.manual_seed``.
    """
    if device.type != "cpu" or p < 0.01:
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(p)
    numel = math.prod(shape)
    words = torch.empty((numel + 1) // 2, dtype=torch.int32).random_()  # uniform on [0, 2**31)
    halves = words.view(torch.int16)[:numel].bitwise_and_((1 << _UNIFORM_BITS) - 1)
    return torch.lt(halves, round(p * (1 << _UNIFORM_BITS))).view(shape)


def _bias(mask: torch.Tensor | None, t: int, n: int, causal: bool,
          device: torch.device) -> torch.Tensor | None:
    """Additive mask (B or 1, 1 or H, T, S): 0 where a query may attend, -inf elsewhere."""
    bias = None
    if causal:
        bias = torch.zeros(1, 1, t, n, device=device).masked_fill_(
            torch.ones(t, n, dtype=torch.bool, device=device).triu_(1), float("-inf"))
    if mask is not None:  # bool = may attend, float = added as is
        add = torch.zeros(mask.shape, device=device).masked_fill_(~mask, float("-inf")) \
            if mask.dtype == torch.bool else mask.float()
        bias = add if bias is None else bias + add
    return bias


def _row(bias: torch.Tensor | None, i: int) -> torch.Tensor | None:
    """Batch row ``i`` of a (B or 1, ...) additive mask."""
    return None if bias is None else bias[i if bias.shape[0] > 1 else 0]


def _probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) of one batch row, fp32: (H, T, D), (H, S, D) -> (H, T, S)."""
    qf, kt = q.float(), k.float().transpose(-1, -2)
    if bias is None:
        scores = torch.matmul(qf, kt).mul_(scale)
    else:  # the mask and the scale ride along in the matmul: no extra pass over (H, T, S)
        scores = torch.baddbmm(bias.expand(q.shape[0], -1, -1), qf, kt, alpha=scale)
    return torch.softmax(scores, dim=-1)


class DropoutAttention(torch.autograd.Function):
    """``dropout(softmax(q k^T * scale + mask)) @ v`` computed row by row, softmax recomputed.

    Saves q, k, v and the drop mask (B, H, T, S) as bool; no (B, H, T, S) float tensor
    outlives one batch row. Element-wise passes over the scores are kept to the fused
    kernels (softmax, its backward, one masked fill); the 1/(1-p) rescaling is applied to
    the small (H, T, D) tensors instead.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None, p: float, scale: float, causal: bool) -> torch.Tensor:
        b, h, t, _ = q.shape
        n = k.shape[2]
        # One draw for the whole batch: the mask does not depend on how rows are walked.
        drop = drop_mask((b, h, t, n), p, q.device)
        out = torch.empty(b, h, t, v.shape[-1], dtype=v.dtype, device=q.device)  # (B, H, T, D)
        bias = _bias(mask, t, n, causal, q.device)
        for i in range(b):
            probs = _probs(q[i], k[i], _row(bias, i), scale)
            probs.masked_fill_(drop[i], 0.0)  # dropout; its 1/(1-p) is applied to the output
            out[i] = torch.matmul(probs.to(v.dtype), v[i]).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(q, k, v, drop, *(() if mask is None else (mask,)))
        ctx.p, ctx.scale, ctx.causal = p, scale, causal
        return out

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, drop, *rest = ctx.saved_tensors
        mask = rest[0] if rest else None
        b, _, t, _ = q.shape
        n = k.shape[2]
        d_out = d_out * (1.0 / (1.0 - ctx.p))  # (B, H, T, D): dropout's rescaling, once
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        bias = _bias(mask, t, n, ctx.causal, q.device)
        for i in range(b):
            probs = _probs(q[i], k[i], _row(bias, i), ctx.scale)
            dropped = probs.masked_fill(drop[i], 0.0)  # (H, T, S)
            dv[i] = torch.matmul(dropped.transpose(-1, -2).to(v.dtype), d_out[i])  # (H, S, D)
            dp = torch.matmul(d_out[i].float(), v[i].float().transpose(-1, -2))  # (H, T, S)
            dp.masked_fill_(drop[i], 0.0)
            ds = torch.ops.aten._softmax_backward_data(dp, probs, -1, probs.dtype).to(q.dtype)
            dq[i] = torch.matmul(ds, k[i]).mul_(ctx.scale)  # (H, T, D)
            dk[i] = torch.matmul(ds.transpose(-1, -2), q[i]).mul_(ctx.scale)  # (H, S, D)
        return dq, dk, dv, None, None, None, None


