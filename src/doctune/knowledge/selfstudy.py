"""Open-book self-study: the model answers its trained questions with the section in front
of it, and the answers that hold the expected answer become training targets.

A template's answer is terse ("`5173`"); asked the same question, a chat model answers in
its own words ("The dev server uses port 5173 unless you set `server.port`."). Given the
section in its prompt (the *open book* the evaluation measures), it often gets it right; an
answer is kept when the expected answer (or an alias) is in it and it stopped by itself,
the same check the evaluation's "answer in the reply" makes. Training on those answers
without the section (Cartridges' self-study, arXiv 2506.06266) teaches the fact in the
form the model will be asked for it, in its own voice, which pulls it less far from what it
was than a new answer style does.

Only trained questions are studied (held-out and control ones never are). The answers are
made once per run, before training, by the base model loaded for inference, into the run
folder (``selfstudy.jsonl``: ``id``, ``question``, ``answer``, ``expected``); a resumed run
reads them back. ``knowledge.self_study: true`` turns it on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_NEW_TOKENS = 64
"""Longest studied answer, in tokens."""


def study_answers(model: Any, tokenizer: Any, qa: Sequence[dict[str, Any]],
                  sections: dict[tuple[str, tuple[str, ...]], str], *,
                  system: str | None = None) -> list[dict[str, str]]:
    """``model``'s open-book answers to the trained questions of ``qa`` (synth lines) that
    hold their expected answer and stopped."""
    from doctune.knowledge.metrics import answer_in_reply
    from doctune.knowledge.questions import generated_items, open_book
    from doctune.knowledge.score import greedy_answers

    items, _ = generated_items([r for r in qa if r["split"] == "trained"], [], source=None)
    asked = [(i, p) for i in items if (p := open_book(i, sections)) is not None]
    gens = greedy_answers(model, tokenizer, [p for _, p in asked],
                          max_new_tokens=MAX_NEW_TOKENS, system=system)
    return [{"id": i.id, "question": i.question, "answer": g.text, "expected": i.golds[0]}
            for (i, _), g in zip(asked, gens, strict=True)
            if g.stopped and answer_in_reply(g.text, list(i.golds))
            and not answer_in_reply(i.question, list(i.golds))]  # not an echo of the question
