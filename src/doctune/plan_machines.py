"""``doctune plan --machine mac16``: which models fit a machine, with which settings, how fast.

For every model of :mod:`doctune.catalog` the planner fits a LoRA run to the machine's
budget (``memory.auto_fit``'s rules: micro-batch, then gradient checkpointing) on each
frozen base, bf16 first and 4-bit NF4 when bf16 does not fit, and estimates its speed.

Memory is the planner's estimate, whose error against measured peaks is printed with it
(:data:`MEASURED`). Speed is arithmetic, not a measurement: model FLOPs per token (LoRA:
4 x the matrices' weights, 6 x with checkpointing's second forward) over an *assumed*
effective bf16 throughput of the machine, plus, for NF4, dequantising every quantised weight
once a pass (:data:`Machine.dequant_ns`). Only ``cpu24`` has been timed (a 2-core
Sapphire Rapids share with AMX: a 24 GB cloud box); the others are assumptions to replace
with a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from doctune.config import Config
from doctune.errors import ConfigError
from doctune.plan import estimate_for_shape, fit_to_budget
from doctune.shape import ModelShape, shape_of


@dataclass(frozen=True)
class Machine:
    """A machine to plan for: where it trains, how much memory a run may take, how fast."""

    device: str
    what: str
    budget_mb: float
    """What a run may take: Metal's working set on a Mac, 70% of RAM on a CPU, 90% of a GPU."""
    tflops: float
    """Assumed effective bf16 throughput of training, TFLOP/s of model FLOPs."""
    dequant_ns: float
    """Assumed time to dequantise one NF4 weight (torchao, layer by layer), nanoseconds."""


MACHINES: dict[str, Machine] = {
    "mac16": Machine("mps", "Apple-silicon Mac with 16 GB (MPS; Metal's working set ~2/3 of it)",
                     10.7 * 1024, 2.0, 0.5),
    "cpu24": Machine("cpu", "24 GB CPU box, 2 cores with AMX bf16 (as measured here)",
                     0.70 * 24 * 1024, 0.25, 7.0),
    "gpu24": Machine("cuda", "24 GB GPU (RTX 4090 / A10 class)", 0.90 * 24 * 1024, 60.0, 0.02),
    "gpu80": Machine("cuda", "80 GB GPU (A100 / H100 class)", 0.90 * 80 * 1024, 120.0, 0.01),
}

MEASURED = ("memory: within 15% of the measured peak RSS of LoRA on Llama-3.2-3B and Qwen3-4B "
            "(bf16 base, 1%), Qwen3-4B (NF4 1%, int4 6%) and Llama-3.1-8B (NF4 +13%, int4 +7%) "
            "on a CPU; benchmarks/bench_models.py")
"""What the memory estimates were checked against, printed under the table."""


def machine(name: str) -> Machine:
    """The :class:`Machine` called ``name``; an unknown one is a :class:`ConfigError`."""
    try:
        return MACHINES[name]
    except KeyError:
        raise ConfigError(f"`--machine` must be one of {', '.join(MACHINES)}, got {name!r}.") from None


@dataclass
class Option:
    """One model on one base, fitted to the machine."""

    base: str
    peak_mb: float
    fits: bool
    cfg: Config
    tokens_per_s: float


def _fitted(shape: ModelShape, cfg: Config, m: Machine) -> Option:
    """``cfg`` fitted to ``m`` without changing its base (checkpointing is the last resort)."""
    fitted, _ = fit_to_budget(cfg, m.budget_mb, device=m.device, shape=shape)
    if fitted.lora.quantize != cfg.lora.quantize or fitted.data.block_size != cfg.data.block_size:
        fitted = cfg.model_copy(deep=True)
        fitted.train.micro_batch_size, fitted.train.grad_checkpointing = 1, True
        fitted.train.grad_accum = cfg.train.micro_batch_size * cfg.train.grad_accum
    plan = estimate_for_shape(shape, fitted, device=m.device, budget=m.budget_mb)
    base = "nf4" if cfg.lora.quantize == "nf4" else "bf16"
    return Option(base, plan.peak_mb, plan.fits, fitted, tokens_per_s(shape, fitted, m))


