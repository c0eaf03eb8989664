"""LoRA's side path, ``lora_B(lora_A(dropout(x))) * scaling``, as one autograd function.

PEFT computes it module by module: it casts the input to the adapter's dtype (an fp32 copy
of a bf16 activation), drops it out (another copy, saved by ``lora_A`` for its backward, in
bf16 once autocast has cast it again) and runs the two small products. With an adapter on
every linear layer that is 7 dropped copies of a layer's activations per block, kept until
the backward pass, and a quarter of a CPU training step: on SmolLM2-135M (bf16, 2 cores)
training with ``lora.dropout=0.05`` ran at 442 tokens/s and 4.6 GB, without dropout at
612 tokens/s and 3.9 GB.

:class:`LoraDelta` computes the same thing in the compute dtype (the autocast dtype, or the
input's) and saves only what the backward pass cannot recompute: the input in that dtype
(one copy for the adapters that read the same input: q, k and v; gate and up), the dropout
mask (packed, one bit an element) and the rank-``r`` product. The dropped input is
recomputed from the input and the mask. Same masks (:func:`doctune.train.attention.drop_mask`, drawn in
the same order), same products: the loss and gradients match PEFT's path (see the tests).
:func:`use_fused_lora` puts it into every plain LoRA linear layer of a PEFT model; anything
else (DoRA, a LoRA bias, several or no active adapters, merged weights, no gradients) runs
PEFT's own forward.
"""

from __future__ import annotations

import types
import weakref
from typing import Any

import torch

from doctune.device import compute_dtype
from doctune.train.attention import drop_mask


class LoraDelta(torch.autograd.Function):
    """``(dropout(x) @ A.T) @ B.T * scaling`` in ``dtype``, ``drop`` the dropped positions
    (None: no dropout) and ``keep`` = 1 / (1 - p); gradients for x, A and B."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, xc: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                scaling: float, drop: torch.Tensor | None, keep: float,
                dtype: torch.dtype) -> torch.Tensor:
        # xc: x in ``dtype``, without gradient, the same tensor for the adapters that read
        # the same input (q, k, v; gate, up): saved once for all of them
        xd = xc.masked_fill(drop, 0).mul_(keep) if drop is not None else xc
        h = xd @ a.to(dtype).t()  # (..., r)
        y = (h @ b.to(dtype).t()).mul_(scaling)  # (..., out)
        ctx.save_for_backward(xc, pack_bits(drop) if drop is not None else None, a, b, h)
        ctx.scaling, ctx.keep, ctx.dtype, ctx.x_dtype = scaling, keep, dtype, x.dtype
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
        xc, packed, a, b, h = ctx.saved_tensors
        drop = unpack_bits(packed, xc.shape) if packed is not None else None
        dtype = ctx.dtype
        g = gy.to(dtype) * ctx.scaling  # (..., out)
        rank, width = a.shape
        grad_b = (g.reshape(-1, g.shape[-1]).t() @ h.reshape(-1, rank)).to(b.dtype)
        gh = g @ b.to(dtype)  # (..., r)
        xd = xc.masked_fill(drop, 0).mul_(ctx.keep) if drop is not None else xc
        grad_a = (gh.reshape(-1, rank).t() @ xd.reshape(-1, width)).to(a.dtype)
        gx = None
        if ctx.needs_input_grad[0]:
            gx = gh @ a.to(dtype)
            if drop is not None:
                gx.masked_fill_(drop, 0).mul_(ctx.keep)
            gx = gx.to(ctx.x_dtype)
        return gx, None, grad_a, grad_b, None, None, None, None


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as one bit an element (uint8, ``numel / 8`` bytes: a dropout mask kept
    for the backward pass takes an eighth of the memory); returned as it is when its size
    is not a multiple of 8. Element ``8w + j`` is bit ``j`` of byte ``w``."""
    if mask.numel() % 8:
        return mask
    if mask.device.type == "cpu" and not torch.compiler.is_compiling():
        import numpy as np  # numpy's packbits: SIMD, ~10x the int64 arithmetic below

        return torch.from_numpy(np.packbits(mask.reshape(-1).numpy(), bitorder="little"))
    return _pack_words(mask)


