"""The fused (chunked) output projection + cross-entropy equals the plain path.

Loss, token count and every gradient (hidden states, the tied output/embedding weight, LoRA
adapters) agree within fp32 rounding, with masked positions, chunk sizes that do not divide
the sequence, gradient checkpointing and an upstream gradient other than 1; under bf16
autocast they agree within bf16 rounding.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F

from doctune.data.store import IGNORE_INDEX
from doctune.train.loss import (
    FusedLinearCrossEntropy,
    causal_lm_loss,
    chunked_linear_cross_entropy,
    supports_fused_loss,
)

VOCAB = 1000
FP32_RTOL = 1e-5


def _tiny_gpt2(**overrides: object) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB,
                     bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, **overrides)
    return GPT2LMHeadModel(cfg).eval()  # eval: no dropout, so both paths see the same net


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    from doctune.modeling import apply_lora

    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters' gradients non-trivial
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return peft_model


def _batch(b: int = 3, t: int = 21) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    labels = ids.clone()
    labels[0, 4:9] = IGNORE_INDEX  # context-only positions inside a row
    labels[2, :3] = IGNORE_INDEX
    labels[1, -5:] = IGNORE_INDEX  # right padding
    return ids, labels


def _loss_and_grads(model: torch.nn.Module, fused: bool, chunk: int | None = None,
                    autocast: torch.dtype | None = None, scale: float = 1.0
                    ) -> tuple[float, int, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    ids, labels = _batch()
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
    with ctx:
        loss_sum, n_tokens = causal_lm_loss(model, ids, labels, fused=fused, chunk_size=chunk)
    (loss_sum * scale / n_tokens).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss_sum.detach()), int(n_tokens), grads


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        err = (a[name] - b[name]).abs().max() / a[name].abs().max().clamp_min(1e-30)
        assert err < rtol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_full_finetune_tied_weights_match_plain(chunk: int | None) -> None:
    model = _tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight  # the head is the embedding
    loss0, n0, g0 = _loss_and_grads(model, fused=False)
    loss1, n1, g1 = _loss_and_grads(model, fused=True, chunk=chunk, scale=0.5)
    assert n0 == n1 == 3 * 20 - 5 - 2 - 5  # labels[2, 0] is never a target after the shift
    assert loss1 == pytest.approx(loss0, rel=FP32_RTOL)
    _assert_close(g0, {k: 2 * v for k, v in g1.items()}, FP32_RTOL)
    assert "transformer.wte.weight" in g1


def test_lora_matches_plain_and_leaves_the_base_frozen() -> None:
    model = _lora(_tiny_gpt2())
    assert supports_fused_loss(model)
    loss0, _, g0 = _loss_and_grads(model, fused=False)
    loss1, _, g1 = _loss_and_grads(model, fused=True, chunk=5)
    assert loss1 == pytest.approx(loss0, rel=FP32_RTOL)
    assert g1 and all("lora_" in name for name in g1)
    _assert_close(g0, g1, FP32_RTOL)


def test_gradient_checkpointing_matches_plain() -> None:
    from doctune.modeling import enable_grad_checkpointing

    model = _tiny_gpt2()
    enable_grad_checkpointing(model)
    model.train()  # checkpointing only recomputes in training mode
    for m in model.modules():  # ...but keep dropout off for an exact comparison
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    loss0, _, g0 = _loss_and_grads(model, fused=False)
    loss1, _, g1 = _loss_and_grads(model, fused=True, chunk=9)
    assert loss1 == pytest.approx(loss0, rel=FP32_RTOL)
    _assert_close(g0, g1, FP32_RTOL)


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_autocast_close_to_plain(lora: bool) -> None:
    model = _lora(_tiny_gpt2()) if lora else _tiny_gpt2()
    loss0, _, g0 = _loss_and_grads(model, fused=False, autocast=torch.bfloat16)
    loss1, _, g1 = _loss_and_grads(model, fused=True, chunk=16, autocast=torch.bfloat16)
    assert loss1 == pytest.approx(loss0, rel=1e-2)
    _assert_close(g0, g1, 5e-2)  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("chunk", [1, 6, 50])
@pytest.mark.parametrize("vocab", [40, 43, 5])  # the projection is split at a multiple of 8
def test_function_gradients_hidden_weight_bias(chunk: int, vocab: int) -> None:
    torch.manual_seed(0)
    h = torch.randn(23, 16, requires_grad=True)
    w = torch.randn(vocab, 16, requires_grad=True)
    b = torch.randn(vocab, requires_grad=True)
    y = torch.randint(0, vocab, (23,))
    ref = F.cross_entropy(F.linear(h, w, b), y, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.3, (h, w, b))
    out = FusedLinearCrossEntropy.apply(h, w, b, y, chunk, None)
    grads = torch.autograd.grad(out * 0.3, (h, w, b))
    assert float(out.detach()) == pytest.approx(float(ref.detach()), rel=FP32_RTOL)
    for r, g in zip(ref_grads, grads, strict=True):
        assert torch.allclose(g, r, rtol=FP32_RTOL, atol=1e-6)


def test_all_positions_masked_gives_zero_loss_and_gradients() -> None:
    model = _tiny_gpt2()
    ids, _ = _batch()
    labels = torch.full_like(ids, IGNORE_INDEX)
    loss_sum, n_tokens = causal_lm_loss(model, ids, labels, fused=True)
    loss_sum.backward()
    assert int(n_tokens) == 0 and float(loss_sum.detach()) == 0.0
    assert float(model.transformer.wte.weight.grad.abs().sum()) == 0.0


def test_no_grad_evaluation_matches_plain() -> None:
    model = _tiny_gpt2()
    ids, labels = _batch()
    with torch.no_grad():
        plain, _ = causal_lm_loss(model, ids, labels)
        fused, _ = causal_lm_loss(model, ids, labels, fused=True, chunk_size=8)
    assert float(fused) == pytest.approx(float(plain), rel=FP32_RTOL)


def test_heads_that_are_not_a_plain_projection_take_the_plain_path() -> None:
    softcapped = _tiny_gpt2()
    softcapped.config.final_logit_softcapping = 30.0
    assert not supports_fused_loss(softcapped)
    from doctune.modeling import apply_lora

    with warnings.catch_warnings():  # PEFT warns about adapting a tied layer: not the point here
        warnings.simplefilter("ignore")
        lora_on_head = apply_lora(_tiny_gpt2(), r=2, alpha=4, dropout=0.0, target_modules=["lm_head"])
    assert not supports_fused_loss(lora_on_head)
    # ...and the fallback still computes the right loss
    ids, labels = _batch()
    with torch.no_grad():
        plain, _ = causal_lm_loss(softcapped, ids, labels)
        fused, _ = causal_lm_loss(softcapped, ids, labels, fused=True)
    assert float(fused) == float(plain)


def test_chunked_loss_without_gradients() -> None:
    torch.manual_seed(0)
    h, w = torch.randn(10, 8), torch.randn(12, 8)
    y = torch.randint(0, 12, (10,))
    loss, grads = chunked_linear_cross_entropy(h, w, None, y, rows=3, need_h=False)
    assert grads == (None, None, None)
    ref = F.cross_entropy(h @ w.t(), y, reduction="sum")
    assert float(loss) == pytest.approx(float(ref), rel=FP32_RTOL)


def test_bf16_projection_with_an_odd_vocabulary() -> None:
    torch.manual_seed(0)
    h, w, b = torch.randn(19, 16), torch.randn(43, 16), torch.randn(43)
    y = torch.randint(0, 43, (19,))
    logits = F.linear(h.bfloat16(), w.bfloat16(), b.bfloat16()).float()  # what autocast computes
    ref = F.cross_entropy(logits, y, reduction="sum")
    ref_dh = (torch.softmax(logits, -1) - F.one_hot(y, 43)).bfloat16() @ w.bfloat16()
    loss, (dh, _, _) = chunked_linear_cross_entropy(h, w, b, y, rows=7, dtype=torch.bfloat16)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    assert dh is not None and torch.allclose(dh, ref_dh.float(), rtol=1e-2, atol=1e-2)


def test_bf16_gradients_ignore_whatever_the_buffers_held_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh buffers hold what earlier allocations left, NaN included (an evaluation before
    the first step did, with PyTorch 2.13's bf16 CPU product): the gradients must not see it."""
    torch.manual_seed(0)
    n, c, vocab = 60, 32, 50257  # 60 rows take the bf16 kernel that reads a row's padding
    h, w = torch.randn(n, c), torch.randn(vocab, c) * 0.02
    y = torch.randint(0, vocab, (n,))
    real_empty = torch.empty

    def garbage(*size: object, **kw: object) -> torch.Tensor:
        t = real_empty(*size, **kw)  # type: ignore[call-overload]
        return t.fill_(float("nan")) if t.is_floating_point() else t

    loss, (dh, _, _) = chunked_linear_cross_entropy(h, w, None, y, rows=333, dtype=torch.bfloat16)
    monkeypatch.setattr(torch, "empty", garbage)
    loss2, (dh2, _, _) = chunked_linear_cross_entropy(h, w, None, y, rows=333, dtype=torch.bfloat16)
    assert dh is not None and dh2 is not None and torch.isfinite(dh2).all()
    assert float(loss2) == float(loss) and torch.equal(dh2, dh)


