"""LoRA's fused side path gives PEFT's loss and gradients, with fewer saved activations."""

from __future__ import annotations

import copy

import pytest
import torch

from doctune.modeling import apply_lora
from doctune.train.dropout import use_fast_dropout
from doctune.train.lora_fused import use_fused_lora


def _tiny_llama(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).to(dtype)


def _pair(dropout: float, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.nn.Module]:
    peft_model = apply_lora(_tiny_llama(dtype), r=4, alpha=8, dropout=dropout,
                            target_modules=None, dora=False)
    with torch.no_grad():  # B starts at zero: give it weights so every gradient is exercised
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    use_fast_dropout(peft_model)
    fused = copy.deepcopy(peft_model)
    assert use_fused_lora(fused) == 14  # 7 linear layers x 2 blocks
    return peft_model, fused


def _step(model: torch.nn.Module, ids: torch.Tensor, *, autocast: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks, drawn in the same order
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.float().clone() for n, p in model.named_parameters()
                         if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_same_loss_and_gradients_as_peft_in_fp32(dropout: float) -> None:
    peft_model, fused = _pair(dropout)
    ids = torch.randint(0, 97, (2, 24))
    loss, grads = _step(peft_model, ids)
    loss2, grads2 = _step(fused, ids)
    assert loss2 == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads2.keys() and len(grads) == 28  # A and B of every adapter
    for name in grads:
        torch.testing.assert_close(grads2[name], grads[name], rtol=1e-5, atol=1e-7)


def test_bf16_base_under_autocast_matches_peft_within_bf16_rounding() -> None:
    peft_model, fused = _pair(0.1, torch.bfloat16)
    for m in (peft_model, fused):  # LoRA weights and their gradients stay fp32
        for name, p in m.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
    ids = torch.randint(0, 97, (2, 24))
    loss, grads = _step(peft_model, ids, autocast=True)
    loss2, grads2 = _step(fused, ids, autocast=True)
    assert loss2 == pytest.approx(loss, rel=2e-3)
    for name in grads:
        assert grads2[name].dtype == torch.float32
        rel = (grads2[name] - grads[name]).norm() / grads[name].norm()
        assert rel < 0.02, (name, float(rel))


def test_inference_and_disabled_adapters_take_peft_path() -> None:
    peft_model, fused = _pair(0.1)
    ids = torch.randint(0, 97, (1, 10))
    peft_model.eval()
    fused.eval()
    with torch.no_grad():
        assert torch.equal(fused(input_ids=ids).logits, peft_model(input_ids=ids).logits)
        with fused.disable_adapter():
            plain = fused(input_ids=ids).logits
        with peft_model.disable_adapter():
            assert torch.equal(plain, peft_model(input_ids=ids).logits)


def test_fused_path_saves_less_for_the_backward_pass() -> None:
    def saved_bytes(model: torch.nn.Module) -> int:
        """Bytes of the distinct tensors autograd keeps (a tensor saved twice counts once)."""
        seen: dict[tuple[int, int], int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[(t.untyped_storage().data_ptr(), t.numel())] = t.numel() * t.element_size()
            return t

        ids = torch.randint(0, 97, (4, 48))
        model.train()
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids).loss.backward()
        return sum(seen.values())

    peft_model, fused = _pair(0.1)
    assert saved_bytes(fused) < 0.9 * saved_bytes(peft_model)  # no dropped copy per adapter


def test_a_compiled_block_traces_the_fused_path_whole() -> None:
    """Under torch.compile a graph break inside the side path would compile each adapter as
    a frame of its own (7 shapes per block: past dynamo's recompile limit, run eagerly)."""
    _, fused = _pair(0.1)
    block = fused.base_model.model.model.layers[0]
    x = torch.randn(2, 8, 32, requires_grad=True)
    pos = torch.arange(8)[None]
    emb = fused.base_model.model.model.rotary_emb(x, pos)
    compiled = torch.compile(block, backend="eager", fullgraph=True)  # a break raises
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(x, position_embeddings=emb)
    out = out[0] if isinstance(out, tuple) else out
    out.float().sum().backward()
    a = block.mlp.down_proj.lora_A["default"].weight
    assert x.grad is not None and a.grad is not None and a.grad.abs().sum() > 0
