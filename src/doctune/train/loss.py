"""The causal language-model loss, summed over real tokens.

The loop weights gradient accumulation by real (unmasked) tokens, so this returns the
*sum* of token losses and the token count rather than a mean: four micro-batches of one
then give exactly the update of one micro-batch of four.

Two ways to compute it, equal within float tolerance (``tests/test_loss.py``):

* the plain path: ``model(...).logits`` (B, T, V), then cross-entropy. With GPT-2's
  50,257-word vocabulary the logits of a 4 x 512 micro-batch are 411 MB in fp32, and
  autograd keeps them (and the softmax) alive until the backward pass;
* the fused path: run the backbone to the last hidden state, then walk the valid positions
  in chunks. Each chunk's logits exist only while its loss *and* its gradients (with
  respect to the hidden states, and to the output weight/bias when they train) are
  computed, in the forward pass; the backward pass only scales what was already computed.
  Full logits are never stored nor recomputed.

Replayed windows can instead be trained towards the base model's whole next-token
distribution (:func:`distill_loss`, ``knowledge.replay_loss: kl``): the summed KL divergence
from the base (the same model with its adapter off) to the model, on the positions that
carry a loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from doctune.data.store import IGNORE_INDEX
from doctune.modeling import unwrap_peft

DEFAULT_CHUNK_BYTES = 64 * 2**20
"""Budget for one chunk of fp32 logits: 64 MB is ~330 rows of a 50,257-word vocabulary,
large enough for the matrix multiplications to run near their peak."""
ROW_STEP = 64
"""The fused path pads the positions that carry a loss to a multiple of this many rows, and
chunks in multiples of it: the products then come in a handful of shapes. On a CPU each new
shape of a bf16 product leaves a compiled kernel and its buffers in oneDNN's caches (up to
1,024 of them, never freed): a mixed run, whose batches carry a different number of loss
tokens every step, grew by 3 GB in 300 steps that way."""

# Model types whose causal-LM head is exactly ``lm_head(last_hidden_state)``: a linear
# projection, no scaling or soft-capping of the logits. Any other type takes the plain path.
_LINEAR_HEAD_TYPES = frozenset({
    "gpt2", "gpt_neox", "gptj", "gpt_bigcode", "llama", "mistral", "mixtral", "qwen2",
    "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3", "stablelm", "starcoder2", "olmo",
    "olmo2", "smollm3", "opt", "bloom", "falcon", "gemma", "gemma2", "gemma3_text",
})
# Config attributes that change the logits after the projection (Gemma 2/3, Cohere, Granite).
# (Gemma scales its embeddings by sqrt(hidden), but inside the backbone: the head stays linear.)
_HEAD_MODIFIERS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def causal_lm_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    fused: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(loss_sum, n_tokens)`` for next-token prediction.

    ``labels`` has the shape of ``input_ids`` (B, T) with ``IGNORE_INDEX`` where a position
    carries no loss; the shift by one happens here (position t predicts label t+1).

    ``fused=True`` computes the output projection and the cross-entropy chunk by chunk
    (``chunk_size`` rows at a time; default: about 64 MB of fp32 logits) without storing
    the logits; it falls back to the plain path for a model whose head is not a plain
    linear projection (see :func:`supports_fused_loss`). Under autocast the projection runs
    in the autocast dtype and the softmax in fp32, as on the plain path.
    """
    if fused and supports_fused_loss(model):
        return _fused_causal_lm_loss(model, input_ids, labels, attention_mask, chunk_size)
    return _plain_causal_lm_loss(model, input_ids, labels, attention_mask)


def _plain_causal_lm_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
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


# ---------------------------------------------------------------------------
# the fused path


def supports_fused_loss(model: torch.nn.Module) -> bool:
    """True when ``model``'s logits are exactly ``Linear(last_hidden_state)``.

    That holds for the architectures listed in ``_LINEAR_HEAD_TYPES`` whose config does
    not scale or soft-cap the logits, and whose output layer is a plain (not LoRA-adapted,
    not quantised) ``torch.nn.Linear``. Anything else is computed on the plain path.
    """

    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in _LINEAR_HEAD_TYPES:
        return False
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _HEAD_MODIFIERS):
        return False
    prefix = getattr(base, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(base, prefix, None), torch.nn.Module):
        return False
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return type(head) is torch.nn.Linear