def tokens_per_s(shape: ModelShape, cfg: Config, m: Machine) -> float:
    """Estimated training tokens/s (see the module docstring: an assumption, not a measurement)."""
    t = cfg.train
    ckpt = t.grad_checkpointing
    tokens = t.micro_batch_size * cfg.data.block_size
    # LoRA: forward 2N, backward through the frozen weights 2N (no weight gradients); +2N recompute
    flops = (6.0 if ckpt else 4.0) * (shape.matmul_params + shape.width * shape.vocab)
    flops += (3 if ckpt else 2) * 2.0 * shape.n_layer * cfg.data.block_size * shape.width  # attention
    step_s = tokens * flops / (m.tflops * 1e12)
    if cfg.lora.quantize == "nf4":  # every quantised weight dequantised once a pass
        step_s += (3 if ckpt else 2) * shape.quantizable_params * m.dequant_ns * 1e-9
    return tokens / step_s


def plan_machine(name: str, cfg: Config) -> list[tuple[str, float, list[Option]]]:
    """For each catalogue model: ``(model, parameters, [bf16 option, nf4 option])``."""
    from transformers import AutoConfig

    from doctune.catalog import MODELS

    m = machine(name)
    data = cfg.model_dump()
    data["lora"].update(enabled=True)
    data["train"].update(precision="bf16", device=m.device)
    data["memory"].update(budget=None)
    rows = []
    for key, spec in MODELS.items():
        shape = shape_of(AutoConfig.for_model(**spec.config), r=cfg.lora.r)
        options = []
        for quantize in ("none", "nf4"):
            data["lora"]["quantize"] = quantize
            data["model"]["base_dtype"] = "auto"
            options.append(_fitted(shape, Config.model_validate(data), m))
        rows.append((key, float(shape.params), options))
    return rows


def _cell(o: Option) -> str:
    if not o.fits:
        return f"{o.peak_mb / 1024:.1f} GB: does not fit"
    t = o.cfg.train
    how = f"mb {t.micro_batch_size}" + (", ckpt" if t.grad_checkpointing else "")
    return f"{o.peak_mb / 1024:.1f} GB ({how}), ~{o.tokens_per_s:,.0f} tok/s"


def render_machine(name: str, rows: list[tuple[str, float, list[Option]]], cfg: Config) -> str:
    """The text ``doctune plan --machine NAME`` prints."""
    m = machine(name)
    t = cfg.train
    lines = [f"LoRA r={cfg.lora.r} on {name}: {m.what}; budget {m.budget_mb / 1024:.1f} GB; bf16; "
             f"block {cfg.data.block_size}, effective batch {t.micro_batch_size * t.grad_accum}",
             "", "| model | params | bf16 base | 4-bit NF4 base | start with | hours / 1M tokens |",
             "|---|---:|---|---|---|---:|"]
    for key, params, (bf16, nf4) in rows:
        pick: Any = bf16 if bf16.fits else (nf4 if nf4.fits else None)
        choice = "-" if pick is None else (
            "`--set lora.enabled=true`" + (" `--set lora.quantize=nf4`" if pick is nf4 else "")
            + (" `--set train.grad_checkpointing=true`" if pick.cfg.train.grad_checkpointing else ""))
        hours = f"{1e6 / pick.tokens_per_s / 3600:,.1f}" if pick is not None else "-"
        lines.append(f"| {key} | {params / 1e9:.2f}B | {_cell(bf16)} | {_cell(nf4)} | {choice} | {hours} |")
    lines += ["", f"({MEASURED}.)",
              f"(speed: {m.tflops:g} TFLOP/s effective bf16 and {m.dequant_ns:g} ns a dequantised "
              "NF4 weight, " + ("measured on this CPU's share, within ~2x" if name == "cpu24"
                                else "assumed, not measured: time it with a short run") + ".)",
              "(with `memory.auto_fit: true` and `memory.budget` set to the budget above, doctune "
              "train makes these same choices by itself.)"]
    return "\n".join(lines)
