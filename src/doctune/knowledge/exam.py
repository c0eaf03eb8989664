"""The knowledge exam: base vs tuned on questions about the docs, no judge model
(``doctune eval --knowledge``).

For a model and a synth folder (:mod:`doctune.knowledge.synth`) :func:`score_model` gives:

- ``trained_em`` / ``trained_f1``: greedy answers to questions that were trained on;
- ``heldout_em`` / ``heldout_f1``: questions about facts of trained documents whose
  questions were never trained (knowledge learnt from reading);
- ``heldout_mc_acc`` (and ``control_mc_acc``): multiple choice by the log-likelihood of
  each option (the true answer against answers of other facts of the same kind), with
  ``mc_chance`` what guessing scores;
- ``heldout_doc_ppl``: perplexity on the control documents, which training never saw
  (None without control documents);
- ``general_ppl``: perplexity on the held-back 20% of the shipped general English text
  (:func:`doctune.knowledge.mix.general_text`): forgetting shows as a rise;
- ``stop_rate``: the share of greedy answers that ended with the end-of-turn token.

Accuracies come with their 95% Wilson interval (``*_ci``) and their item count (``*_n``).
Every prompt is rendered with the chat template exactly as training renders it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from doctune.knowledge.chat import render_document
from doctune.knowledge.metrics import Accuracy
from doctune.knowledge.mix import SynthData, general_text, load_synth
from doctune.knowledge.score import score_mc, score_qa

MAX_QUESTIONS = 200
"""Questions (and multiple-choice items) scored per split at most: a seeded-order prefix."""
KEYS = ("heldout_mc_acc", "heldout_em", "trained_em", "heldout_doc_ppl", "general_ppl",
        "stop_rate")
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


def score_model(model: Any, tokenizer: Any, synth: SynthData, *, control_texts: Sequence[str],
                block_size: int, max_questions: int = MAX_QUESTIONS,
                system: str | None = None, max_new_tokens: int = 32,
                max_text_tokens: int | None = None) -> dict[str, Any]:
    """The knowledge numbers of one model (see the module docstring for the keys);
    ``max_text_tokens`` caps the tokens per text of the perplexities (for a quick look)."""
    out: dict[str, Any] = {}
    stopped: list[bool] = []
    for split in ("trained", "heldout"):
        qa = sorted(synth.questions(split), key=lambda q: q["id"])[:max_questions]
        if qa:
            s = score_qa(model, tokenizer, [q["question"] for q in qa],
                         [q["answer"] for q in qa], system=system,
                         max_new_tokens=max_new_tokens)
            out.update(_acc(f"{split}_em", s.exact_match))
            out[f"{split}_f1"] = s.f1
            stopped += [g.stopped for g in s.generations]
        else:
            out.update({f"{split}_em": None, f"{split}_f1": None, f"{split}_em_n": 0})
    for split in ("heldout", "control"):
        mc = sorted((m for m in synth.mc if m["split"] == split), key=lambda m: m["id"])
        mc = mc[:max_questions]
        if mc:
            s_mc = score_mc(model, tokenizer, [m["question"] for m in mc],
                            [m["options"] for m in mc], [m["answer_index"] for m in mc],
                            system=system)
            out.update(_acc(f"{split}_mc_acc", s_mc.accuracy))
            out[f"{split}_mc_chance"] = s_mc.chance
        else:
            out.update({f"{split}_mc_acc": None, f"{split}_mc_n": 0})
    out["heldout_doc_ppl"] = text_perplexity(model, tokenizer, control_texts,
                                             block_size=block_size, max_tokens=max_text_tokens)
    out["general_ppl"] = text_perplexity(model, tokenizer, [general_text("eval")],
                                         block_size=block_size, max_tokens=max_text_tokens)
    out["stop_rate"] = sum(stopped) / len(stopped) if stopped else None
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


def evaluate_run(run_dir: str | Path, *, device: str = "auto", synth_dir: Path | None = None,
                 max_questions: int = MAX_QUESTIONS) -> dict[str, Any]:
    """Base vs tuned knowledge numbers of a run folder: ``{"base", "tuned", "change", ...}``.

    The synth folder is the run's (``knowledge.synth_dir``, or ``knowledge/`` of a
    ``knowledge.auto`` run) unless ``synth_dir`` is given. Both models are scored with
    the tuned model's tokenizer (a base without the chat tokens training added gets them,
    untrained)."""
    from doctune.errors import DataError
    from doctune.inference import load_for_inference
    from doctune.rundir import RunDir

    run = RunDir.open(run_dir)
    cfg = run.config()
    folder = synth_dir or cfg.knowledge.synth_dir or (
        run.knowledge_dir if run.knowledge_dir.is_dir() else None)
    if folder is None:
        raise DataError(f"{run.path} was trained without knowledge data; pass a synth folder "
                        "with `--synth DIR` (written by `doctune synth DOCS --out DIR`).")
    synth = load_synth(Path(folder))
    tuned = load_for_inference(run.path, device=device)
    texts = control_texts(synth, cfg.data.path, dialect=cfg.data.dialect,
                          exclude=cfg.data.exclude)

    def score(model: Any) -> dict[str, Any]:
        return score_model(model, tuned.tokenizer, synth, control_texts=texts,
                           block_size=cfg.data.block_size, max_questions=max_questions,
                           system=cfg.knowledge.system_prompt)

    scores = {"tuned": score(tuned.model)}
    if tuned.source.lora:
        with tuned.model.disable_adapter():
            scores["base"] = score(tuned.model)
    else:
        scores["base"] = score(_base_model(run, tuned))
    return {"run": str(run.path), "synth_dir": str(synth.folder),
            "control_docs": synth.control_docs, "base": scores["base"],
            "tuned": scores["tuned"], "change": compare(scores["base"], scores["tuned"])}


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


ROWS = (
    ("held-out questions, exact match", "heldout_em", "acc"),
    ("held-out questions, token F1", "heldout_f1", "acc"),
    ("held-out multiple choice", "heldout_mc_acc", "acc"),
    ("control-doc multiple choice", "control_mc_acc", "acc"),
    ("trained questions, exact match", "trained_em", "acc"),
    ("trained questions, token F1", "trained_f1", "acc"),
    ("answers that stop (end of turn)", "stop_rate", "acc"),
    ("held-out document perplexity", "heldout_doc_ppl", "ppl"),
    ("general English perplexity", "general_ppl", "ppl"),
)
"""(label, key, kind) of each line of the comparison, in order."""


def _cell(scores: dict[str, Any], key: str, kind: str) -> str:
    value = scores.get(key)
    if value is None:
        return "-"
    if kind == "ppl":
        return f"{value:,.2f}"
    ci = scores.get(f"{key}_ci")
    n = scores.get(f"{key}_n")
    return f"{100 * value:.1f}%" + (f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}] n={n}" if ci else "")


def comparison_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, base, tuned, change) per line: accuracies with their 95% Wilson interval."""
    rows = []
    for label, key, kind in ROWS:
        b, t = result["base"].get(key), result["tuned"].get(key)
        if b is None and t is None:
            continue
        if b is None or t is None:
            change = "-"
        elif kind == "ppl":
            change = f"{100 * (t / b - 1):+.1f}%"
        else:
            change = f"{100 * (t - b):+.1f} pts"
        if key.endswith("mc_acc") and result["base"].get(key.replace("_acc", "_chance")):
            label += f" (chance {100 * result['base'][key.replace('_acc', '_chance')]:.0f}%)"
        rows.append((label, _cell(result["base"], key, kind), _cell(result["tuned"], key, kind),
                     change))
    return rows


def knowledge_table(result: dict[str, Any]) -> Any:
    """A rich table of :func:`comparison_rows`."""
    from rich.table import Table

    table = Table(title=f"knowledge: {result['run']}")
    for col in ("", "base", "tuned", "change"):
        table.add_column(col, justify="left" if not col else "right")
    for row in comparison_rows(result):
        table.add_row(*row)
    return table