def test_padding_rows_carry_no_loss_and_no_gradient() -> None:
    torch.manual_seed(0)
    h, w, b = torch.randn(10, 8), torch.randn(12, 8), torch.randn(12)
    y = torch.randint(0, 12, (10,))
    ref, (rdh, rdw, rdb) = chunked_linear_cross_entropy(h, w, b, y, rows=4, need_weight=True,
                                                        need_bias=True)
    hp, yp = F.pad(h, (0, 0, 0, 6)), F.pad(y, (0, 6))  # 6 padding rows, 16 in all
    loss, (dh, dw, db) = chunked_linear_cross_entropy(hp, w, b, yp, rows=4, need_weight=True,
                                                      need_bias=True, n_valid=10)
    assert float(loss) == pytest.approx(float(ref), rel=FP32_RTOL)
    assert dh is not None and rdh is not None and dh[10:].eq(0).all()
    assert torch.allclose(dh[:10], rdh, atol=1e-6)
    assert dw is not None and rdw is not None and torch.allclose(dw, rdw, atol=1e-5)
    assert db is not None and rdb is not None and torch.allclose(db, rdb, atol=1e-6)


def test_fused_loss_projects_in_multiples_of_64_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the number of loss tokens, the head's products come in a few shapes (on a
    CPU in bf16 each new shape leaves kernels in oneDNN's caches for good)."""
    import doctune.train.loss as loss_mod

    seen: set[int] = set()
    project = loss_mod._project

    def spy(hc: torch.Tensor, *args: object) -> None:
        seen.add(hc.size(0))
        project(hc, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loss_mod, "_project", spy)
    model = _tiny_gpt2()
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 60))
    for start in (0, 7, 33, 58):
        labels = ids.clone()
        labels[:, :start] = IGNORE_INDEX
        with torch.no_grad():
            fused, n = causal_lm_loss(model, ids, labels, fused=True)
            plain, _ = causal_lm_loss(model, ids, labels)
        assert int(n) == 2 * (60 - max(start, 1))  # 118, 106, 54, 4 tokens
        assert float(fused) == pytest.approx(float(plain), rel=FP32_RTOL)
    assert seen <= {64, 128}