def _fused_causal_lm_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:

    base = unwrap_peft(model)
    backbone = getattr(base, base.base_model_prefix)
    head = base.get_output_embeddings()
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state  # (B, T, C)

    # Position t predicts label t+1; keep only positions that carry a loss, so masked
    # padding costs no projection at all.
    shift_labels = labels[:, 1:].reshape(-1)  # (N,) with N = B * (T - 1)
    keep = (shift_labels != IGNORE_INDEX).nonzero().squeeze(1)  # (M,)
    n_tokens = keep.numel()
    h = hidden[:, :-1, :].reshape(-1, hidden.size(-1)).index_select(0, keep)  # (M, C)
    targets = shift_labels.index_select(0, keep)  # (M,)
    # zero rows up to a multiple of ROW_STEP (they carry no loss and no gradient): few shapes
    pad = -n_tokens % ROW_STEP
    h, targets = F.pad(h, (0, 0, 0, pad)), F.pad(targets, (0, pad))  # (M', C), (M',)

    vocab = head.weight.size(0)
    rows = chunk_size or max(ROW_STEP, DEFAULT_CHUNK_BYTES // (4 * vocab) // ROW_STEP * ROW_STEP)
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad):
        loss_sum = FusedLinearCrossEntropy.apply(h, head.weight, head.bias, targets, rows, dtype,
                                                 n_tokens)
    else:  # evaluation: the same chunked loss, no gradients computed
        loss_sum, _ = chunked_linear_cross_entropy(h, head.weight, head.bias, targets, rows=rows,
                                                   dtype=dtype, need_h=False, n_valid=n_tokens)
    return loss_sum, torch.tensor(n_tokens, device=hidden.device)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """``sum_i CE(h_i @ W.T + b, y_i)`` with its gradients computed in the forward pass.

    The loss is linear in its upstream gradient (a scalar), so the gradients for an
    upstream gradient of 1 are computed chunk by chunk in the forward pass and scaled in
    the backward pass. Only (M, C) for the hidden states and (V, C) for the weight are
    kept; each (rows, V) chunk of logits is reused in place and freed at the end.
    """

    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        rows: int,
        dtype: torch.dtype | None,
        n_valid: int | None = None,
    ) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            loss, grads = chunked_linear_cross_entropy(
                h, weight, bias, targets, rows=rows, dtype=dtype, n_valid=n_valid,
                need_h=ctx.needs_input_grad[0], need_weight=ctx.needs_input_grad[1],
                need_bias=bias is not None and ctx.needs_input_grad[2],
            )
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.has_grad = tuple(g is not None for g in grads)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # Scale in place: no second copy of the (V, C) weight gradient.
        grads = [g.mul_(grad_loss.to(g.dtype)) if has else None
                 for g, has in zip(ctx.saved_tensors, ctx.has_grad, strict=True)]
        return grads[0], grads[1], grads[2], None, None, None, None


_ALIGN = 8
"""Output widths that are a multiple of this run the BLAS product at full speed."""


def _project(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor,
             aligned: int) -> None:
    """``out = h @ w.T + b`` in place, as an aligned product plus the few rows past it."""
    parts = [(0, aligned), (aligned, w.size(0))] if 0 < aligned < w.size(0) else [(0, w.size(0))]
    for lo, hi in parts:
        if b is None:
            torch.mm(h, w[lo:hi].t(), out=out[:, lo:hi])
        else:
            torch.addmm(b[lo:hi], h, w[lo:hi].t(), out=out[:, lo:hi])


