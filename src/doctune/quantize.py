"""The frozen base of a LoRA run in less memory: bf16 weights, or 4-/8-bit ones (QLoRA).

Under bf16 autocast every matrix multiplication already runs on a bf16 copy of its weight,
so storing the frozen base in bf16 (``model.base_dtype``) changes no number the forward
computes, and halves the base's memory. What stays fp32: norms (tiny, and read outside
autocast), the residual stream (the embedding's output is cast back to fp32, as an fp32
embedding would give it), the LoRA weights, their gradients and optimizer state, the loss.

``lora.quantize`` goes further, through torchao's tensor subclasses (no kernel of doctune's):

* ``nf4``: torchao's ``NF4Tensor`` (QLoRA's 4-bit NormalFloat, blocks of 64 with double-
  quantised scales: ~0.52 bytes a weight), in :class:`NF4Linear`, torchtune's
  ``FrozenNF4Linear`` pattern: an ``nn.Linear`` (so PEFT wraps it in LoRA as usual) whose
  forward dequantises its weight to the compute dtype, layer by layer. Pure PyTorch: CPU,
  MPS and CUDA.
* ``int8``: torchao's int8 weight-only tensor (``Int8WeightOnlyConfig``), which PEFT adapts
  with its own ``TorchaoLoraLinear``.
* ``int4``: 4-bit integers in groups of 32 weights, each group with an fp16 scale and minimum
  (asymmetric, round to nearest: the layout of GGUF's Q4_1; 0.625 bytes a weight), in
  :class:`Int4Linear`, plain PyTorch (no torchao needed). A GGUF or Ollama model stored in
  Q4_0/Q4_1 is already on such a grid, and ``int4`` finds it again: its 4-bit base computes
  the file's own values, where NF4 would round them onto another grid (SmolLM2-135M's Q4_1
  file: +21% perplexity before any training on an NF4 base, +17% with blocks of 16).

Only the linear layers inside the transformer blocks are quantised (embeddings and the
output head stay bf16/fp32). Merging and export dequantise first (:func:`dequantize_base`):
the adapter was trained on the dequantised weights, so that is what it is merged into.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from doctune.errors import ConfigError

if TYPE_CHECKING:
    import torch

INSTALL = 'pip install "doctune[quant]"'
"""What installs the quantisation backend (torchao)."""


@dataclass(frozen=True)
class BaseFormat:
    """How a run stores its frozen base weights."""

    dtype: str
    """``fp32`` or ``bf16``: the embeddings, the output head and every unquantised matrix."""
    quantize: str = "none"
    """``none``, ``nf4`` or ``int8``: the linear layers of the transformer blocks."""

    @property
    def load_dtype(self) -> Any:
        """The ``dtype`` to load the checkpoint in: its own (never more than it holds) for a
        16-bit base, so that an 8B model is never read into 32 GB of fp32; fp32 otherwise."""
        import torch

        return torch.float32 if self.dtype == "fp32" and self.quantize == "none" else "auto"

    def describe(self) -> str:
        """``"bf16 base"``, ``"4-bit NF4 base (bf16 embeddings)"``, ..."""
        if self.quantize == "none":
            return f"{self.dtype} base"
        bits = {"nf4": "4-bit NF4", "int4": "4-bit int4", "int8": "8-bit int8"}[self.quantize]
        return f"{bits} base ({self.dtype} embeddings)"


def base_format(*, base_dtype: str, quantize: str, lora: bool, precision: str) -> BaseFormat:
    """Resolve ``model.base_dtype`` (auto: bf16 for LoRA under bf16 autocast) and check it.

    ``precision`` is the training precision actually used (bf16, fp16 or fp32).
    """
    if base_dtype == "auto":
        dtype = "bf16" if lora and precision == "bf16" else "fp32"
    elif base_dtype == "bf16" and not lora:
        raise ConfigError("`model.base_dtype: bf16` stores the frozen base of a LoRA run in bf16, "
                          "but this run trains every weight (`lora.enabled: false`), and trained "
                          "weights stay fp32. Set `lora.enabled=true` or `model.base_dtype=auto`.")
    elif base_dtype == "bf16" and precision != "bf16":
        raise ConfigError(f"`model.base_dtype: bf16` needs bf16 training (autocast), but this run "
                          f"trains in {precision}. Set `train.precision=bf16` or "
                          "`model.base_dtype=auto`.")
    else:
        dtype = base_dtype
    if quantize in ("nf4", "int8"):
        require_backend(quantize)
    return BaseFormat(dtype, quantize)


def require_backend(quantize: str) -> None:
    """Raise a :class:`ConfigError` with the install command when torchao is missing."""
    try:
        _torchao()
    except ImportError:
        raise ConfigError(f"`lora.quantize: {quantize}` needs torchao, which is not installed. "
                          f"Install it with `{INSTALL}` (or `pip install torchao`), or set "
                          "`lora.quantize=none`.") from None


def import_torchao_quietly() -> None:
    """Import torchao, when it is installed, without its notes (:func:`_torchao`):
    transformers' model code and PEFT import it on their own, and a user who never asked for
    a quantised base would see its warnings about CUDA extensions on every run."""
    import importlib.util

    if importlib.util.find_spec("torchao") is not None:
        _torchao()
        # the submodules that transformers imports later register more such enums
        import logging

        pytree = logging.getLogger("torch.utils._pytree")
        if pytree.level == logging.NOTSET:
            pytree.setLevel(logging.ERROR)


def _torchao() -> Any:
    """``torchao.quantization``, imported without its notes about optional CUDA extensions
    it could not load (and a PyTorch deprecation it triggers)."""
    import logging

    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as tq
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    return tq


# ---------------------------------------------------------------------------
# the layers


def _nf4_linear_class() -> type:
    import torch

    from doctune.device import compute_dtype

    class NF4Linear(torch.nn.Linear):
        """A frozen ``nn.Linear`` whose weight is a torchao ``NF4Tensor`` (torchtune's
        ``FrozenNF4Linear``): the forward dequantises it straight to the compute dtype (the
        autocast dtype when autocast is on, else the input's), never to an fp32 copy first."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4

            x = x.to(compute_dtype(x))
            out = linear_nf4(x, self.weight)  # (..., out): dequantises, then one matmul
            return out + self.bias.to(out.dtype) if self.bias is not None else out

    return NF4Linear


_NF4_LINEAR: type | None = None


def nf4_linear_class() -> type:
    """:class:`NF4Linear`, defined once torch is imported (doctune imports torch lazily)."""
    global _NF4_LINEAR
    if _NF4_LINEAR is None:
        _NF4_LINEAR = _nf4_linear_class()
    return _NF4_LINEAR


def is_quantized(weight: Any) -> bool:
    """True for a torchao quantised weight (NF4 or int8)."""
    return type(weight).__module__.startswith("torchao")


INT4_GROUP = 32
"""Weights per int4 group (one fp16 scale and minimum each): GGUF's Q4_0/Q4_1 block."""


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, scales, minimums)`` of a (out, in) weight, ``in`` a multiple of
    :data:`INT4_GROUP`: two 4-bit codes a byte (out, in / 2), and the fp16 scale and minimum
    of each group of 32 along a row (out, in / 32); a weight is ``code * scale + minimum``.
    Weights that are already such values (a Q4_1 GGUF, dequantised) get their codes back."""
    import torch

    out = w.shape[0]
    groups = w.float().reshape(out, -1, INT4_GROUP)
    low = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - low) / 15
    q = ((groups - low) / torch.where(step > 0, step, 1.0)).round_().clamp_(0, 15)
    # the scale and minimum that fit the weights best for these codes (least squares): from
    # rounded weights (a bf16 copy of a Q4_1 file) they average the rounding out
    qc = q - q.mean(-1, keepdim=True)
    wc = groups - groups.mean(-1, keepdim=True)
    spread = (qc * qc).sum(-1, keepdim=True)
    scale = torch.where(spread > 0, (qc * wc).sum(-1, keepdim=True) / spread.clamp(min=1e-12), 0.0)
    low = groups.mean(-1, keepdim=True) - scale * q.mean(-1, keepdim=True)
    codes = q.to(torch.uint8).reshape(out, -1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4), scale.squeeze(-1).half(),
            low.squeeze(-1).half())


def dequantize_int4(codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight of :func:`quantize_int4`'s parts, in ``dtype`` (computed in fp32,
    rounded once)."""
    import torch

    out = codes.shape[0]
    q = torch.stack((codes & 15, codes >> 4), dim=-1).reshape(out, -1, INT4_GROUP)
    w = q.float() * scales.float().unsqueeze(-1) + mins.float().unsqueeze(-1)
    return w.reshape(out, -1).to(dtype)