# ---- replay trained towards the base's distribution (knowledge.replay_loss: kl) --------------


def test_distill_loss_is_the_kl_from_the_base_on_the_positions_with_a_loss() -> None:
    import copy

    from doctune.train.loss import distill_loss

    base = _tiny_gpt2()
    reference = copy.deepcopy(base)  # the base's own weights, kept apart
    model = _lora(base)  # adapters away from zero: the model and the base differ
    ids, labels = _batch()
    kl, n = distill_loss(model, ids, labels)
    keep = labels[:, 1:] != IGNORE_INDEX
    with torch.no_grad():
        p = F.log_softmax(reference(input_ids=ids).logits[:, :-1][keep].float(), -1)
        q = F.log_softmax(model(input_ids=ids).logits[:, :-1][keep].float(), -1)
    assert n.item() == int(keep.sum()) == 3 * 20 - 5 - 2 - 5
    assert kl.item() == pytest.approx((p.exp() * (p - q)).sum().item(), rel=1e-5)
    assert kl.item() > 0
    kl.backward()  # the adapter learns; the base stays frozen
    grads = {name: prm.grad for name, prm in model.named_parameters() if prm.requires_grad}
    assert grads and all("lora_" in name and g is not None and g.abs().sum() > 0
                         for name, g in grads.items())