def _pack_words(mask: torch.Tensor) -> torch.Tensor:
    """:func:`pack_bits` in tensor operations (any device; compiles)."""
    # 8 flags a little-endian int64 word, flag j at bit 8j: move each to bit j
    words = mask.contiguous().view(torch.uint8).view(-1).view(torch.int64)
    packed = words.bitwise_and(1)
    for j in range(1, 8):
        packed |= (words >> (7 * j)).bitwise_and_(1 << j)
    return packed.to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of ``shape`` that :func:`pack_bits` packed."""
    if packed.dtype == torch.bool:
        return packed
    if packed.device.type == "cpu" and not torch.compiler.is_compiling():
        import numpy as np

        flags = np.unpackbits(packed.numpy(), bitorder="little")
        return torch.from_numpy(flags).view(torch.bool).view(shape)
    return _unpack_words(packed, shape)


def _unpack_words(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """:func:`unpack_bits` in tensor operations (any device; compiles)."""
    byte = packed.to(torch.int64)
    words = byte.bitwise_and(1)
    for j in range(1, 8):
        words |= (byte << (7 * j)).bitwise_and_(1 << (8 * j))
    # ne(0), not a view as bool: inductor's CPU code for a uint8 buffer viewed as bool does
    # not compile (torch 2.13: `Vectorized<bool>` has no `cast`), a comparison does
    return words.view(torch.uint8).ne(0).view(shape)


def _mask(x: torch.Tensor, p: float) -> torch.Tensor | None:
    """The positions of ``x`` to drop, drawn outside the autograd function: compiled, a
    random draw inside one breaks the graph (``torch.compile`` then falls back to running
    each adapter on its own); there the mask comes from ``torch.rand``, which compiles."""
    if p <= 0:
        return None
    if torch.compiler.is_compiling():
        return torch.rand(x.shape, device=x.device) < p
    return drop_mask(tuple(x.shape), p, x.device)


_last_cast: list[tuple[Any, int, torch.dtype, torch.Tensor]] = []


def _shared_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, without gradient: the same tensor for the adapters that read the
    same input one after another (q, k and v; gate and up), so that the backward pass keeps
    one copy of it, not one per adapter. (Compiled, the graph shares it by itself.)"""
    if torch.compiler.is_compiling():
        return x.detach().to(dtype)
    if _last_cast:
        ref, version, cast_to, xc = _last_cast[0]
        if ref() is x and version == x._version and cast_to == dtype:
            return xc
    xc = x.detach().to(dtype)
    _last_cast[:] = [(weakref.ref(x), x._version, dtype, xc)]
    return xc


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A PEFT ``lora.Linear``'s forward with the side path as :class:`LoraDelta`."""
    active = self.active_adapters
    name = active[0] if len(active) == 1 else None
    if (name is None or self.disable_adapters or self.merged or kwargs.get("adapter_names")
            or name not in self.lora_A or name in getattr(self, "lora_variant", {})
            or getattr(self, "lora_bias", {}).get(name) or not torch.is_grad_enabled()):
        return self._peft_forward(x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    dtype = compute_dtype(x)
    delta = LoraDelta.apply(x, _shared_cast(x, dtype), self.lora_A[name].weight,
                            self.lora_B[name].weight, float(self.scaling[name]), _mask(x, p),
                            1.0 / (1.0 - p) if p > 0 else 1.0, dtype)
    return (result + delta).to(result.dtype)


def use_fused_lora(model: torch.nn.Module) -> int:
    """Give every PEFT LoRA linear layer of ``model`` the fused side path (in place);
    returns how many layers."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    n = 0
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward  # type: ignore[assignment]
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            n += 1
    return n
