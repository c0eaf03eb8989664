"""Which model to start from: size, LoRA memory and CPU training speed of today's small models.

For each model of the table below it builds the model from its published ``config.json``
values (architecture, widths, layers, heads, KV heads, head size, MLP size, vocabulary, tied
embeddings, attention pattern), with random weights saved in bf16 as the hub checkpoints
are, and a byte-level BPE tokenizer that fits its vocabulary. It then LoRA-trains it with
doctune's own code, ``python -m doctune train`` in a child process (LoRA on doctune's
default targets, block 256, micro-batch 1, no evaluation, samples nor compile), and reports:

* parameters, counted on the built model and checked against the published size;
* peak memory: the RSS of the training process tree, sampled from outside every 50 ms;
* tokens/s: tokens per step over the median step time after the first (warm-up) step,
  from the run's ``metrics.jsonl`` (5 steps per model, 3 from 1B parameters on);
* doctune's memory planner (``doctune plan``) for the same job on this CPU, and on a 16 GB
  Apple-silicon Mac (MPS, bf16; budget: the planner's 70% of 16 GB).

Nothing is downloaded. Speed and memory depend on the model's shape, not on its weights,
so a random model of the real shape costs what the real one costs; the tokenizer changes
only how many windows the docs make, not what one 256-token step costs. (Not measured
here: the model's quality on your docs. That needs the real weights.)

    python benchmarks/bench_models.py                       # all ten: ~20 min on 2 idle cores
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import GPT2_TOKENIZER_FILES, REPO, machine_info, median, read_jsonl, run_watched

MAC_MEMORY_MB = 16 * 1024
BIG = 1e9
"""Models from this many parameters on train fewer steps by default (slow on a CPU)."""
STEPS_SMALL, STEPS_BIG = 5, 3
"""Default steps per run; the first is the warm-up, the rest are measured."""


@dataclass(frozen=True)
class Spec:
    """A model of the table: its hub id, license, published size and ``config.json`` values."""

    hub: str
    license: str
    published: float
    """Parameters as the model card gives them (the built model must be within 2%)."""
    config: dict[str, Any]


def _gemma3_layers(n: int) -> list[str]:
    """Gemma 3's attention pattern: five sliding-window layers, then one global, repeated."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
_GEMMA3 = {"model_type": "gemma3_text", "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
           "vocab_size": 262144, "tie_word_embeddings": True, "max_position_embeddings": 32768,
           "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
           "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"}

