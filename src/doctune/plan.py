"""Will this run fit in memory? ``doctune plan`` and ``memory.auto_fit``.

``estimate_memory(cfg, device=...)`` predicts the whole-process peak of a training run from
the model's shape (read from its config; weights are never loaded) and the run settings,
broken down into framework, weights, gradients, optimizer states, activations, logits and
loss. ``fit_to_budget`` changes settings until the estimate fits, keeping the effective
batch (micro-batch x accumulation): smaller micro-batches, then gradient checkpointing,
then LoRA, then shorter blocks.

Coefficients: bytes saved for backward measured on GPT-2 shapes (torch 2.13), calibrated
against the peak RSS of real ``doctune train`` runs (``benchmarks/bench_plan.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from doctune.config import Config, parse_size
from doctune.errors import ConfigError
from doctune.shape import ModelShape, model_shape

MB = 1024 * 1024

# Saved activations per layer, bytes per (token x width): fp32 / bf16-autocast, full
# fine-tuning / LoRA (frozen matmuls keep no inputs), attention dropout off / on.
ACT_PER_LAYER = {("fp32", False): 72.0, ("bf16", False): 40.0, ("fp32", True): 52.0, ("bf16", True): 35.0}
ACT_DROPOUT_EXTRA = {"fp32": 0.0, "bf16": 6.0}
ACT_CHECKPOINTED = 4.0
"""Per layer with gradient checkpointing: only the layer input (fp32) is kept."""
ATTN_MATRIX = 12.0
"""With attention dropout, SDPA falls back to the math kernel: bytes per (token x head x position)."""
EMBED_ACT = 8.0
"""Embedding output, dropout and final norm, bytes per (token x width)."""
LOGITS_PLAIN = {"fp32": 12.0, "bf16": 10.0}
"""Full logits path, bytes per (token x vocabulary) at the loss: logits, fp32 copy, log-softmax."""
FUSED_CHUNK_BYTES = 64 * MB
"""fp32 logits per chunk of the fused output projection + cross-entropy (``train.loss``)."""
OPT_STEP_EXTRA = 4.0
"""AdamW (foreach) temporaries during the step, bytes per trainable parameter."""
FRAMEWORK_MB = {"cpu": 500.0, "mps": 600.0, "cuda": 550.0}
"""Before any model: on CPU, the imports (~360 MB: Python, torch, transformers, peft, doctune)
plus tokenizer, data and loggers, measured at rest in real runs. On CUDA, the CUDA context on
the GPU; on MPS, the CPU side plus Metal's own (both estimated, not measured)."""
ACT_RSS_FACTOR = {"cpu": 1.45, "mps": 1.45, "cuda": 1.15}
"""Peak memory over saved activations. On CPU (measured): each layer's transient tensors
(attention scores, MLP intermediates) go back to the allocator's heap, which does not
shrink. MPS is assumed to behave alike, CUDA's caching allocator better (not measured)."""
SAFE_SHARE = {"cpu": 0.70, "mps": 0.70, "cuda": 0.90}
"""Default budget: share of RAM (CPU, Apple unified memory) or of the GPU's memory."""
LORA_INPUT = {"fp32": 4.0, "bf16": 2.0}
LORA_MASK = 1 / 8
"""Bytes per element of each distinct LoRA input kept for the backward (one copy for the
adapters that read the same input), and of each adapter's input with LoRA dropout (its mask,
packed a bit an element): :mod:`doctune.train.lora_fused`, measured with saved-tensor hooks
(torch 2.13, bf16 autocast)."""
QUANT_BYTES = {"nf4": 0.5 + 1 / 64, "int4": 0.5 + 4 / 32, "int8": 1.0}
"""Bytes a quantised weight takes: NF4 codes (4 bits) + one int8 scale a block of 64 (the
scales' own scales are negligible); int4 codes + an fp16 scale and minimum a group of 32;
int8 + a scale a row (negligible)."""
DEQUANT_TRANSIENT = {"nf4": 26.0, "int4": 9.0, "int8": 4.0}
"""Bytes per weight of the largest layer while layers are dequantised for the matmuls of a
step (torchao's NF4 unpacks codes to int64 indices; the forward's, the recomputation's and the
backward's copies come and go): NF4 calibrated on Llama-3.1-8B and Qwen3-4B shapes on a CPU;
int4 from its arithmetic (uint8 codes, an fp32 weight, its compute-dtype copy), not measured."""


