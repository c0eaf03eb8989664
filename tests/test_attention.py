"""The lean dropout attention equals dropout(softmax(...)) @ v with the same dropout mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from doctune.train.attention import (
    ATTN_IMPLEMENTATION,
    DropoutAttention,
    drop_mask,
    register_attention,
)

RTOL = 1e-5


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, p: float,
               causal: bool, mask: torch.Tensor | None) -> torch.Tensor:
    s = q @ k.transpose(-1, -2) * q.size(-1) ** -0.5
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return (torch.softmax(s, dim=-1) * keep / (1 - p)) @ v


@pytest.mark.parametrize(("causal", "padded"), [(True, False), (False, True)])
def test_matches_the_formula_with_the_same_mask(causal: bool, padded: bool) -> None:
    torch.manual_seed(0)
    b, h, t, d, p = 3, 2, 9, 4, 0.3
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    mask = None
    if padded:  # (B, 1, T, S): the last two keys of row 1 are padding
        mask = torch.ones(b, 1, t, t, dtype=torch.bool)
        mask[1, :, :, -2:] = False
    torch.manual_seed(7)
    out = DropoutAttention.apply(q, k, v, mask, p, d**-0.5, causal)
    torch.manual_seed(7)  # the same draw: the drop mask is made first, in one call
    keep = ~drop_mask((b, h, t, t), p, torch.device("cpu"))
    ref = _reference(q, k, v, keep, p, causal, mask)
    assert torch.allclose(out, ref, rtol=RTOL, atol=1e-6)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, r, rtol=RTOL, atol=1e-6)


def _gpt2(attn: str, attn_pdrop: float) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=100,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=attn_pdrop,
                     bos_token_id=99, eos_token_id=99)
    return GPT2LMHeadModel._from_config(cfg, attn_implementation=attn).train()


def test_gpt2_without_dropout_equals_sdpa() -> None:
    name = register_attention()
    assert name == ATTN_IMPLEMENTATION
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for attn in ("sdpa", name):
        model = _gpt2(attn, attn_pdrop=0.0)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append((loss.detach(), model.transformer.h[0].attn.c_attn.weight.grad))
    assert torch.allclose(losses[0][0], losses[1][0], rtol=RTOL)
    assert torch.allclose(losses[0][1], losses[1][1], rtol=1e-4, atol=1e-7)


def test_gpt2_with_dropout_trains_and_evaluates_like_sdpa() -> None:
    name = register_attention()
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    lean, ref = _gpt2(name, attn_pdrop=0.1), _gpt2("sdpa", attn_pdrop=0.1)
    loss = lean(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and lean.transformer.h[0].attn.c_attn.weight.grad is not None
    lean.eval()
    ref.eval()
    with torch.no_grad():  # no dropout in evaluation: the very same function as sdpa
        a = lean(input_ids=ids).logits
        b = ref(input_ids=ids).logits
    assert torch.allclose(a, b, rtol=RTOL, atol=1e-6)
    assert F.cross_entropy(a[0], ids[0]) > 0


@pytest.mark.parametrize("p", [0.1, 0.5, 0.005])
def test_drop_mask_rate_and_seed(p: float) -> None:
    cpu = torch.device("cpu")
    torch.manual_seed(3)
    mask = drop_mask((4, 3, 250, 251), p, cpu)  # an odd count: the last 31-bit word half-used
    torch.manual_seed(3)
    assert torch.equal(mask, drop_mask((4, 3, 250, 251), p, cpu))  # follows the seed
    assert mask.dtype == torch.bool and mask.shape == (4, 3, 250, 251)
    n = mask.numel()
    sigma = (p * (1 - p) / (n / 2)) ** 0.5
    # both halves of each 31-bit word are uniform: the even and the odd elements drop at p
    for part in (mask.flatten()[0::2], mask.flatten()[1::2]):
        assert abs(float(part.float().mean()) - p) < 5 * sigma + 2**-16