def _chunk_buffers(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, *,
                   in_place: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and fp32 probabilities of one chunk, (rows, V) each (one buffer in fp32).

    Two reusable buffers instead of fresh allocations per chunk: large CPU tensors are
    mmapped, page-faulted in and unmapped on each allocation. The logits' rows are padded to
    a multiple of 8 and the product is split at the last multiple of 8 below V: a BLAS
    product whose output width is odd (GPT-2: 50,257) runs ~25% below peak. The padding
    columns are zeroed: PyTorch's bf16 CPU product reads a strided operand's row up to its
    stride (masked to zero), so garbage there, e.g. a NaN, would leak into the gradients.
    """
    padded = -(-vocab // _ALIGN) * _ALIGN
    buffer = torch.empty(rows, padded, dtype=dtype, device=device)
    buffer[:, vocab:].zero_()
    logits = buffer[:, :vocab]
    return logits, (logits if in_place else torch.empty(rows, vocab, device=device))


def _add_chunk_grads(gc: torch.Tensor, hc: torch.Tensor, w: torch.Tensor,
                     grad_h: torch.Tensor | None, grad_w: torch.Tensor | None,
                     grad_b: torch.Tensor | None) -> None:
    """One chunk's share of the gradients, from ``gc`` (n, V) = d(sum CE)/d logits:
    ``grad_h`` (n, C, this chunk's rows) is written, ``grad_w``/``grad_b`` (fp32) summed into."""
    if grad_h is not None:
        if grad_h.dtype == gc.dtype:
            torch.mm(gc, w, out=grad_h)  # (n, C)
        else:
            grad_h.copy_(gc @ w)
    if grad_w is not None:
        if gc.dtype == torch.float32:
            grad_w.addmm_(gc.t(), hc)  # (V, C) += (V, n) @ (n, C), no temporary
        else:
            grad_w += gc.t() @ hc  # bf16/fp16 product, summed in fp32
    if grad_b is not None:
        grad_b += gc.sum(0, dtype=torch.float32)


def chunked_linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    rows: int,
    dtype: torch.dtype | None = None,
    need_h: bool = True,
    need_weight: bool = False,
    need_bias: bool = False,
    n_valid: int | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]:
    """Sum of cross-entropies of ``h @ weight.T + bias`` against ``targets``, and its gradients.

    ``h`` (M, C), ``weight`` (V, C), ``bias`` (V,) or None, ``targets`` (M,) all valid.
    ``dtype`` is the matmul precision (the autocast dtype, or None for that of ``h``); the
    softmax is always fp32. Rows from ``n_valid`` on (None: none) are padding, computed for
    a steady shape: they add no loss, and no gradient (their ``d_h`` rows are zero). Returns
    the fp32 loss and ``(d_h, d_weight, d_bias)`` for an upstream gradient of 1 (None where
    not asked for). No autograd graph is recorded.
    """

    mm_dtype = dtype or h.dtype
    w = weight.to(mm_dtype)  # (V, C): one cast per call, like autocast's weight cache
    b = bias.to(mm_dtype) if bias is not None else None
    m, vocab = h.size(0), w.size(0)
    rows = max(1, min(rows, m))
    grad_h = torch.empty_like(h) if need_h else None  # (M, C), in the dtype of the input
    # Weight/bias gradients accumulate over chunks in fp32 (a sum of M outer products).
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_weight else None
    grad_b = torch.zeros(vocab, dtype=torch.float32, device=h.device) if need_bias else None
    aligned = vocab // _ALIGN * _ALIGN
    in_place = mm_dtype == torch.float32  # the softmax overwrites the logits
    logits, probs = _chunk_buffers(rows, vocab, mm_dtype, h.device, in_place=in_place)
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    need_grad = need_h or need_weight or need_bias
    with torch.no_grad():
        for start in range(0, m, rows):
            n = min(rows, m - start)
            v = n if n_valid is None else max(0, min(n, n_valid - start))  # rows not padding
            hc = h[start:start + n].to(mm_dtype)  # (n, C)
            tc = targets[start:start + n]  # (n,)
            lc, pc = logits[:n], probs[:n]
            _project(hc, w, b, lc, aligned)  # (n, V)
            if not in_place:
                pc.copy_(lc)  # fp32 softmax, as the plain path's `.float()`
            # Softmax in place, without logsumexp's (n, V) temporary:
            # lse = max + log(sum(exp(z - max))); probs = exp(z - max) / sum.
            target_logit = pc.gather(1, tc[:, None]).squeeze(1)  # (n,)
            row_max = pc.amax(dim=1, keepdim=True)  # (n, 1)
            pc.sub_(row_max).exp_()
            row_sum = pc.sum(dim=1, keepdim=True)  # (n, 1)
            loss += (row_max.squeeze(1) + row_sum.log().squeeze(1) - target_logit)[:v].sum()
            if not need_grad:
                continue
            # d(sum CE)/d logits = softmax - one_hot(target); none for padding rows
            pc.div_(row_sum)
            pc[torch.arange(v, device=h.device), tc[:v]] -= 1.0
            if v < n:
                pc[v:n].zero_()
            gc = pc if in_place else lc.copy_(pc)  # (n, V) in the matmul dtype
            _add_chunk_grads(gc, hc, w, grad_h[start:start + n] if grad_h is not None else None,
                             grad_w, grad_b)
    out_w = grad_w.to(weight.dtype) if grad_w is not None else None
    out_b = grad_b.to(bias.dtype) if grad_b is not None and bias is not None else None
    return loss, (grad_h, out_w, out_b)


def distill_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                 *, fused: bool = True, chunk_size: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kl_sum, n_tokens)``: ``sum_t KL(p_base(. | x_<t) || p_model(. | x_<t))`` over the
    positions whose next label is not ``IGNORE_INDEX`` (those ``causal_lm_loss`` sums over).

    ``model`` is a PEFT model: the base's distribution is its own with the adapter turned off
    (no gradient, no second copy of the weights). Against the base's sampled tokens the
    cross-entropy is this KL in expectation, plus the base's entropy; the whole distribution
    pulls back with every token, not through one sample. The base's pass runs without
    dropout (its distribution is the target, not a noisy draw of it); the model's, as training
    runs it.

    For a plain linear output layer (:func:`supports_fused_loss`) the two hidden states go
    through it ``chunk_size`` rows at a time (as on the fused path; padded to a multiple of
    :data:`ROW_STEP`, rows whose KL is 0), each chunk's logits recomputed in the backward
    pass instead of kept: two (positions x vocabulary) fp32 tensors of a 152k-word vocabulary
    would be 1.2 GB for 1,000 positions. Other heads take the plain path.
    """
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise TypeError("distill_loss needs a model with an adapter (a PEFT model): the base's "
                        "distribution is the model's with the adapter off")
    keep = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    if not (fused and supports_fused_loss(model)):
        logits = model(input_ids=input_ids).logits[:, :-1][keep]  # (M, V)
        with torch.no_grad(), disable(), _without_dropout(model):
            base = model(input_ids=input_ids).logits[:, :-1][keep]
        return _kl_sum(logits, base), keep.sum()
    peft_base = unwrap_peft(model)
    backbone = getattr(peft_base, peft_base.base_model_prefix)
    head = peft_base.get_output_embeddings()

    def hidden() -> torch.Tensor:  # (M', C): the positions with a loss, padded to ROW_STEP
        out = backbone(input_ids=input_ids, use_cache=False)
        h = out[0] if isinstance(out, tuple) else out.last_hidden_state
        h = h[:, :-1][keep]
        return F.pad(h, (0, 0, 0, -h.size(0) % ROW_STEP))

    h = hidden()
    with torch.no_grad(), disable(), _without_dropout(model):
        t = hidden()
    rows = chunk_size or max(ROW_STEP, DEFAULT_CHUNK_BYTES // (4 * head.weight.size(0))
                             // ROW_STEP * ROW_STEP)
    kl = h.sum().float() * 0.0  # in the graph even with no position to sum over
    for start in range(0, h.size(0), rows):
        kl = kl + torch.utils.checkpoint.checkpoint(
            _kl_chunk, h[start:start + rows], t[start:start + rows], head.weight, head.bias,
            use_reentrant=False)
    return kl, keep.sum()


@contextlib.contextmanager
def _without_dropout(model: torch.nn.Module) -> Iterator[None]:
    """Every module of ``model`` in eval mode inside (no dropout), as it was after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _kl_chunk(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor,
              b: torch.Tensor | None) -> torch.Tensor:
    return _kl_sum(F.linear(h, w, b), F.linear(t, w, b))