def test_distill_loss_is_zero_while_the_adapter_changes_nothing() -> None:
    from doctune.modeling import apply_lora
    from doctune.train.loss import distill_loss

    model = apply_lora(_tiny_gpt2(), r=4, alpha=8, dropout=0.0)  # lora_B starts at zero
    ids, labels = _batch()
    kl, _ = distill_loss(model, ids, labels)
    assert abs(kl.item()) < 1e-4


def test_distill_loss_needs_an_adapter() -> None:
    from doctune.train.loss import distill_loss

    with pytest.raises(TypeError, match="adapter"):
        distill_loss(_tiny_gpt2(), *_batch())


@pytest.mark.parametrize("fused", [False, True])
def test_the_loss_module_sums_kl_on_distilled_rows_and_cross_entropy_on_the_rest(
        fused: bool) -> None:
    from doctune.train.loss import LossModule, distill_loss

    model = _lora(_tiny_gpt2())
    module = LossModule(model, fused=fused)
    ids, labels = _batch()
    rows = torch.tensor([False, True, False])
    got = module(ids, labels, rows)
    kl, _ = distill_loss(model, ids[1:2], labels[1:2])
    ce, _ = causal_lm_loss(model, ids[[0, 2]], labels[[0, 2]], fused=fused)
    assert got.item() == pytest.approx(kl.item() + ce.item(), rel=1e-5)
    # no distilled row (or no mask): the plain loss of every row
    plain, _ = causal_lm_loss(model, ids, labels, fused=fused)
    assert module(ids, labels, torch.zeros(3, dtype=torch.bool)).item() == \
        pytest.approx(plain.item(), rel=1e-6)
    assert module(ids, labels).item() == pytest.approx(plain.item(), rel=1e-6)
    # every row distilled
    every, _ = distill_loss(model, ids, labels)
    assert module(ids, labels, torch.ones(3, dtype=torch.bool)).item() == \
        pytest.approx(every.item(), rel=1e-6)


def test_distill_loss_in_chunks_equals_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import doctune.train.loss as loss

    model = _lora(_tiny_gpt2())
    ids, labels = _batch(b=4, t=45)  # 164 positions with a loss: chunks of 64 do not divide them
    grads = []
    results = []
    for chunk, fused in ((64, True), (None, True), (None, False)):
        monkeypatch.setattr(loss, "supports_fused_loss", lambda m, f=fused: f)
        model.zero_grad()
        kl, n = loss.distill_loss(model, ids, labels, chunk_size=chunk)
        kl.backward()
        results.append((kl.item(), n.item()))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert results[0][1] == results[1][1] == results[2][1] == 4 * 44 - 5 - 2 - 5
    for (kl, _), g in zip(results[1:], grads[1:], strict=True):
        assert kl == pytest.approx(results[0][0], rel=1e-5)
        for k in grads[0]:
            torch.testing.assert_close(g[k], grads[0][k], rtol=1e-4, atol=1e-7)


def test_the_bases_pass_runs_without_dropout_and_training_mode_comes_back() -> None:
    from doctune.modeling import apply_lora
    from doctune.train.loss import distill_loss

    torch.manual_seed(0)
    from transformers import GPT2Config, GPT2LMHeadModel

    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64,
                                      vocab_size=VOCAB))  # GPT-2's dropout: 0.1 everywhere
    model = apply_lora(base, r=4, alpha=8, dropout=0.0)
    model.train()
    seen: list[bool] = []
    drop = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout))
    drop.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    ids, labels = _batch()
    for fused in (True, False):
        seen.clear()
        distill_loss(model, ids, labels, fused=fused)
        assert seen == [True, False]  # the model's pass as training runs it; the base's, no dropout
        assert all(m.training for m in model.modules())  # as it was
    # the base's distribution is fixed: the same target each time, whatever dropout draws
    model.eval()
    a, _ = distill_loss(model, ids, labels)
    model.train()
    torch.manual_seed(1)
    b, _ = distill_loss(model, ids, labels)
    assert a.item() == pytest.approx(0.0, abs=1e-6) and b.item() > 0  # B = 0: only dropout differs


def test_distill_loss_with_no_position_to_learn_from_still_backpropagates() -> None:
    from doctune.train.loss import distill_loss

    model = _lora(_tiny_gpt2())
    ids, labels = _batch()
    labels[:] = IGNORE_INDEX
    kl, n = distill_loss(model, ids, labels)
    assert n.item() == 0 and kl.item() == 0.0
    kl.backward()  # a micro-batch of such rows alone must not fail