# Values of each model's config.json on the hub (the fields that set its shape and compute).
MODELS: dict[str, Spec] = {
    "smollm2-135m": Spec("HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0", 134.5e6, {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5}),
    "smollm2-360m": Spec("HuggingFaceTB/SmolLM2-360M-Instruct", "Apache-2.0", 361.8e6, {
        "model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
        "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49152,
        "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5}),
    "smollm2-1.7b": Spec("HuggingFaceTB/SmolLM2-1.7B-Instruct", "Apache-2.0", 1.71e9, {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
        "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64, "vocab_size": 49152,
        "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 130000.0,
        "rms_norm_eps": 1e-5}),
    "qwen2.5-0.5b": Spec("Qwen/Qwen2.5-0.5B-Instruct", "Apache-2.0", 0.49e9, {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "qwen2.5-1.5b": Spec("Qwen/Qwen2.5-1.5B-Instruct", "Apache-2.0", 1.54e9, {
        "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "qwen3-0.6b": Spec("Qwen/Qwen3-0.6B", "Apache-2.0", 0.6e9, {
        "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "qwen3-1.7b": Spec("Qwen/Qwen3-1.7B", "Apache-2.0", 1.7e9, {
        "model_type": "qwen3", "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "llama-3.2-1b": Spec("meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 Community License", 1.23e9, {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
        "tie_word_embeddings": True, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": _LLAMA3_ROPE, "rms_norm_eps": 1e-5}),
    "gemma-3-270m": Spec("google/gemma-3-270m-it", "Gemma Terms of Use", 268e6, {
        **_GEMMA3, "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
        "layer_types": _gemma3_layers(18)}),
    "gemma-3-1b": Spec("google/gemma-3-1b-it", "Gemma Terms of Use", 1.0e9, {
        **_GEMMA3, "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
        "layer_types": _gemma3_layers(26)}),
}


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


def build_model(spec: Spec, out: Path) -> int:
    """Save a random model of ``spec``'s shape (bf16, like the hub's) and a tokenizer; its parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    config = AutoConfig.for_model(**spec.config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    model.save_pretrained(out)
    del model
    gc.collect()
    save_tokenizer(spec.config["vocab_size"], out)
    return params


# ---------------------------------------------------------------------------
# one model: the planner's estimates, then a real run


def overrides(model_dir: Path, run_dir: Path, args: argparse.Namespace, steps: int, precision: str) -> list[str]:
    """The ``--set`` items of the LoRA job (the planner reads the same ones)."""
    return [f"data.path={args.docs}", f"data.block_size={args.block}", "data.val_fraction=0",
            f"model.name={model_dir}", "lora.enabled=true",
            f"train.output_dir={run_dir}", f"train.max_steps={steps}",
            f"train.micro_batch_size={args.micro_batch}", "train.grad_accum=1", "train.warmup_steps=0",
            f"train.precision={precision}", "train.device=cpu", "train.compile=off",
            "train.eval_every=0", "train.save_every=0", "train.sample_every=0", "train.sample_prompts=[]",
            "log.tensorboard=false", "log.progress=false", "log.report=false"]


def plan(sets: list[str]) -> dict[str, Any]:
    """``doctune plan``'s peak for the job: on this CPU, and on a 16 GB Mac (MPS, bf16)."""
    from doctune.config import load_config
    from doctune.plan import SAFE_SHARE, default_budget_mb, estimate_for_shape, model_shape

    cfg = load_config(None, sets)
    shape = model_shape(cfg)
    here = estimate_for_shape(shape, cfg, device="cpu", budget=default_budget_mb(cfg, "cpu"))
    mac_cfg = load_config(None, [*sets, "train.precision=bf16", "train.device=mps"])
    mac_budget = SAFE_SHARE["mps"] * MAC_MEMORY_MB
    mac = estimate_for_shape(shape, mac_cfg, device="mps", budget=mac_budget)
    return {"cpu_peak_mb": round(here.peak_mb), "mac16_peak_mb": round(mac.peak_mb),
            "mac16_budget_mb": round(mac_budget), "mac16_fits": mac.fits,
            "lora_params": shape.lora_params, "mac16_breakdown": mac.to_dict()["breakdown"]}


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

    cmd = [sys.executable, "-m", "doctune", "train"]
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


def measure(key: str, spec: Spec, work: Path, args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """Build, plan and train one model; its row of the table."""
    model_dir, run_dir = work / "models" / key, work / "runs" / key
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    if (model_dir / "config.json").is_file():
        from transformers import AutoConfig

        params = _count_params(AutoConfig.from_pretrained(model_dir))
    else:
        params = build_model(spec, model_dir)
    match = abs(params / spec.published - 1) <= 0.02
    print(f"  built: {params:,} parameters ({'matches' if match else 'does NOT match'} the published "
          f"{_size(spec.published)}) in {time.perf_counter() - t0:.0f} s", flush=True)
    steps = args.steps or (STEPS_BIG if params >= BIG else STEPS_SMALL)
    sets = overrides(model_dir, run_dir, args, steps, precision)
    row: dict[str, Any] = {"model": spec.hub.split("/")[1], "hub": spec.hub, "license": spec.license,
                           "params": params, "published_params": spec.published, "params_match": match,
                           "steps": steps, "config": spec.config, "plan": plan(sets)}
    print(f"  planner: {row['plan']['cpu_peak_mb']:,} MB on this CPU, {row['plan']['mac16_peak_mb']:,} MB "
          f"on a 16 GB Mac; training {steps} steps...", flush=True)
    try:
        row.update(train(sets, run_dir, steps))
    except RuntimeError as e:
        row["error"] = str(e)
        print(f"  FAILED: {e}", flush=True)
    if args.work is None:
        shutil.rmtree(model_dir, ignore_errors=True)  # up to 3.4 GB each
    return row


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
    """The Markdown table of the README."""
    out = ["| model | params | license | LoRA peak RSS (measured) | tokens/s (measured) | "
           "planner: this CPU | planner: 16 GB Mac (MPS, bf16) |",
           "|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        p = r["plan"]
        mac = f"{p['mac16_peak_mb'] / 1024:.1f} GB ({'fits' if p['mac16_fits'] else 'does not fit'})"
        if "error" in r:
            rss = speed = "failed"
        else:
            rss, speed = f"{r['peak_rss_mb'] / 1024:.1f} GB", f"{r['tokens_per_s']:.0f}"
        out.append(f"| {r['model']} | {_size(r['params'])} | {r['license']} | {rss} | {speed} | "
                   f"{p['cpu_peak_mb'] / 1024:.1f} GB | {mac} |")
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
            rows.append(measure(key, MODELS[key], work, args, precision))
            if "error" not in rows[-1]:
                r = rows[-1]
                print(f"  {r['tokens_per_s']:.0f} tokens/s, peak RSS {r['peak_rss_mb']:,} MB "
                      f"({r['wall_s']:.0f} s)", flush=True)
    print(f"\n{head}\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(table(rows))
    if args.json:
        result = {"machine": info, "native_bf16": native, "precision": precision, "block": args.block,
                  "micro_batch": args.micro_batch, "docs": str(args.docs), "models": rows}
        args.json.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
