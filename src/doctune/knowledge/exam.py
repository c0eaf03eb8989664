"""The knowledge exam: base vs tuned on questions about the docs, no judge model
(``doctune eval --knowledge``).

For a model and a synth folder (:mod:`doctune.knowledge.synth`) :func:`score_model` gives:

- ``trained_em`` / ``trained_f1``: greedy answers to questions that were trained on;
- ``heldout_em`` / ``heldout_f1`` / ``heldout_contains`` (the answer in the reply):
  questions about facts of trained documents whose questions were never trained, in
  phrasings never trained (:mod:`~doctune.knowledge.natural`; a synth folder without
  natural questions: all its questions), knowledge learnt from reading;
- ``heldout_mc_acc`` (and ``control_mc_acc``): multiple choice by the log-likelihood of
  each option (the true answer against answers of other facts of the same kind and
  split), with ``mc_chance`` what guessing scores;
- ``heldout_template_em`` / ``heldout_template_mc_acc``: the same for the sentence-with-a-
  blank questions of :mod:`~doctune.knowledge.templates`, for comparison;
- ``hand_*`` / ``hand_control_*``: the questions of a question file (written by hand,
  :mod:`~doctune.knowledge.questions`) about trained and control pages;
- ``heldout_doc_ppl``: perplexity on the control documents, which training never saw
  (None without control documents);
- ``general_ppl``: perplexity on the held-back 20% of the shipped general English text
  (:func:`doctune.knowledge.mix.general_text`): forgetting shows as a rise;
- ``stop_rate``: the share of greedy answers that ended with the end-of-turn token.

Accuracies come with their 95% Wilson interval (``*_ci``) and their item count (``*_n``).
:func:`evaluate_run` adds the *open book* (the base with each question's section in its
prompt: what reading gives at best) and :func:`gap_closed`, the share of the base -> open
book gap that training closed; the table is :mod:`~doctune.knowledge.exam_table`.
Every prompt is rendered with the chat template exactly as training renders it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from doctune.knowledge.chat import render_document
from doctune.knowledge.metrics import (
    Accuracy,
    accuracy,
    answer_in_reply,
    exact_match,
    token_f1,
)
from doctune.knowledge.mix import SynthData, general_text, load_synth
from doctune.knowledge.questions import Item, generated_items, open_book
from doctune.knowledge.score import score_mc, score_qa

MAX_QUESTIONS = 200
"""Questions (and multiple-choice items) scored per split at most: a seeded-order prefix."""
KEYS = ("heldout_mc_acc", "heldout_em", "heldout_contains", "trained_em", "hand_mc_acc",
        "hand_em", "hand_contains", "heldout_doc_ppl", "general_ppl", "stop_rate")
"""The headline numbers, in the order tables show them."""


def text_perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, block_size: int,
                    batch_size: int = 4, max_tokens: int | None = None) -> float | None:
    """Perplexity of ``texts``, each cut into consecutive windows of ``block_size`` tokens
    (every token predicted once; the first of each window without context), over the first
    ``max_tokens`` tokens of each text when given. None for no text."""
    import torch

    windows: list[list[int]] = []
    for text in texts:
        ids = render_document(tokenizer, text).input_ids[:max_tokens]
        windows += [ids[k:k + block_size] for k in range(0, len(ids), block_size)
                    if len(ids[k:k + block_size]) > 1]
    if not windows:
        return None
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for b in range(0, len(windows), batch_size):
        rows = windows[b:b + batch_size]
        width = max(len(r) for r in rows)
        batch = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        with torch.no_grad():
            logits = model(input_ids=batch, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V): position t predicts t+1
        picked = logp.gather(-1, batch[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
        total -= float(picked.sum())
        count += int(mask[:, 1:].sum())
    return math.exp(total / count)


def _acc(prefix: str, acc: Accuracy) -> dict[str, Any]:
    return {prefix: acc.value, f"{prefix}_ci": [acc.low, acc.high], f"{prefix}_n": acc.total}


def _prompts(items: Sequence[Item], sections: dict[Any, str] | None
             ) -> tuple[list[Item], list[str]]:
    """The items that can be asked and their prompts: closed book (``sections`` None), or
    with their section before them (items whose section is unknown are left out)."""
    if sections is None:
        return list(items), [i.question for i in items]
    asked = [(i, open_book(i, sections)) for i in items]
    kept = [(i, p) for i, p in asked if p is not None]
    return [i for i, _ in kept], [p for _, p in kept]


def _qa(model: Any, tokenizer: Any, items: Sequence[Item], prefix: str, *, set_name: str,
        sections: dict[Any, str] | None, records: list[dict[str, Any]] | None,
        **kwargs: Any) -> tuple[dict[str, Any], list[bool]]:
    """Exact match, F1 and answer-in-reply of greedy answers to ``items`` as ``prefix_*``
    keys, and whether each answer stopped; one record per item appended to ``records``."""
    items, prompts = _prompts(items, sections)
    if not items:
        return {prefix + "_em": None, prefix + "_f1": None, prefix + "_em_n": 0}, []
    s = score_qa(model, tokenizer, prompts, [list(i.golds) for i in items], **kwargs)
    # an answer the question itself holds ("which wins, A or B?") counts only when exact:
    # an echo of the question is not an answer
    inside = [exact_match(g.text, list(i.golds)) if answer_in_reply(i.question, list(i.golds))
              else answer_in_reply(g.text, list(i.golds))
              for g, i in zip(s.generations, items, strict=True)]
    out = {**_acc(prefix + "_em", s.exact_match), prefix + "_f1": s.f1,
           **_acc(prefix + "_contains", accuracy([x == 1.0 for x in inside]))}
    for i, g, hit in zip(items, s.generations, inside, strict=True):
        if records is not None:
            records.append({"set": set_name, "split": i.split, "id": i.id,
                            "question": i.question, "expected": i.golds[0], "answer": g.text,
                            "exact": exact_match(g.text, list(i.golds)),
                            "f1": round(token_f1(g.text, list(i.golds)), 4), "contains": hit,
                            "doc": i.doc, **i.meta})
    return out, [g.stopped for g in s.generations]


def _mc(model: Any, tokenizer: Any, items: Sequence[Item], prefix: str, *,
        sections: dict[Any, str] | None, system: str | None) -> dict[str, Any]:
    items, prompts = _prompts([i for i in items if i.options], sections)
    if not items:
        return {prefix + "_mc_acc": None, prefix + "_mc_n": 0}
    s = score_mc(model, tokenizer, prompts, [list(i.options) for i in items],
                 [i.answer_index for i in items], system=system)
    return {**_acc(prefix + "_mc_acc", s.accuracy), prefix + "_mc_chance": s.chance}


def _split(items: Sequence[Item], split: str, limit: int) -> list[Item]:
    return sorted((i for i in items if i.split == split), key=lambda i: i.id)[:limit]


def score_model(model: Any, tokenizer: Any, synth: SynthData, *, control_texts: Sequence[str],
                block_size: int, max_questions: int = MAX_QUESTIONS,
                system: str | None = None, max_new_tokens: int = 32,
                max_text_tokens: int | None = None, handwritten: Sequence[Item] = (),
                sections: dict[Any, str] | None = None,
                records: list[dict[str, Any]] | None = None,
                templates: bool = True, leave_out: Sequence[str] = (),
                max_trained: int | None = None) -> dict[str, Any]:
    """The knowledge numbers of one model (see the module docstring for the keys);
    ``max_text_tokens`` caps the tokens per text of the perplexities (for a quick look);
    ``templates=False`` leaves out the sentence-with-a-blank comparison (``*_template_*``).

    ``handwritten``: items of a question file, scored as ``hand_*`` (trained pages) and
    ``hand_control_*``. ``sections``: open book, each question with its section before it
    (no perplexities). ``records`` gets one line per question answered. ``leave_out``: facts
    whose questions are not asked (the dev split that chose the run's final step).
    ``max_trained``: fewer generated questions of trained facts than ``max_questions`` (they
    check that training took; the held-out ones measure what it is for)."""
    out: dict[str, Any] = {}
    stopped: list[bool] = []
    natural = any(q.get("source") == "natural" for q in synth.qa)
    dev = set(leave_out)
    qa_rows = [r for r in synth.qa if r.get("fact_id") not in dev]
    mc_rows = [r for r in synth.mc if r.get("fact_id") not in dev]
    sets = [("", *generated_items(qa_rows, mc_rows, source="natural" if natural else None))]
    if natural and sections is None and templates:  # sentence-with-a-blank, for comparison
        sets.append(("template_", *generated_items(qa_rows, mc_rows, source="template")))
    kw = {"system": system, "max_new_tokens": max_new_tokens}
    for tag, qa, mc in sets:
        for split in ("trained", "heldout"):
            limit = max_trained if split == "trained" and max_trained is not None else \
                max_questions
            got, stops = _qa(model, tokenizer, _split(qa, split, limit),
                             split + "_" + tag.rstrip("_") if tag else split,
                             set_name="generated" if not tag else "template",
                             sections=sections, records=records if not tag else None, **kw)
            out.update(got)
            stopped += stops if not tag else []
        for split in ("heldout", "control"):
            out.update(_mc(model, tokenizer, _split(mc, split, max_questions),
                           split + ("_" + tag.rstrip("_") if tag else ""),
                           sections=sections, system=system))
    for split, prefix in (("trained", "hand"), ("control", "hand_control")):
        items = _split(handwritten, split, max_questions)
        if items:
            got, _ = _qa(model, tokenizer, items, prefix, set_name="handwritten",
                         sections=sections, records=records, **kw)
            out.update(got)
            out.update(_mc(model, tokenizer, items, prefix, sections=sections, system=system))
    out["stop_rate"] = sum(stopped) / len(stopped) if stopped else None
    if sections is None:
        out["heldout_doc_ppl"] = text_perplexity(model, tokenizer, control_texts,
                                                 block_size=block_size,
                                                 max_tokens=max_text_tokens)
        out["general_ppl"] = text_perplexity(model, tokenizer, [general_text("eval")],
                                             block_size=block_size, max_tokens=max_text_tokens)
    return out


def control_texts(synth: SynthData, docs_dir: Path | None, *, dialect: str = "auto",
                  exclude: Sequence[str] = ()) -> list[str]:
    """The cleaned text of the synth folder's control documents (empty when there are none
    or the docs folder is not on this machine)."""
    from doctune.knowledge.mix import control_excludes
    from doctune.knowledge.synth import cleaned_docs

    if not synth.control_docs or docs_dir is None or not Path(docs_dir).exists():
        return []
    texts, _, _ = cleaned_docs(Path(docs_dir), control_excludes(synth.control_docs),
                               exclude, dialect)
    return [t for _, t in texts]


GAP_KEYS = ("heldout_em", "heldout_f1", "heldout_contains", "heldout_mc_acc", "hand_em",
            "hand_f1", "hand_contains", "hand_mc_acc")
"""Scores whose base -> open-book gap :func:`gap_closed` measures."""


def compare(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """Changes from base to tuned of the headline numbers (points for accuracies, percent
    for perplexities)."""
    out: dict[str, Any] = {}
    for k in KEYS:
        b, t = base.get(k), tuned.get(k)
        if b is None or t is None:
            out[k] = None
        elif k.endswith("_ppl"):
            out[k] = 100 * (t / b - 1)
        else:
            out[k] = 100 * (t - b)
    return out


def gap_closed(base: dict[str, Any], open_book: dict[str, Any],
               tuned: dict[str, Any]) -> dict[str, float | None]:
    """Per score of :data:`GAP_KEYS`: (tuned - base) / (open book - base), the share of what
    reading the section in the prompt gives that training gave without it (1.0: all of it;
    None where the open book does not beat the base, so there is no gap to close)."""
    out: dict[str, float | None] = {}
    for k in GAP_KEYS:
        b, o, t = base.get(k), open_book.get(k), tuned.get(k)
        out[k] = (t - b) / (o - b) if b is not None and o is not None and t is not None \
            and o > b else None
    return out


def merge_answers(base: list[dict[str, Any]], open_book: list[dict[str, Any]],
                  tuned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per question: the question, expected answer and each model's answer with
    ``*_right`` (the answer in the reply) and ``*_exact``; base order."""
    def key(r: dict[str, Any]) -> tuple[str, str]:
        return r["set"], r["id"]

    others = {"open_book": {key(r): r for r in open_book}, "tuned": {key(r): r for r in tuned}}
    rows = []
    for r in base:
        row = {k: v for k, v in r.items() if k not in ("answer", "exact", "f1", "contains")}
        for name, got in (("base", r), *((n, m.get(key(r))) for n, m in others.items())):
            if got is not None:
                row.update({f"{name}_answer": got["answer"], f"{name}_right": bool(got["contains"]),
                            f"{name}_exact": bool(got["exact"]), f"{name}_f1": got["f1"]})
        rows.append(row)
    return rows