def _kl_sum(logits: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``sum KL(softmax(base) || softmax(logits))`` over the rows, in fp32."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    log_p = F.log_softmax(base.float(), dim=-1)
    return F.kl_div(log_q, log_p, reduction="sum", log_target=True)


class LossModule(torch.nn.Module):
    """The model and its loss as one module: ``forward(input_ids, labels) -> loss_sum``.

    DDP and FSDP hook the ``forward`` of the module they wrap. The fused loss runs the
    backbone and the output layer directly, not the language model's ``forward``, so the
    wrapper must sit around the loss, not around the language model.

    ``distill`` (B,) bool: rows trained towards the base's distribution (:func:`distill_loss`)
    instead of their labels; the sum covers both kinds of row.
    """

    def __init__(self, model: torch.nn.Module, *, fused: bool) -> None:
        super().__init__()
        self.model = model
        self.fused = fused

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                distill: torch.Tensor | None = None) -> torch.Tensor:
        if distill is None or not bool(distill.any()):
            loss_sum, _ = causal_lm_loss(self.model, input_ids, labels, fused=self.fused)
            return loss_sum
        plain = ~distill
        loss_sum, _ = distill_loss(self.model, input_ids[distill], labels[distill],
                                   fused=self.fused)
        if bool(plain.any()):
            ce, _ = causal_lm_loss(self.model, input_ids[plain], labels[plain], fused=self.fused)
            loss_sum = loss_sum + ce
        return loss_sum