@dataclass
class MemoryPlan:
    """The estimate for one config on one device, in MB."""

    device: str
    precision: str
    peak_mb: float
    budget_mb: float
    breakdown: dict[str, float]
    """Components of the peak (they add up to ``peak_mb``)."""
    phase: str
    """When the peak happens: forward/backward, optimizer step or evaluation."""
    recommendations: list[str] = field(default_factory=list)
    activations_by_checkpointing: dict[str, float] = field(default_factory=dict)
    """Activations (MB) with gradient checkpointing ``"off"`` and ``"on"``, whichever is set."""

    @property
    def fits(self) -> bool:
        return self.peak_mb <= self.budget_mb

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"peak_mb": round(self.peak_mb, 1), "fits": self.fits, "budget_mb": round(self.budget_mb, 1),
                "device": self.device, "precision": self.precision, "phase": self.phase,
                "breakdown": {k: round(v, 1) for k, v in self.breakdown.items()},
                "activations_by_checkpointing": {k: round(v, 1) for k, v in
                                                 self.activations_by_checkpointing.items()},
                "recommendations": self.recommendations}


# ---------------------------------------------------------------------------
# budget and precision


def device_memory_mb(device: str) -> float:
    """RAM (cpu, mps: unified memory) or the first GPU's memory (cuda), in MB."""
    import psutil

    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory) / MB
    return float(psutil.virtual_memory().total) / MB


def default_budget_mb(cfg: Config, device: str) -> float:
    """``memory.budget``, or a safe share of this machine's memory for ``device``."""
    if cfg.memory.budget:
        return parse_size(cfg.memory.budget)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("Planning for cuda on a machine without a CUDA GPU: give the GPU's "
                              'memory as the budget, e.g. `--set memory.budget=24GB`.')
    budget = SAFE_SHARE[device] * device_memory_mb(device)
    if device == "mps":  # past Metal's recommended working set, MPS allocations fail
        import torch

        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            budget = min(budget, torch.mps.recommended_max_memory() / MB)
    return budget


def plan_device(name: str) -> str:
    """``auto`` -> the device this machine would train on; cpu, cuda and mps as given."""
    if name == "auto":
        from doctune.device import resolve_device

        return resolve_device("auto").type
    if name not in FRAMEWORK_MB:
        raise ConfigError(f"`--device` must be auto, cpu, cuda or mps, got {name!r}.")
    return name


def plan_precision(choice: str, device: str) -> str:
    """``train.precision`` as the memory model sees it: fp32 or bf16 (fp16 costs the same)."""
    from doctune.device import cpu_has_bf16

    if choice == "fp32":
        return "fp32"
    if choice in {"bf16", "fp16"}:
        return "bf16"
    if device == "cpu":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "bf16"  # auto on CUDA/MPS: bf16 or fp16 autocast


# ---------------------------------------------------------------------------
# the estimate


def plan_base(cfg: Config, prec: str) -> tuple[str, str]:
    """The frozen base's ``(dtype, quantize)`` as :func:`doctune.quantize.base_format`
    resolves them: ``model.base_dtype`` auto = bf16 for LoRA under bf16 autocast."""
    if not cfg.lora.enabled:
        return "fp32", "none"
    choice = cfg.model.base_dtype
    return ("bf16" if prec == "bf16" else "fp32") if choice == "auto" else choice, cfg.lora.quantize


def weight_bytes(shape: ModelShape, dtype: str, quantize: str) -> float:
    """The model's weights: matrices and embeddings in ``dtype`` (the blocks' linear layers in
    4/8 bits when quantised), norms and the like in fp32."""
    rest = shape.params - shape.matmul_params - shape.embed_params
    q = shape.quantizable_params if quantize != "none" else 0
    matrix = 2.0 if dtype == "bf16" else 4.0
    return (QUANT_BYTES[quantize] * q if q else 0.0) + matrix * (
        shape.matmul_params - q + shape.embed_params) + 4.0 * rest


