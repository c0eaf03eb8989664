"""The RMSNorm and SwiGLU that keep less for the backward pass: transformers' forward to the
bit, its gradients (exact in fp32, within bf16 rounding under autocast), fewer saved bytes;
and the packed dropout masks and shared input casts of LoRA's fused side path."""

from __future__ import annotations

import copy

import pytest
import torch

from doctune.train import lora_fused
from doctune.train.fused_blocks import RMSNormFn, SwiGLUFn, use_fused_blocks
from doctune.train.lora_fused import pack_bits, unpack_bits
from test_lora_fused import _pair, _step, _tiny_llama


def _saved_bytes(fn: object) -> int:
    """Bytes of the distinct tensors autograd keeps while ``fn()`` runs forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.untyped_storage().data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()  # type: ignore[operator]
    del out
    return sum(seen.values())


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_is_transformers_forward_bit_for_bit_and_its_gradient(weight_dtype: torch.dtype) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.1)
    norm = norm.to(weight_dtype)
    x = torch.randn(3, 7, 48, requires_grad=True)
    gy = torch.randn(3, 7, 48)
    ref = norm(x)
    (gx_ref,) = torch.autograd.grad(ref, x, gy)
    out = RMSNormFn.apply(x, norm.weight, 1e-5, x.dtype)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    (gx,) = torch.autograd.grad(out, x, gy)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)


def test_rmsnorm_trains_its_weight_like_transformers() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(16)
    fused = copy.deepcopy(norm)
    use_fused_blocks(fused)
    x = torch.randn(2, 5, 16)
    norm(x).pow(2).sum().backward()
    fused(x).pow(2).sum().backward()
    assert norm.weight.grad is not None and fused.weight.grad is not None
    torch.testing.assert_close(fused.weight.grad, norm.weight.grad, rtol=1e-5, atol=1e-6)


def test_rmsnorm_keeps_its_input_in_bf16_under_autocast() -> None:
    x = torch.randn(4, 64, 256, requires_grad=True)
    w = torch.ones(256, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _saved_bytes(lambda: RMSNormFn.apply(x, w, 1e-5, torch.bfloat16))

        def plain() -> torch.Tensor:
            x32 = x.to(torch.float32)
            h = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
            return w * h.to(x.dtype)

        hf = _saved_bytes(plain)
    assert fused <= 0.55 * hf  # the fp32 input kept as bf16 (+ the per-row scales)


def test_swiglu_is_the_same_product_and_gradients_keeping_two_of_three_tensors() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        gate = torch.randn(2, 9, 40, dtype=dtype, requires_grad=True)
        up = torch.randn(2, 9, 40, dtype=dtype, requires_grad=True)
        gy = torch.randn(2, 9, 40, dtype=dtype)
        ref = torch.nn.functional.silu(gate) * up
        out = SwiGLUFn.apply(gate, up)
        assert torch.equal(out, ref)
        want = torch.autograd.grad(ref, (gate, up), gy)
        got = torch.autograd.grad(out, (gate, up), gy)
        tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, **tol)
    gate = torch.randn(2, 64, 128, dtype=torch.bfloat16, requires_grad=True)
    up = torch.randn(2, 64, 128, dtype=torch.bfloat16, requires_grad=True)
    assert _saved_bytes(lambda: SwiGLUFn.apply(gate, up)) == 2 * gate.numel() * 2
    assert _saved_bytes(lambda: torch.nn.functional.silu(gate) * up) == 3 * gate.numel() * 2


def test_a_llama_with_fused_blocks_trains_as_transformers_does() -> None:
    model = _tiny_llama()
    fused = copy.deepcopy(model)
    assert use_fused_blocks(fused) == 2 * 3 + 1  # 2 norms and an MLP per block, the final norm
    assert use_fused_blocks(fused) == 0  # once
    ids = torch.randint(0, 97, (2, 24))
    loss, grads = _step(model, ids)
    loss2, grads2 = _step(fused, ids)
    assert loss2 == loss  # the same forward, bit for bit
    for name in grads:
        torch.testing.assert_close(grads2[name], grads[name], rtol=1e-4, atol=1e-6)
    # no gradient: transformers' own forward
    with torch.no_grad():
        assert torch.equal(fused(input_ids=ids).logits, model(input_ids=ids).logits)


def test_other_families_are_left_alone() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    assert use_fused_blocks(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2))) == 0


@pytest.mark.parametrize("shape", [(2, 3, 8), (4, 16, 24), (1, 16), (3, 5)])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_packed_masks_unpack_to_the_same_mask(shape: tuple[int, ...], p: float) -> None:
    mask = torch.rand(shape) < p
    packed = pack_bits(mask)
    if mask.numel() % 8 == 0:
        assert packed.dtype == torch.uint8 and packed.numel() == mask.numel() // 8
    assert torch.equal(unpack_bits(packed, mask.shape), mask)
    if mask.numel() % 8 == 0:  # the tensor-operation path (GPUs, compiled) packs alike
        assert torch.equal(lora_fused._pack_words(mask), packed)
        assert torch.equal(lora_fused._unpack_words(packed, mask.shape), mask)


def test_adapters_reading_one_input_keep_one_copy_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _, fused = _pair(0.1)  # an fp32 residual stream (as doctune keeps it), bf16 products
    ids = torch.randint(0, 97, (4, 48))

    def run() -> torch.Tensor:
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fused(input_ids=ids, labels=ids).loss

    fused.train()
    shared = _saved_bytes(run)
    loss_shared = float(run().detach())
    monkeypatch.setattr(lora_fused, "_shared_cast", lambda x, dtype: x.detach().to(dtype))
    copies = _saved_bytes(run)
    assert float(run().detach()) == loss_shared
    # per block: q, k, v read one input and gate, up another: 3 fewer copies of 32 wide
    assert copies - shared >= 2 * 3 * 4 * 48 * 32 * 2


def test_a_loaded_model_keeps_the_fused_layers_through_train_and_eval(tmp_path: object) -> None:
    """transformers 5 swaps in hub kernels at each .train()/.eval() of a model loaded with
    use_kernels (its default when the `kernels` package is installed), undoing doctune's
    layers; doctune loads without them (they are code from the hub)."""
    from pathlib import Path

    from doctune.modeling import load_pretrained

    folder = Path(str(tmp_path)) / "llama"
    _tiny_llama().save_pretrained(folder)
    model = load_pretrained(str(folder))
    assert use_fused_blocks(model) == 7
    model.eval()
    model.train()
    norm = model.model.layers[0].input_layernorm
    x = torch.randn(1, 3, 32, requires_grad=True)
    assert type(norm(x).grad_fn).__name__ == "RMSNormFnBackward"
