"""Two pieces of a Llama-style block that keep less for the backward pass.

transformers writes a block's RMSNorm and SwiGLU MLP as plain tensor expressions, and
autograd keeps what each operation needs: for SmolLM2-135M (4 x 512 tokens, bf16 autocast)
that is, per block, each RMSNorm's fp32 input (the residual stream) and, in the MLP, the
gate and up projections, silu(gate), and their product (the down projection's LoRA input).

* :class:`RMSNormFn` computes the same RMSNorm (in fp32, as transformers does) and keeps its
  input in the autocast dtype when one is on (bf16: half the bytes; the backward pass then
  recomputes the normalised input from it, with bf16's rounding, like every other product
  of an autocast backward pass), as it is otherwise.
* :class:`SwiGLUFn` computes ``silu(gate) * up`` with the same operations and keeps only
  ``gate`` and ``up``: the backward pass recomputes ``silu(gate)``.

:func:`use_fused_blocks` puts them into the RMSNorm and MLP modules of the families whose
code is exactly that (Llama, SmolLM2, Qwen2, Qwen3, Mistral); other modules are left alone.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from doctune.device import compute_dtype

RMSNORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")
"""transformers' RMSNorm classes computed as ``weight * (x * rsqrt(mean(x^2) + eps))``."""
MLPS = ("LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP")
"""transformers' MLP classes computed as ``down(act(gate(x)) * up(x))``."""


class RMSNormFn(torch.autograd.Function):
    """transformers' RMSNorm, ``weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)``,
    keeping ``x`` in ``save_dtype`` for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float,
                save_dtype: torch.dtype) -> torch.Tensor:
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        normed = (x32 * rstd).to(x.dtype)
        ctx.save_for_backward(x.detach().to(save_dtype), rstd, weight)
        ctx.x_dtype = x.dtype
        return weight * normed

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
        saved, rstd, weight = ctx.saved_tensors
        h = saved.to(torch.float32) * rstd  # the normalised input
        grad_w = None
        if ctx.needs_input_grad[1]:
            dims = tuple(range(gy.dim() - 1))
            grad_w = (gy * h.to(ctx.x_dtype)).sum(dims).to(weight.dtype)
        gh = (gy * weight).to(torch.float32)
        gx = rstd * (gh - h * (gh * h).mean(-1, keepdim=True))
        return gx.to(ctx.x_dtype), grad_w, None, None


class SwiGLUFn(torch.autograd.Function):
    """``silu(gate) * up``, keeping ``gate`` and ``up`` only."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
        gate, up = ctx.saved_tensors
        # what autograd computes for silu(gate) * up, with silu(gate) made again
        d_gate = torch.ops.aten.silu_backward(gy * up, gate)
        d_up = gy * torch.nn.functional.silu(gate)
        return d_gate, d_up


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return self._hf_forward(hidden_states)
    return RMSNormFn.apply(hidden_states, self.weight, float(self.variance_epsilon),
                           compute_dtype(hidden_states))


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return self._hf_forward(x)
    return self.down_proj(SwiGLUFn.apply(self.gate_proj(x), self.up_proj(x)))


def _silu(module: Any) -> bool:
    act = getattr(module, "act_fn", None)
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"


def use_fused_blocks(model: torch.nn.Module) -> int:
    """Give the RMSNorms and SwiGLU MLPs of ``model`` (of the classes in :data:`RMSNORMS`
    and :data:`MLPS`) the functions above, in place; returns how many modules."""
    n = 0
    for module in model.modules():
        name = type(module).__name__
        if hasattr(module, "_hf_forward"):
            continue
        if name in RMSNORMS and hasattr(module, "variance_epsilon"):
            module._hf_forward = module.forward  # type: ignore[assignment]
            module.forward = types.MethodType(_norm_forward, module)
            n += 1
        elif name in MLPS and _silu(module) and all(
                hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
            module._hf_forward = module.forward  # type: ignore[assignment]
            module.forward = types.MethodType(_mlp_forward, module)
            n += 1
    return n
