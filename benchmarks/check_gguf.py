"""GGUF export against llama.cpp itself: next-token logits and greedy text, HF vs GGUF.

Exports a model with `doctune export --format gguf` (f16 and q8_0), loads each file with
llama.cpp's Python binding (llama-cpp-python), and on the same token ids compares the
logits llama.cpp computes with those of the transformers model in fp32; then compares
greedy generation token by token.

    python benchmarks/check_gguf.py                       # trains small demo runs first
    python benchmarks/check_gguf.py --family llama qwen2  # only some of the demo families
    python benchmarks/check_gguf.py runs/mydocs           # any run folder, model folder, adapter
    python benchmarks/check_gguf.py --json out.json       # also write the numbers as JSON

Without a source, it trains small demo models on `examples/docs` for a hundred-odd steps,
fully, and a LoRA adapter on top of some, so both export paths (full and merged LoRA)
meet llama.cpp. The families (`--family`):

* gpt2: `scratch:tiny` (the GPT-2 preset, its own GPT-2 style BPE tokenizer), + LoRA;
* llama: a Llama 3 shaped model (GQA, untied output, llama3 RoPE scaling) with a
  tokenizer trained here on the Llama 3 split regex (`llama-bpe`), + LoRA;
* smollm: a SmolLM shaped Llama (tied embeddings) with a SmolLM style tokenizer (`smollm`);
* qwen2: a Qwen2.5 shaped model (q/k/v biases, tied) with a Qwen2 style tokenizer (`qwen2`).

The Llama-family models start from random weights built from a config (nothing is
downloaded) and are trained by doctune from their folder like any local model.

Needs `pip install llama-cpp-python` (it compiles llama.cpp; a dev-only check) and the
`[gguf]` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "To install the package, run",
    "## Configuration\n\nThe configuration file",
    "Components can be imported from",
    "The reducer returns a new state object",
    "Python 3.11 isn't required; we've tested 2024 builds.\n\n    def",  # digits, 's, indents
]
FAMILIES = ("gpt2", "llama", "smollm", "qwen2")
LIMITS = {"f16": 0.05, "q8_0": 0.5}
"""Largest acceptable |logit difference|: f16 weights round at ~1e-3 relative, Q8_0 at ~1e-2."""


def train_demo(work: Path, *, steps: int, model: str = "scratch:tiny", name: str = "full",
               lora_from: Path | None = None) -> Path:
    """A short doctune run on examples/docs (full fine-tune of ``model``, or LoRA on ``lora_from``)."""
    from doctune.config import load_config
    from doctune.train.loop import train

    name = f"{name}-lora" if lora_from else name
    extra: dict[str, Any] = {
        "data.path": str(ROOT / "examples" / "docs"), "train.output_dir": str(work / name),
        "model.name": str(lora_from / "final") if lora_from else model,
        "lora.enabled": lora_from is not None, "train.max_steps": steps,
    }
    overrides = ["data.block_size=128", "data.overlap=16", "train.micro_batch_size=8",
                 "train.grad_accum=1", "train.lr=2e-3", "train.warmup_steps=10",
                 "train.eval_every=0", "train.save_every=0", "train.precision=fp32",
                 "log.tensorboard=false", "log.progress=false"]
    if lora_from:
        overrides += ["lora.r=8", "lora.alpha=32", "train.lr=5e-3"]
    t0 = time.perf_counter()
    result = train(load_config(None, overrides, extra), quiet=True)
    print(f"trained {name} demo run in {time.perf_counter() - t0:.0f} s: {result.run_dir}")
    return Path(result.run_dir)


def demo_tokenizer(pre: str, vocab_size: int = 4096) -> Any:
    """A byte-level BPE trained on examples/docs with the pre-tokenizer llama.cpp calls ``pre``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from doctune.export.gguf_vocab import LLAMA3_REGEX, QWEN2_REGEX

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    steps = {"smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)]),
             "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), "isolated"), byte_level]),
             "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), "isolated"), byte_level])}
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))  # as Llama 3's tokenizer.json
    tok.pre_tokenizer = steps[pre]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples" / "docs").rglob("*.md*"))]
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def demo_model_dir(work: Path, family: str) -> Path:
    """A randomly initialised ``family`` model (tiny, from a config) saved with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    pre = {"llama": "llama-bpe", "smollm": "smollm", "qwen2": "qwen2"}[family]
    tok = demo_tokenizer(pre)
    shape = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                 max_position_embeddings=256, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    if family == "llama":  # Llama 3.2 in small: GQA, untied, llama3 RoPE scaling
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        model: Any = LlamaForCausalLM(LlamaConfig(**shape, num_attention_heads=4, num_key_value_heads=2,
                                                  rope_parameters=rope, rms_norm_eps=1e-5))
    elif family == "smollm":  # SmolLM2 in small: tied, 3 query heads per KV head
        model = LlamaForCausalLM(LlamaConfig(**(shape | {"hidden_size": 192}), num_attention_heads=6,
                                             num_key_value_heads=2, tie_word_embeddings=True, rope_theta=100000.0))
    else:  # Qwen2.5 in small: q/k/v biases, tied
        model = Qwen2ForCausalLM(Qwen2Config(**shape, num_attention_heads=4, num_key_value_heads=2,
                                             tie_word_embeddings=True, rope_theta=1000000.0))
    out = work / f"{family}-init"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def demo_sources(work: Path, families: list[str], steps: int) -> list[Path]:
    """Train the demo runs of ``families``; LoRA on top for gpt2 and llama."""
    sources = []
    for family in families:
        model = "scratch:tiny" if family == "gpt2" else str(demo_model_dir(work, family))
        full = train_demo(work, steps=steps, model=model, name=family)
        sources.append(full)
        if family in ("gpt2", "llama"):
            sources.append(train_demo(work, steps=max(20, steps // 5), name=family, lora_from=full))
    return sources


def hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()  # (T, V)


def hf_greedy(model: Any, ids: list[int], n: int, eos: int | None) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=eos, eos_token_id=eos)
    return [int(t) for t in out[0, len(ids):]]


def llama_greedy(llm: Any, ids: list[int], n: int, eos: int | None) -> list[int]:
    llm.reset()
    out: list[int] = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        out.append(int(tok))
        if len(out) == n or tok == eos:
            break
    return out


def check_file(gguf_path: Path, hf: Any, prompts: list[str], n_new: int) -> dict[str, Any]:
    """Compare one GGUF file with the transformers model ``hf`` (a Loaded) on ``prompts``."""
    import llama_cpp

    tok, model = hf.tokenizer, hf.model
    eos = tok.eos_token_id
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0)
    rows = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        same_tokens = llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
        ref = hf_logits(model, ids)
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        diff = np.abs(got - ref)
        a, b = hf_greedy(model, ids, n_new, eos), llama_greedy(llm, ids, n_new, eos)
        agree = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        rows.append({"prompt": prompt, "tokens": len(ids), "same_tokenization": same_tokens,
                     "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                     "logit_range": float(ref.max() - ref.min()),
                     "top1_agree": float((got.argmax(-1) == ref.argmax(-1)).mean()),
                     "greedy_hf": tok.decode(a), "greedy_llama": tok.decode(b),
                     "greedy_agree_tokens": agree, "greedy_tokens": len(a),
                     "greedy_equal": a == b})
    del llm
    return {"file": str(gguf_path), "size_mb": gguf_path.stat().st_size / 1e6, "prompts": rows,
            "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            "greedy_equal": all(r["greedy_equal"] for r in rows),
            "same_tokenization": all(r["same_tokenization"] for r in rows)}


def check_source(source: Path, work: Path, quants: list[str], prompts: list[str], n_new: int) -> dict[str, Any]:
    from doctune.export.gguf import export_gguf
    from doctune.export.gguf_vocab import pre_tokenizer_name
    from doctune.export.merge import load_merged
    from doctune.inference import resolve_source

    hf = load_merged(resolve_source(source))
    out: dict[str, Any] = {"source": str(source), "lora": hf.source.lora, "arch": hf.model.config.model_type,
                           "pre": pre_tokenizer_name(hf.tokenizer), "quants": {}}
    for quant in quants:
        exported = export_gguf(source, work / f"{source.name}-{quant}", quant=quant, force=True)
        gguf_file = next(p for p in exported.files if p.suffix == ".gguf")
        out["quants"][quant] = check_file(gguf_file, hf, prompts, n_new)
    return out


def report(result: dict[str, Any]) -> bool:
    """Print one source's numbers; True when every limit holds."""
    ok = True
    kind = "LoRA merged" if result["lora"] else "full model"
    print(f"\n{result['source']} ({result['arch']}, tokenizer.ggml.pre {result['pre']!r}, {kind})")
    for quant, r in result["quants"].items():
        limit = LIMITS.get(quant, 0.05)
        passed = r["max_abs_diff"] < limit and r["same_tokenization"] and (quant != "f16" or r["greedy_equal"])
        ok &= passed
        print(f"  {quant:5s} {r['size_mb']:7.1f} MB  max |logit diff| {r['max_abs_diff']:.2e} "
              f"(limit {limit:g})  greedy equal: {r['greedy_equal']}  same tokens: "
              f"{r['same_tokenization']}  {'OK' if passed else 'FAIL'}")
        for p in r["prompts"]:
            print(f"        {p['prompt'][:32]!r:36s} T={p['tokens']:3d} max {p['max_abs_diff']:.2e} "
                  f"mean {p['mean_abs_diff']:.1e} range {p['logit_range']:5.1f} top1 "
                  f"{p['top1_agree']:.0%} greedy {p['greedy_agree_tokens']}/{p['greedy_tokens']}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", type=Path, help="Runs or model folders (default: demo runs).")
    parser.add_argument("--quant", nargs="+", default=["f16", "q8_0"], choices=["f16", "q8_0", "f32"])
    parser.add_argument("--family", nargs="+", default=list(FAMILIES), choices=FAMILIES,
                        help="Demo models to train when no source is given (default: all).")
    parser.add_argument("--steps", type=int, default=120, help="Steps of the demo runs.")
    parser.add_argument("--new-tokens", type=int, default=24, help="Greedy tokens compared per prompt.")
    parser.add_argument("--json", type=Path, help="Also write the numbers to this file.")
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("needs llama-cpp-python: pip install llama-cpp-python", file=sys.stderr)
        return 2
    print(f"llama-cpp-python {llama_cpp.__version__}")
    with tempfile.TemporaryDirectory(prefix="doctune-gguf-") as tmp:
        work = Path(tmp)
        sources = list(args.sources)
        if not sources:
            sources = demo_sources(work, args.family, args.steps)
        results = [check_source(s, work, args.quant, PROMPTS, args.new_tokens) for s in sources]
        ok = all([report(r) for r in results])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