def _logits_bytes(prec: str, tok: int, C: int, V: int, *, fused: bool, head_trains: bool,
                  training: bool, head_fp32: bool = True) -> float:
    """Memory of the output projection and the loss at their peak, in bytes."""
    if not fused:
        return LOGITS_PLAIN[prec] * tok * V
    # One (rows, V) chunk of logits (+ its fp32 softmax under bf16), the selected hidden
    # states and, when training, their gradient and the output weight's gradient.
    rows = min(tok, max(64, FUSED_CHUNK_BYTES // (4 * V)))
    out = rows * V * (4.0 if prec == "fp32" else 6.0) + 4.0 * tok * C
    if prec == "bf16" and head_fp32:
        out += 2.0 * V * C  # the weight cast once per call
    if training:
        out += 4.0 * tok * C + (4.0 * V * C if head_trains else 0.0)
    return out


def estimate_for_shape(shape: ModelShape, cfg: Config, *, device: str,
                       budget: float | None = None) -> MemoryPlan:
    """The memory plan of ``cfg`` for a model of ``shape`` (the pure part of the estimate)."""
    t = cfg.train
    prec = plan_precision(t.precision, device)
    lora = cfg.lora.enabled
    B, T, C, L, V = t.micro_batch_size, cfg.data.block_size, shape.width, shape.n_layer, shape.vocab
    tok = B * T
    trainable = shape.lora_params if lora else shape.params

    base_dtype, quantize = plan_base(cfg, prec)
    weights = weight_bytes(shape, base_dtype, quantize)
    dequant = DEQUANT_TRANSIENT[quantize] * shape.max_linear if quantize != "none" else 0.0
    grads = 4.0 * trainable
    optimizer = 8.0 * trainable
    layer = (ACT_PER_LAYER[(prec, lora)] + (ACT_DROPOUT_EXTRA[prec] if shape.attn_dropout else 0.0)) * tok * C
    if shape.attn_dropout:
        layer += ATTN_MATRIX * tok * shape.n_head * T
    if lora:  # LoRA's inputs as the adapters' matmuls keep them (one per input), + masks
        distinct = shape.lora_distinct_inputs or shape.lora_inputs
        layer += (LORA_INPUT[prec] * distinct
                  + (LORA_MASK * shape.lora_inputs if cfg.lora.dropout > 0 else 0.0)) * tok
    # bf16 copies of the weights, kept for the backward (recomputed when checkpointing)
    # (an fp32 base only: a bf16 or quantised weight is used, and saved, as it is)
    cast = ((2.0 * V * C, 2.0 * (V * C + shape.matmul_params)) if prec == "bf16" and base_dtype == "fp32"
            else (0.0, 0.0))
    by_ckpt = {"off": ACT_RSS_FACTOR[device] * (L * layer + EMBED_ACT * tok * C) + cast[1],
               "on": ACT_RSS_FACTOR[device] * (L * ACT_CHECKPOINTED * tok * C + layer
                                               + EMBED_ACT * tok * C) + cast[0]}
    by_ckpt = {k: v + dequant for k, v in by_ckpt.items()}  # one layer dequantised at a time
    acts = by_ckpt["on" if t.grad_checkpointing else "off"]
    head_fp32 = base_dtype == "fp32"
    logits = _logits_bytes(prec, tok, C, V, fused=t.fused_loss, head_trains=not lora, training=True,
                           head_fp32=head_fp32)
    # With one micro-batch per step, gradients are freed (zero_grad) before the forward and
    # come back during the backward as activations go; only the output layer's overlaps
    # (the fused loss holds it already, in logits_and_loss).
    grads_at_peak = grads if t.grad_accum > 1 else (4.0 * V * C if not (lora or t.fused_loss) else 0.0)
    phases = {
        "forward/backward": {"gradients": grads_at_peak, "optimizer": optimizer,
                             "activations": acts, "logits_and_loss": logits},
        "optimizer step": {"gradients": grads, "optimizer": optimizer + OPT_STEP_EXTRA * trainable,
                           "activations": 0.0, "logits_and_loss": 0.0},
        "evaluation": {"gradients": 0.0, "optimizer": optimizer,
                       "activations": ACT_RSS_FACTOR[device] * layer + dequant,
                       "logits_and_loss": _logits_bytes(prec, tok, C, V, fused=t.fused_loss, head_trains=False,
                                                        training=False, head_fp32=head_fp32)},
    }
    phase = max(phases, key=lambda p: sum(phases[p].values()))
    breakdown = {"framework": FRAMEWORK_MB[device], "weights": weights / MB}
    breakdown.update({k: v / MB for k, v in phases[phase].items()})
    return MemoryPlan(device=device, precision=prec, peak_mb=sum(breakdown.values()),
                      budget_mb=budget if budget is not None else default_budget_mb(cfg, device),
                      breakdown=breakdown, phase=phase,
                      activations_by_checkpointing={k: v / MB for k, v in by_ckpt.items()})


def estimate_memory(cfg: Config, *, device: str) -> MemoryPlan:
    """Predict the peak memory of training ``cfg`` on ``device`` (cpu, cuda or mps), with
    recommendations when it does not fit the budget."""
    device = plan_device(device)
    shape = model_shape(cfg)
    plan = estimate_for_shape(shape, cfg, device=device)
    if not plan.fits:
        _, plan.recommendations = _fit(shape, cfg, device, plan.budget_mb)
    return plan


# ---------------------------------------------------------------------------
# fitting


def _with(cfg: Config, **changes: Any) -> Config:
    """A copy of ``cfg`` with ``changes`` given as ``section__key=value``."""
    data = cfg.model_dump()
    for key, value in changes.items():
        data[key.split("__")[0]][key.split("__")[1]] = value
    return Config.model_validate(data)


def _fit(shape: ModelShape, cfg: Config, device: str, budget: float) -> tuple[Config, list[str]]:
    t = cfg.train
    effective = t.micro_batch_size * t.grad_accum
    sizes = [b for b in range(t.micro_batch_size, 0, -1) if effective % b == 0]

    def first_fit(base: Config) -> Config | None:
        for b in sizes:  # largest micro-batch that fits: fewest accumulation steps
            trial = _with(base, train__micro_batch_size=b, train__grad_accum=effective // b)
            if estimate_for_shape(shape, trial, device=device, budget=budget).fits:
                return trial
        return None

    stages: list[Config] = [cfg]
    if not t.grad_checkpointing:
        stages.append(_with(stages[-1], train__grad_checkpointing=True))
    if not cfg.lora.enabled:
        stages.append(_with(stages[-1], lora__enabled=True))
    if cfg.lora.quantize == "none" and shape.quantizable_params:  # 4-bit base: ~0.13x the bytes
        stages.append(_with(stages[-1], lora__quantize="nf4"))
    block = cfg.data.block_size
    while block > 64:
        block //= 2
        overlap = min(cfg.data.overlap * block // cfg.data.block_size, block - 1)
        stages.append(_with(stages[-1], data__block_size=block, data__overlap=overlap))
    for stage in stages:
        fitted = first_fit(stage)
        if fitted is not None:
            plan = estimate_for_shape(shape, fitted, device=device, budget=budget)
            return fitted, _describe(cfg, fitted, plan)
    smallest = _with(stages[-1], train__micro_batch_size=1, train__grad_accum=effective)
    plan = estimate_for_shape(shape, smallest, device=device, budget=budget)
    return smallest, [*_describe(cfg, smallest, plan)[:-1],
                      f"Even then it needs ~{plan.peak_mb:,.0f} MB, over the {budget:,.0f} MB "
                      "budget: choose a smaller model (e.g. `--set model.name=scratch:small`)."]


def _describe(old: Config, new: Config, plan: MemoryPlan) -> list[str]:
    """Human sentences for what changed between ``old`` and ``new``, with `--set` lines."""
    out = []
    o, n = old.train, new.train
    if (o.micro_batch_size, o.grad_accum) != (n.micro_batch_size, n.grad_accum):
        out.append(f"Use micro-batches of {n.micro_batch_size} with {n.grad_accum} accumulation steps "
                   f"(same effective batch of {n.micro_batch_size * n.grad_accum}): "
                   f"`--set train.micro_batch_size={n.micro_batch_size} --set train.grad_accum={n.grad_accum}`.")
    if n.grad_checkpointing and not o.grad_checkpointing:
        out.append("Turn on gradient checkpointing (~30% slower, far fewer activations): "
                   "`--set train.grad_checkpointing=true`.")
    if new.lora.enabled and not old.lora.enabled:
        out.append(f"Train a LoRA adapter (r={new.lora.r}) instead of all weights: `--set lora.enabled=true`.")
    if new.lora.quantize != old.lora.quantize:
        out.append(f"Store the frozen base in 4 bits (QLoRA; slower on a CPU, needs torchao): "
                   f"`--set lora.quantize={new.lora.quantize}`.")
    if new.data.block_size != old.data.block_size:
        out.append(f"Use shorter windows of {new.data.block_size} tokens: `--set data.block_size="
                   f"{new.data.block_size} --set data.overlap={new.data.overlap}`.")
    out.append(f"Estimated peak then: {plan.peak_mb:,.0f} MB of a {plan.budget_mb:,.0f} MB budget.")
    return out


def fit_to_budget(cfg: Config, budget_mb: float | None = None, *, device: str = "cpu",
                  shape: ModelShape | None = None) -> tuple[Config, list[str]]:
    """Return ``cfg`` changed to fit ``budget_mb`` (default: ``memory.budget`` or a safe share
    of the machine), and sentences saying what changed; ``cfg`` itself when it already fits.
    ``shape``: the model's, when the caller has it (else read from ``model.name``)."""
    shape = shape or model_shape(cfg)
    budget = budget_mb if budget_mb is not None else default_budget_mb(cfg, device)
    plan = estimate_for_shape(shape, cfg, device=device, budget=budget)
    if plan.fits:
        return cfg, []
    fitted, notes = _fit(shape, cfg, device, budget)
    head = (f"memory.auto_fit: the estimated peak of {plan.peak_mb:,.0f} MB is over the "
            f"{budget:,.0f} MB budget, so:")
    return fitted, [head, *notes]


def render_plan(plan: MemoryPlan, cfg: Config) -> str:
    """The text ``doctune plan`` prints: the breakdown, the verdict, the recommendations."""
    t = cfg.train
    dtype, quantize = plan_base(cfg, plan.precision)
    base = f" on a {quantize if quantize != 'none' else dtype} base" if cfg.lora.enabled else ""
    lines = [f"Memory plan for {cfg.model.name} on {plan.device} ({plan.precision}, "
             f"{'LoRA' + base if cfg.lora.enabled else 'full fine-tuning'}, micro-batch {t.micro_batch_size} "
             f"x {t.grad_accum}, block {cfg.data.block_size}, checkpointing "
             f"{'on' if t.grad_checkpointing else 'off'}, {'fused' if t.fused_loss else 'full'} logits)", ""]
    for key, value in plan.breakdown.items():
        lines.append(f"  {key.replace('_', ' '):<18} {value:>9,.0f} MB")
    lines.append(f"  {'peak':<18} {plan.peak_mb:>9,.0f} MB   (during {plan.phase})")
    ab = plan.activations_by_checkpointing
    lines.append(f"  (activations: {ab['off']:,.0f} MB without gradient checkpointing, "
                 f"{ab['on']:,.0f} MB with it)")
    verdict = "fits" if plan.fits else "does NOT fit"
    lines += ["", f"{verdict} the budget of {plan.budget_mb:,.0f} MB "
              f"({math.floor(100 * plan.peak_mb / plan.budget_mb)}% of it)."]
    if plan.recommendations:
        lines += ["", "To fit, keeping the effective batch:", *(f"  - {r}" for r in plan.recommendations)]
    return "\n".join(lines)
