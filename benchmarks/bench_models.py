"""Which model to start from: size, LoRA memory and CPU training speed of today's models, 135M to 8B.

For each model of :data:`doctune.catalog.MODELS` it builds the model from its published
``config.json`` values (architecture, widths, layers, heads, KV heads, head size, MLP size,
vocabulary, tied embeddings, attention pattern), with random weights written tensor by tensor in
bf16 as the hub checkpoints are (an 8B model never needs more than one 2 GB shard in memory),
and a byte-level BPE tokenizer that fits its vocabulary. It then LoRA-trains it with doctune's
own code, ``python -m doctune train`` in a child process (LoRA on doctune's default targets,
block 256, micro-batch 1, no evaluation, samples nor compile), on each frozen base of
``--bases``: fp32, bf16 (``model.base_dtype``) and 4-bit NF4 or int4 (``lora.quantize``), with gradient
checkpointing as the planner chooses for ``--budget``, and reports:

* parameters, counted on the built model and checked against the published size;
* peak memory: the RSS of the training process tree, sampled from outside every 50 ms;
* tokens/s: tokens per step over the median step time after the first (warm-up) step,
  from the run's ``metrics.jsonl`` (5 steps per model, 3 from 1B parameters on; an 8B model
  on 2 cores takes minutes a step: ``--steps 2``);
* doctune's memory planner for the same job on this CPU (and its error), and on a 16 GB
  Apple-silicon Mac (MPS, bf16; budget: the planner's 70% of 16 GB).

An fp32 base above 2B parameters is not run (it would need 4 bytes a weight); its row gives the
planner's estimate.

Nothing is downloaded. Speed and memory depend on the model's shape, not on its weights,
so a random model of the real shape costs what the real one costs; the tokenizer changes
only how many windows the docs make, not what one 256-token step costs. (Not measured
here: the model's quality on your docs. That needs the real weights.)

    python benchmarks/bench_models.py --models smollm2-135m,qwen3-4b --bases bf16,nf4
    python benchmarks/bench_models.py --models llama-3.1-8b --bases nf4 --steps 2   # ~20 min
    python benchmarks/bench_models.py --models smollm2-135m,gemma-3-270m --steps 2
    python benchmarks/bench_models.py --json models.json --work bench-models   # keep the runs

Precision is bf16 where the CPU has native bf16 (AVX512-BF16, AMX, Apple M2+), else fp32.
Run it alone on the machine: other processes slow the steps down (their RSS is not counted).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import GPT2_TOKENIZER_FILES, REPO, machine_info, median, read_jsonl, run_watched
from doctune.catalog import MODELS, Spec

MAC_MEMORY_MB = 16 * 1024
BIG = 1e9
"""Models from this many parameters on train fewer steps by default (slow on a CPU)."""
STEPS_SMALL, STEPS_BIG = 5, 3
"""Default steps per run; the first is the warm-up, the rest are measured."""


# ---------------------------------------------------------------------------
# the model folder: random weights of the real shape, a tokenizer that fits


def save_tokenizer(vocab_size: int, out: Path) -> None:
    """GPT-2's byte-level BPE cut to at most ``vocab_size`` tokens, ``<|endoftext|>`` last.

    GPT-2's merge i makes token 256 + i, so its first n tokens and n - 256 merges are a
    whole tokenizer (less the few merges of a later token's parts: GPT-2's glitch tokens);
    at 50,257 tokens or more it is GPT-2's own. Token ids then always fit the model's
    embeddings, which is all doctune asks of a tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = json.loads((GPT2_TOKENIZER_FILES / "vocab.json").read_text(encoding="utf-8"))
    lines = (GPT2_TOKENIZER_FILES / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # after the "#version" line
    n = min(vocab_size, len(vocab)) - 1  # ordinary tokens kept
    kept = {tok: i for tok, i in vocab.items() if i < n} | {"<|endoftext|>": n}
    merges = [m for m in merges[: n - 256] if {m[0], m[1], m[0] + m[1]} <= kept.keys()]
    bpe = Tokenizer(models.BPE(vocab=kept, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(out)


def write_config(spec: Spec, out: Path) -> int:
    """The model's ``config.json`` and tokenizer without weights (``--plan-only``); its
    parameter count."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.for_model(**spec.config)
    config.dtype = torch.bfloat16
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_tokenizer(spec.config["vocab_size"], out)
    return _count_params(config)


def build_model(spec: Spec, out: Path, shard_bytes: int = 2 << 30) -> int:
    """Save a random model of ``spec``'s shape (bf16, like the hub's) and a tokenizer; its parameters.

    Built on the ``meta`` device and written tensor by tensor into safetensors shards of at
    most ``shard_bytes``, blocks in order (as the hub's are), so that an 8B model never needs
    more than one shard in memory: matrices N(0, 0.02), norms 1, biases 0.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**spec.config)
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    params = 0

    def flush() -> None:
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard.clear()

    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # a tied output head: saved once, as the embeddings
            continue
        seen.add(id(p))
        params += p.numel()
        if p.dim() >= 2:
            t = torch.randn(p.shape, dtype=torch.bfloat16).mul_(0.02)
        else:
            t = (torch.zeros if name.endswith("bias") else torch.ones)(p.shape, dtype=torch.bfloat16)
        if shard and sum(x.numel() * 2 for x in shard.values()) + t.numel() * 2 > shard_bytes:
            flush()
        shard[name] = t
    flush()
    index = {"metadata": {"total_size": 2 * params}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    config.save_pretrained(out)
    del model
    gc.collect()
    save_tokenizer(spec.config["vocab_size"], out)
    return params


# ---------------------------------------------------------------------------
# one model: the planner's estimates, then a real run


BASES = {"fp32": ["model.base_dtype=fp32"], "bf16": ["model.base_dtype=bf16"],
         "nf4": ["lora.quantize=nf4"], "int4": ["lora.quantize=int4"]}
"""The frozen base of each measured run: fp32, bf16, or 4-bit NF4 or int4 (with bf16 embeddings)."""
FP32_MAX_PARAMS = 2e9
"""No fp32 base above this: 4 bytes a weight is too much for the machine's shared RAM."""


def overrides(model_dir: Path, run_dir: Path, args: argparse.Namespace, steps: int, precision: str,
              base: str) -> list[str]:
    """The ``--set`` items of the LoRA job (the planner reads the same ones)."""
    return [f"data.path={args.docs}", f"data.block_size={args.block}", "data.val_fraction=0",
            f"model.name={model_dir}", "lora.enabled=true", *BASES[base],
            f"train.output_dir={run_dir}", f"train.max_steps={steps}",
            f"train.micro_batch_size={args.micro_batch}", "train.grad_accum=1", "train.warmup_steps=0",
            f"train.precision={precision}", "train.device=cpu", "train.compile=off",
            "train.eval_every=0", "train.save_every=0", "train.sample_every=0", "train.sample_prompts=[]",
            "log.tensorboard=false", "log.progress=false", "log.report=false",
            f"memory.budget={args.budget}"]


def _fit(cfg: Any, device: str, budget: float | None = None) -> Any:
    """What ``memory.auto_fit`` makes of ``cfg``, keeping its base (a base that does not fit
    even so gets the last resort before another base: gradient checkpointing)."""
    from doctune.plan import fit_to_budget

    fitted, _ = fit_to_budget(cfg, budget, device=device)
    if fitted.lora.quantize != cfg.lora.quantize or fitted.data.block_size != cfg.data.block_size:
        fitted = cfg.model_copy(deep=True)
        fitted.train.grad_checkpointing = True
    return fitted


def plan(sets: list[str]) -> dict[str, Any]:
    """``doctune plan``'s peak for the job as auto-fit leaves it (base kept): on this CPU, and
    on a 16 GB Mac (MPS, bf16)."""
    from doctune.config import load_config
    from doctune.plan import SAFE_SHARE, estimate_for_shape, model_shape

    cfg = load_config(None, sets)
    shape = model_shape(cfg)
    budget = cfg.memory.budget
    fitted = _fit(cfg, "cpu")
    here = estimate_for_shape(shape, fitted, device="cpu")
    mac_cfg = load_config(None, [*sets, "train.precision=bf16", "train.device=mps"])
    mac_budget = SAFE_SHARE["mps"] * MAC_MEMORY_MB
    mac_fitted = _fit(mac_cfg, "mps", mac_budget)
    mac = estimate_for_shape(shape, mac_fitted, device="mps", budget=mac_budget)
    return {"cpu_peak_mb": round(here.peak_mb), "budget": budget, "fits": here.fits,
            "grad_checkpointing": fitted.train.grad_checkpointing,
            "mac16_peak_mb": round(mac.peak_mb), "mac16_budget_mb": round(mac_budget),
            "mac16_fits": mac.fits, "mac16_checkpointing": mac_fitted.train.grad_checkpointing,
            "lora_params": shape.lora_params, "mac16_breakdown": mac.to_dict()["breakdown"],
            "cpu_breakdown": here.to_dict()["breakdown"]}


def train(sets: list[str], run_dir: Path, steps: int) -> dict[str, Any]:
    """``python -m doctune train --set ...``; tokens/s after the warm-up step and the peak RSS."""
    metrics = run_dir / "metrics.jsonl"
    seen = {"size": -1, "rows": 0}
    t0 = time.perf_counter()

    def steps_done() -> int:  # re-read the metrics when the file grew; say each new step
        size = metrics.stat().st_size if metrics.is_file() else 0
        if size != seen["size"]:
            try:
                rows = [r for r in read_jsonl(metrics) if "step_time_s" in r]
            except ValueError:  # a line caught half-written: read it again next time
                return seen["rows"]
            for n, r in enumerate(rows[seen["rows"]:], seen["rows"] + 1):
                print(f"    step {n}/{steps}: {r['step_time_s']:.1f} s "
                      f"({time.perf_counter() - t0:.0f} s since launch)", flush=True)
            seen.update(size=size, rows=len(rows))
        return seen["rows"]

    cmd = [sys.executable, "-m", "doctune", "train", "--docs-only"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = run_watched(cmd, env=env, log_path=run_dir.parent / f"{run_dir.name}.log", steps_in_file=steps_done)
    rows = [r for r in read_jsonl(metrics) if "step_time_s" in r]
    if proc.returncode != 0 or not rows:
        raise RuntimeError(f"doctune train exited with {proc.returncode}:\n" + "\n".join(proc.log[-20:]))
    measured = rows[1:] or rows  # the first step warms up (allocator, kernels, data)
    step_s = median([r["step_time_s"] for r in measured])
    tokens = rows[0]["tokens_per_sec"] * rows[0]["step_time_s"]
    facts = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    warnings = list(dict.fromkeys(line for line in proc.log if line.startswith("warning:")))
    for line in warnings:  # e.g. doctune seeing other programs keep the cores busy
        print(f"    doctune said: {line}", flush=True)
    return {"warnings": warnings, "tokens_per_s": round(tokens / step_s, 1), "s_per_step": round(step_s, 2),
            "step_times_s": [round(r["step_time_s"], 2) for r in rows], "tokens_per_step": round(tokens),
            "warmup_steps_excluded": len(rows) - len(measured), "peak_rss_mb": round(proc.peak_tree_rss_mb),
            "step_end_rss_mb": max((r.get("mem_rss_mb", 0.0) for r in rows), default=None),
            "time_to_first_step_s": facts.get("time_to_first_step_s"), "wall_s": proc.wall_s,
            "params_trainable": facts.get("params_trainable"), "precision": facts.get("precision")}


def measure(key: str, spec: Spec, work: Path, args: argparse.Namespace, precision: str) -> list[dict[str, Any]]:
    """Build, plan and train one model on each base; its rows of the table."""
    model_dir = work / "models" / key
    t0 = time.perf_counter()
    built = (model_dir / "model.safetensors.index.json").is_file()
    if built or (args.plan_only and (model_dir / "config.json").is_file()):
        from transformers import AutoConfig

        params = _count_params(AutoConfig.from_pretrained(model_dir))
    elif args.plan_only:  # the planner reads the config and the tokenizer, never the weights
        params = write_config(spec, model_dir)
    else:
        params = build_model(spec, model_dir)
    match = abs(params / spec.published - 1) <= 0.02
    print(f"  built: {params:,} parameters ({'matches' if match else 'does NOT match'} the published "
          f"{_size(spec.published)}) in {time.perf_counter() - t0:.0f} s", flush=True)
    steps = args.steps or (STEPS_BIG if params >= BIG else STEPS_SMALL)
    rows = []
    for base in args.bases.split(","):
        run_dir = work / "runs" / f"{key}-{base}"
        shutil.rmtree(run_dir, ignore_errors=True)
        sets = overrides(model_dir, run_dir, args, steps, precision, base)
        row: dict[str, Any] = {"model": spec.hub.split("/")[1], "key": key, "hub": spec.hub,
                               "license": spec.license, "params": params, "base": base,
                               "published_params": spec.published, "params_match": match,
                               "steps": steps, "config": spec.config, "plan": plan(sets)}
        print(f"  [{base} base] planner: {row['plan']['cpu_peak_mb']:,} MB on this CPU "
              f"(checkpointing {'on' if row['plan']['grad_checkpointing'] else 'off'}), "
              f"{row['plan']['mac16_peak_mb']:,} MB on a 16 GB Mac", flush=True)
        if base == "fp32" and params > FP32_MAX_PARAMS:
            row["error"] = f"not measured: would need ~{row['plan']['cpu_peak_mb'] / 1024:.0f} GB"
        elif not args.plan_only:
            try:  # gradient checkpointing as the planner chose it for the budget
                ckpt = str(row["plan"]["grad_checkpointing"]).lower()
                row.update(train([*sets, f"train.grad_checkpointing={ckpt}"], run_dir, steps))
            except RuntimeError as e:
                row["error"] = str(e)
                print(f"  FAILED: {e}", flush=True)
        if "peak_rss_mb" in row:
            row["plan_error"] = round(row["plan"]["cpu_peak_mb"] / row["peak_rss_mb"] - 1, 3)
            print(f"  {row['tokens_per_s']:.0f} tokens/s, peak RSS {row['peak_rss_mb']:,} MB, "
                  f"planner {100 * row['plan_error']:+.1f}% ({row['wall_s']:.0f} s)", flush=True)
        rows.append(row)
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.work is None:
        shutil.rmtree(model_dir, ignore_errors=True)  # up to 16 GB each
    return rows


def _count_params(config: Any) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# the table


def _size(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{int(n / 1e6 + 0.5)}M"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the README: one line a model and base."""
    out = ["| model | params | license | base | LoRA peak RSS (measured) | planner (error) | "
           "tokens/s (measured) | checkpointing (planner) | planner: 16 GB Mac (MPS, bf16) |",
           "|---|---:|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        p = r["plan"]
        mac = (f"{p['mac16_peak_mb'] / 1024:.1f} GB ({'fits' if p['mac16_fits'] else 'does not fit'}"
               f"{', checkpointing' if p['mac16_fits'] and p['mac16_checkpointing'] else ''})")
        if "peak_rss_mb" not in r:
            rss = r["error"] if r.get("error", "").startswith("not measured") else (
                "failed" if "error" in r else "-")
            speed, err = "-", ""
        else:
            rss, speed = f"{r['peak_rss_mb'] / 1024:.1f} GB", f"{r['tokens_per_s']:.0f}"
            err = f" ({100 * r['plan_error']:+.0f}%)"
        out.append(f"| {r['model']} | {_size(r['params'])} | {r['license']} | {r['base']} | {rss} | "
                   f"{p['cpu_peak_mb'] / 1024:.1f} GB{err} | {speed} | "
                   f"{'on' if p['grad_checkpointing'] else 'off'} | {mac} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"Comma-separated, of: {', '.join(MODELS)}.")
    ap.add_argument("--steps", type=int, help=f"Optimizer steps per model, the first one a warm-up "
                    f"(default: {STEPS_SMALL}, or {STEPS_BIG} from {_size(BIG)} parameters on).")
    ap.add_argument("--block", type=int, default=256, help="Tokens per window (data.block_size).")
    ap.add_argument("--micro-batch", type=int, default=1, help="Windows per step (train.micro_batch_size).")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 where the CPU has native bf16, else fp32.")
    ap.add_argument("--docs", type=Path, default=REPO / "examples" / "docs", help="Docs folder (data.path).")
    ap.add_argument("--json", type=Path, help="Also write every number to this file.")
    ap.add_argument("--work", type=Path, help="Keep models and runs here (a model built there is reused).")
    ap.add_argument("--bases", default="fp32,bf16,nf4",
                    help=f"Frozen bases to measure, of {', '.join(BASES)} (fp32: up to {_size(FP32_MAX_PARAMS)}).")
    ap.add_argument("--budget", default="10.5GB", help="memory.budget the planner fits each run to "
                    "(default: a 16 GB Mac's GPU working set).")
    ap.add_argument("--plan-only", action="store_true", help="The planner's figures only, no training.")
    args = ap.parse_args()
    keys = [k.strip().lower() for k in args.models.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in MODELS]:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be at least 1")

    from doctune.device import cpu_has_bf16

    native = cpu_has_bf16()
    precision = args.precision if args.precision != "auto" else ("bf16" if native else "fp32")
    info = machine_info("cpu")
    head = (f"CPU: {info['cpu']}, {info['threads']} threads, native bf16: {'yes' if native else 'no'}; "
            f"training in {precision}, LoRA (doctune's default targets), block {args.block} x "
            f"micro-batch {args.micro_batch}; torch {info['torch']}")
    print(head, flush=True)
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"(run it alone: other programs slow the steps down)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = args.work or Path(tmp)
        for i, key in enumerate(keys, 1):
            print(f"[{i}/{len(keys)}] {MODELS[key].hub}", flush=True)
            rows.extend(measure(key, MODELS[key], work, args, precision))
    print(f"\n{head}\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(table(rows))
    if args.json:
        result = {"machine": info, "native_bf16": native, "precision": precision, "block": args.block,
                  "micro_batch": args.micro_batch, "docs": str(args.docs), "models": rows}
        args.json.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