def evaluate_run(run_dir: str | Path, *, device: str = "auto", synth_dir: Path | None = None,
                 max_questions: int = MAX_QUESTIONS,
                 questions: Path | None = None, templates: bool = True,
                 max_trained: int | None = None, loaded: Any = None) -> dict[str, Any]:
    """Base vs tuned knowledge numbers of a run folder: ``{"base", "open_book", "tuned",
    "change", "gap_closed", "answers", ...}``; ``answers`` holds one line per question
    (:func:`merge_answers`).

    The synth folder is the run's (``knowledge.synth_dir``, or ``knowledge/`` of a
    ``knowledge.auto`` run) unless ``synth_dir`` is given. ``questions``: a question file
    (:mod:`~doctune.knowledge.questions`) scored beside the generated questions. The open
    book is the base with each question's section in its prompt. Both models are scored with
    the tuned model's tokenizer (a base without the chat tokens training added gets them,
    untrained). ``templates=False``: without the sentence-with-a-blank comparison (the end
    of a run leaves it to ``doctune eval --knowledge``); ``max_trained``: as
    :func:`score_model`'s. ``loaded``: the run's final model already in memory (a
    :class:`~doctune.inference.Loaded`; the end of a run passes the model it trained), used
    instead of loading ``final/`` again."""
    from doctune.errors import DataError
    from doctune.inference import load_for_inference
    from doctune.knowledge.questions import file_items, load_question_file, section_texts
    from doctune.rundir import RunDir

    run = RunDir.open(run_dir)
    cfg = run.config()
    folder = synth_dir or cfg.knowledge.synth_dir or (
        run.knowledge_dir if run.knowledge_dir.is_dir() else None)
    if folder is None:
        raise DataError(f"{run.path} was trained without knowledge data; pass a synth folder "
                        "with `--synth DIR` (written by `doctune synth DOCS --out DIR`).")
    synth = load_synth(Path(folder))
    hand = [] if questions is None else file_items(
        load_question_file(questions), docs=synth.manifest.get("docs", []),
        control_docs=synth.control_docs, seed=cfg.data.seed)
    tuned = loaded if loaded is not None else load_for_inference(run.path, device=device)
    texts = control_texts(synth, cfg.data.path, dialect=cfg.data.dialect,
                          exclude=cfg.data.exclude)
    records: dict[str, list[dict[str, Any]]] = {"base": [], "open_book": [], "tuned": []}
    # the dev facts chose the final step: they are not test questions
    dev = (run.facts.final_choice or {}).get("dev_facts", []) if synth_dir is None else []

    def score(model: Any, name: str, sections: Any = None) -> dict[str, Any]:
        return score_model(model, tuned.tokenizer, synth, control_texts=texts,
                           block_size=cfg.data.block_size, max_questions=max_questions,
                           system=cfg.knowledge.system_prompt, handwritten=hand,
                           sections=sections, records=records[name], templates=templates,
                           leave_out=dev, max_trained=max_trained)

    scores = {"tuned": score(tuned.model, "tuned")}
    sections = section_texts(synth.folder)
    with contextlib.ExitStack() as stack:
        if tuned.source.lora:
            stack.enter_context(tuned.model.disable_adapter())
            base = tuned.model
        else:
            base = _base_model(run, tuned)
        scores["base"] = score(base, "base")
        scores["open_book"] = score(base, "open_book", sections) if sections else {}
    return {"run": str(run.path), "synth_dir": str(synth.folder), "dev_facts_left_out": len(dev),
            "questions": None if questions is None else str(questions),
            "control_docs": synth.control_docs, "base": scores["base"],
            "open_book": scores["open_book"], "tuned": scores["tuned"],
            "change": compare(scores["base"], scores["tuned"]),
            "gap_closed": gap_closed(scores["base"], scores["open_book"], scores["tuned"]),
            "answers": merge_answers(records["base"], records["open_book"], records["tuned"])}


def save_result(run: Any, result: dict[str, Any]) -> None:
    """``knowledge_eval.json`` (the numbers) and ``knowledge_answers.jsonl`` (one line per
    question) into the run folder."""
    import json

    from doctune.atomic import write_text

    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.get("answers", []))
    write_text(run.knowledge_answers_file, lines)
    run.write_knowledge_eval({k: v for k, v in result.items() if k != "answers"})


def _base_model(run: Any, tuned: Any) -> Any:
    """The run's base model on the tuned model's device, sized to its tokenizer."""
    from doctune.knowledge.chat import added_chat_tokens
    from doctune.modeling import load_pretrained

    m = run.config().model
    model: Any = load_pretrained(run.base_model(), revision=m.revision,
                            trust_remote_code=m.trust_remote_code)
    n_vocab = model.get_input_embeddings().num_embeddings
    if added_chat_tokens(tuned.tokenizer, n_vocab):
        model.resize_token_embeddings(len(tuned.tokenizer), mean_resizing=False)
    model.to(device=tuned.device, dtype=tuned.dtype)
    return model.eval()