def _int4_linear_class() -> type:
    import torch

    class Int4Matmul(torch.autograd.Function):
        """``x @ W.T`` with ``W`` dequantised in the forward and again in the backward (the
        dequantised weight is never kept between the two)."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                    mins: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(codes, scales, mins)
            return x @ dequantize_int4(codes, scales, mins, x.dtype).t()

        @staticmethod
        def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
            codes, scales, mins = ctx.saved_tensors
            return gy @ dequantize_int4(codes, scales, mins, gy.dtype), None, None, None

    from doctune.device import compute_dtype

    class Int4Linear(torch.nn.Linear):
        """A frozen ``nn.Linear`` stored as :func:`quantize_int4`'s parts: ``weight`` holds
        the codes (uint8), ``scales`` and ``mins`` the groups' fp16 parameters; the forward
        computes with the weight dequantised to the compute dtype (the autocast dtype when
        autocast is on, else the input's)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.to(compute_dtype(x))
            out = Int4Matmul.apply(x, self.weight, self.scales, self.mins)
            return out + self.bias.to(out.dtype) if self.bias is not None else out

        def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
            scales, mins = self.get_buffer("scales"), self.get_buffer("mins")
            return dequantize_int4(self.weight, scales, mins, dtype)

    return Int4Linear


_INT4_LINEAR: type | None = None


def int4_linear_class() -> type:
    """:class:`Int4Linear`, defined once torch is imported."""
    global _INT4_LINEAR
    if _INT4_LINEAR is None:
        _INT4_LINEAR = _int4_linear_class()
    return _INT4_LINEAR


def is_int4(module: Any) -> bool:
    """True for an :class:`Int4Linear` layer."""
    return _INT4_LINEAR is not None and isinstance(module, _INT4_LINEAR)


NF4_BLOCK = 64
"""Weights per NF4 block (one absmax scale each), QLoRA's and torchao's choice."""
NF4_SCALER_BLOCK = 256
"""Block scales per double-quantisation block, QLoRA's choice; smaller when a layer's
number of blocks is not a multiple of it (SmolLM2's 576 x 576 projections: 5,184 blocks)."""


def nf4_scaler_block(numel: int) -> int:
    """The largest power of two <= :data:`NF4_SCALER_BLOCK` that divides the layer's blocks."""
    blocks, size = numel // NF4_BLOCK, NF4_SCALER_BLOCK
    while size > 1 and blocks % size:
        size //= 2
    return size


NF4_LEVELS = (-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
              0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0)
"""QLoRA's 16 NormalFloat levels (quantiles of N(0, 1), scaled to [-1, 1]), as torchao has them."""


def to_nf4(w: torch.Tensor, *, chunk: int = 1 << 22) -> Any:
    """torchao's ``NF4Tensor`` of ``w`` (bf16), the same format ``torchao.to_nf4`` makes.

    Scales come from torchao's own double quantisation; each weight's code is found by
    ``torch.bucketize`` against the midpoints between the levels instead of torchao's
    search over all 16 distances: 3.3x faster on a CPU (an 8B model's 7B weights take
    minutes, not a quarter of an hour). The two differ only at near-ties (0.45% of random
    weights, always the neighbouring level), where torchao's bf16 distances round.
    """
    import torch
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import (
        NF4Tensor,
        SubclassTensorArgs,
        get_block_absmax,
    )

    flat = w.flatten()
    scaler_block = nf4_scaler_block(flat.numel())
    levels = torch.tensor(NF4_LEVELS, dtype=w.dtype, device=w.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    scalers, factor, mean = NF4Tensor.double_quantize_scalers(flat, NF4_BLOCK, scaler_block)
    absmax = get_block_absmax(flat, NF4_BLOCK)  # (n_blocks,)
    codes = torch.empty(flat.numel(), dtype=torch.uint8, device=w.device)
    for start in range(0, flat.numel(), chunk):  # chunk: a multiple of the block
        part = flat[start:start + chunk].view(-1, NF4_BLOCK)  # (blocks, 64)
        part = part / absmax[start // NF4_BLOCK:(start + chunk) // NF4_BLOCK].unsqueeze(-1)
        codes[start:start + chunk] = torch.bucketize(part.flatten(), midpoints, out_int32=True)
    packed = codes[::2] << 4 | codes[1::2]  # two codes a byte, as torchao packs them
    meta = SubclassTensorArgs(w.size(), w.stride(), w.storage_offset(), w.dtype, w.device, False)
    return NF4Tensor(meta, NF4_BLOCK, flat.numel() // NF4_BLOCK, scaler_block, scalers, factor,
                     mean, packed, levels)


def _linears(module: Any) -> list[tuple[Any, str, Any]]:
    """``(parent, name, linear)`` for each plain ``nn.Linear`` inside ``module``."""
    import torch

    return [(parent, name, child) for parent in module.modules()
            for name, child in parent.named_children() if type(child) is torch.nn.Linear]


def _quantize_layer(linear: Any, kind: str, device: torch.device, tq: Any) -> Any:
    """The quantised replacement of ``linear`` (nf4: an :class:`NF4Linear`; int4: an
    :class:`Int4Linear`; int8: itself)."""
    import torch

    w = linear.weight.detach().to(device=device, dtype=torch.bfloat16)
    if kind == "int4":
        new = int4_linear_class()(linear.in_features, linear.out_features,
                                  bias=linear.bias is not None, device="meta")
        codes, scales, mins = quantize_int4(w)
        new.weight = torch.nn.Parameter(codes, requires_grad=False)
        new.register_buffer("scales", scales)
        new.register_buffer("mins", mins)
        if linear.bias is not None:
            new.bias = torch.nn.Parameter(linear.bias.detach().to(device), requires_grad=False)
        return new
    if kind == "int8":
        linear.weight = torch.nn.Parameter(w, requires_grad=False)
        linear.to(device)
        tq.quantize_(linear, tq.Int8WeightOnlyConfig())
        return linear
    new = nf4_linear_class()(linear.in_features, linear.out_features,
                             bias=linear.bias is not None, device="meta")
    new.weight = torch.nn.Parameter(to_nf4(w), requires_grad=False)
    if linear.bias is not None:
        new.bias = torch.nn.Parameter(linear.bias.detach().to(device), requires_grad=False)
    return new


def _drop_pages(t: torch.Tensor) -> None:
    """Let the kernel drop the pages of a weight read through a memory map (safetensors) that
    is no longer needed: otherwise they stay counted in the process's memory until every
    tensor of the file is gone. Only a CPU tensor alone in a fixed-size storage (how a
    memory-mapped checkpoint's tensors come), only whole pages inside it, only on Linux."""
    import ctypes
    import mmap
    import sys

    st = t.untyped_storage()
    if sys.platform != "linux" or t.device.type != "cpu" or st.resizable() or \
            st.nbytes() != t.numel() * t.element_size():
        return
    page = mmap.PAGESIZE
    start = -(-st.data_ptr() // page) * page
    end = (st.data_ptr() + st.nbytes()) // page * page
    if end > start:
        ctypes.CDLL(None).madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # DONTNEED


def quantize_linears(module: Any, kind: str, device: torch.device) -> int:
    """Quantise the linear layers inside ``module`` (a transformer block, or a whole model:
    then those of its blocks) to ``kind``, one at a time on ``device`` (fast on a GPU; the
    peak is one bf16 layer); how many. Layers whose size is not a multiple of 128 stay."""
    from doctune.modeling import transformer_blocks

    tq = _torchao() if kind != "int4" else None
    blocks = transformer_blocks(module) or [module]
    fits = ((lambda lin: lin.in_features % INT4_GROUP == 0) if kind == "int4" else
            (lambda lin: lin.weight.numel() % (2 * NF4_BLOCK) == 0))
    layers = [x for b in blocks for x in _linears(b) if fits(x[2])]
    for parent, name, linear in layers:
        old = linear.weight.detach()
        setattr(parent, name, _quantize_layer(linear, kind, device, tq))
        if kind != "int8":  # (int8 quantises the layer in place)
            _drop_pages(old)
    return len(layers)


def _to_fp32_output(module: Any, args: Any, output: Any) -> Any:
    return output.float()


def cast_base(model: Any, dtype: str, *, done: set[int] | None = None) -> None:
    """Store the matrices of ``model`` (linear and Conv1D weights and biases, embeddings, the
    output head) in ``dtype`` and everything else (norms) in fp32; a weight read through a
    memory map and converted has its file pages dropped (see :func:`_drop_pages`). In bf16 each
    embedding's output is made fp32 again, so the residual stream stays fp32 as with an fp32
    base. Quantised weights are left as they are; tied weights stay tied. ``done``: ids of
    parameters already cast (skipped, then added to)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    done = set() if done is None else done
    target = torch.bfloat16 if dtype == "bf16" else torch.float32
    matrices = (torch.nn.Linear, Conv1D, torch.nn.Embedding)
    for module in model.modules():
        is_matrix = isinstance(module, matrices)
        for p in module.parameters(recurse=False):
            if id(p) in done or is_quantized(p) or not p.is_floating_point():
                continue
            done.add(id(p))
            want = target if is_matrix else torch.float32
            if p.dtype != want:
                old = p.data
                p.data = old.to(want)
                _drop_pages(old)
        if isinstance(module, torch.nn.Embedding) and dtype == "bf16":
            module.register_forward_hook(_to_fp32_output)


def prepare_base(model: Any, fmt: BaseFormat, device: torch.device) -> None:
    """Quantise (``fmt.quantize``), cast (``fmt.dtype``) and move ``model`` to ``device``,
    before LoRA wraps it, block by block: the pages of each weight a memory-mapped checkpoint
    (safetensors) held are dropped once it is converted, so the peak stays near the result's
    size (SmolLM2-1.7B to NF4: 1.7 GB instead of 4.4 GB)."""
    from doctune.modeling import transformer_blocks

    if fmt == BaseFormat("fp32"):  # as loaded: nothing to change
        model.to(device)
        return
    done: set[int] = set()
    quantized = 0
    for block in transformer_blocks(model):
        if fmt.quantize != "none":
            quantized += quantize_linears(block, fmt.quantize, device)
        cast_base(block, fmt.dtype, done=done)
        block.to(device)
    if fmt.quantize != "none" and not quantized:
        raise ConfigError(f"`lora.quantize: {fmt.quantize}` quantises the nn.Linear layers of the "
                          f"transformer blocks, and {type(model).__name__} has none (GPT-2 "
                          "stores its projections as Conv1D). Use a Llama-family model (Llama, "
                          "Qwen, SmolLM2, Gemma, Phi-3), or `lora.quantize=none`.")
    cast_base(model, fmt.dtype, done=done)  # embeddings, output head, final norm
    model.to(device)  # no dtype: quantised weights move as they are


def dequantize_base(model: Any, dtype: torch.dtype) -> int:
    """Replace every quantised linear layer of ``model`` (PEFT-wrapped or not) by a plain
    ``nn.Linear`` holding its dequantised weight in ``dtype``: what merging a QLoRA adapter
    must start from. How many were replaced."""
    import torch

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or not (
                    is_quantized(child.weight) or is_int4(child)):
                continue
            w: Any = child.weight
            layer: Any = child
            dense = (layer.dequantized(dtype) if is_int4(child) else w.get_original_weight()
                     if hasattr(w, "get_original_weight") else w.dequantize())
            plain = torch.nn.Linear(child.in_features, child.out_features,
                                    bias=child.bias is not None, device="meta")
            plain.weight = torch.nn.Parameter(dense.to(dtype), requires_grad=False)
            if child.bias is not None:
                plain.bias = torch.nn.Parameter(child.bias.detach().to(dtype), requires_grad=False)
            setattr(parent, name, plain)
            count += 1
    return count


def to_keeping_quantized(model: Any, device: torch.device, dtype: torch.dtype) -> None:
    """``model.to(device, dtype)`` that keeps quantised weights quantised (a plain
    ``.to(dtype)`` would dequantise them all)."""
    model.to(device)
    for p in model.parameters():
        if p.is_floating_point() and not is_quantized(p) and p.dtype != dtype:
            p.data = p.data.to(dtype)
