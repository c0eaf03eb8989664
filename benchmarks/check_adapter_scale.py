"""What forgetting and knowledge do along the line from the base to a tuned adapter.

``knowledge.forgetting_budget`` keeps the largest share ``s`` of a LoRA adapter whose
general-text perplexity stays within the budget (:mod:`doctune.train.forgetting`). This
check shows the trade it makes on a run the knowledge benchmark trained: the adapter of
``--work``/runs/RUN/final scaled by each of ``--scales``, and at each scale

- the knowledge benchmark's scores (hand-written and generated questions, multiple choice
  and the expected answer in the reply, general-English perplexity on the evaluation's part
  of the shipped book, the control page's perplexity);
- the perplexity the run's own fit measures (the book's dev part, never trained, never
  scored), to see that it moves as the evaluation's does.

    python benchmarks/bench_knowledge.py --recipes study --amplify 5 --work W   # trains "study 5x"
    python benchmarks/check_adapter_scale.py --work W --run "study 5x" --scales 1,0.85,0.7,0.5

A run that already scaled its adapter (``run.json``: ``adapter_scale``) is measured from
that scale: 1 is then the adapter as it was saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_knowledge as bk

KEYS = ("hand_mc_acc", "hand_contains", "hand_em", "heldout_mc_acc", "heldout_contains",
        "general_ppl", "heldout_doc_ppl")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="bench_knowledge.py's --work folder")
    p.add_argument("--run", default="study 5x", help="the run's name under --work/runs")
    p.add_argument("--scales", default="1,0.85,0.7,0.5")
    p.add_argument("--corpus", type=Path, default=bk.CORPUS)
    args = p.parse_args()

    from doctune.inference import load_for_inference
    from doctune.knowledge.exam import control_texts, text_perplexity
    from doctune.knowledge.mix import general_text, load_synth
    from doctune.train.forgetting import DEV_TOKENS, lora_b_params, scale_adapter

    run = args.work / "runs" / args.run
    facts = json.loads((run / "run.json").read_text(encoding="utf-8"))
    synth = load_synth(Path(facts["knowledge"]["synth_dir"]))
    mode = dict(bk.MODES["full"])
    mode["dev_facts"] = facts.get("final_choice", {}).get("dev_facts", [])
    texts = control_texts(synth, args.corpus, exclude=())
    loaded = load_for_inference(run, device="cpu")
    model = loaded.model.eval()
    params = lora_b_params(model)
    trained = [w.detach().clone() for w in params]
    rows = []
    for scale in (float(x) for x in args.scales.split(",") if x.strip()):
        scale_adapter(params, trained, scale)
        t0 = time.perf_counter()
        dev = text_perplexity(model, loaded.tokenizer, [general_text("dev")],
                              block_size=mode["block_size"], max_tokens=DEV_TOKENS)
        got = bk.score(model, loaded.tokenizer, synth, texts, mode)
        row = {"scale": scale, "dev_general_ppl": dev, **{k: got.get(k) for k in KEYS}}
        rows.append(row)
        print(json.dumps({**row, "s": round(time.perf_counter() - t0)}), flush=True)
    print(f"\n{args.run} ({run}), adapter scaled by s:")
    print("| s | hand MC | hand in reply | hand exact | generated MC | generated in reply | "
          "general ppl (scored) | general ppl (dev part, the fit's) | control-page ppl |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scale']:g} | {bk.fmt(r['hand_mc_acc'])} | {bk.fmt(r['hand_contains'])} | "
              f"{bk.fmt(r['hand_em'])} | {bk.fmt(r['heldout_mc_acc'])} | "
              f"{bk.fmt(r['heldout_contains'])} | {bk.fmt(r['general_ppl'], '.1f')} | "
              f"{bk.fmt(r['dev_general_ppl'], '.1f')} | {bk.fmt(r['heldout_doc_ppl'], '.1f')} |")


if __name__ == "__main__":
    main()
