"""Replay that is not the evaluation's text: the base model's own answers to general prompts
(and, for self-study, its open-book answers to the trained questions: one model load).

Fine-tuning on a few pages pulls a model away from what it could do before. Training on
some general text at the same time holds it back (``knowledge.replay_share``); but when the
replayed text is the book that general perplexity is measured on, the measure flatters the
replaying run. With ``knowledge.replay_source: self`` (the default) the replayed examples are
the base model's answers, in its chat template, to the general prompts shipped with
doctune (``general/prompts.txt``: everyday questions and writing tasks, nothing about any
docs): they pull the tuned model towards the base's own behaviour (self-distillation), and
general-English perplexity stays a measure of forgetting for every recipe.

The answers are *sampled* from the base (``knowledge.replay_temperature: 1``), one fresh
answer for each replayed window (the prompts asked again in turn). Trained on, samples are in
expectation the cross-entropy to the base's own distribution, whose gradient vanishes at the
base: they only pull back. Greedy answers (temperature 0) teach the base's single most
likely continuation, over and over: that sharpens the model, and its loss on other text
rises with the replay share (``benchmarks/check_replay.py`` measures both).

A chat model is also a model of plain text, and general-English perplexity is taken on plain
text, as the docs' pages are trained. ``knowledge.replay_plain_share`` (default 0) makes that
share of the replayed windows the base's own plain text: it writes on from an opening shipped
with doctune (``general/openings.txt``: "The old harbour was quiet in the early morning,
and"), sampled the same way, and the continuation is trained as text (rows ``"kind":
"text"``). Measured on the study recipe (``benchmarks/bench_knowledge.py``), half of a 5%
replay as plain text forgot as much as answers alone, and half of a 20% replay a little less
than answers alone, for more steps: it stays off unless asked for.

The answers are made once per run, before training, for as many prompts as the mix replays
(a few pages of docs replay a few dozen answers: no need to wait for all of them), with the
base model loaded for inference on the training device, and kept in the run folder (``replay.jsonl``: prompt,
answer, stopped), which a resumed run reads back. An answer that does not stop within
:data:`MAX_NEW_TOKENS` tokens is kept as far as it went (``stopped: false``) and trained
without an end of turn: a small model rambles past that length on most open prompts, and
those first tokens are as much its own behaviour as a short answer is. An empty answer is
left out.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

MAX_NEW_TOKENS = 96
"""Longest replayed answer, in tokens."""
GENERATE_BATCH = 32
"""Prompts answered at once (left-padded): the answers run to about the same length. On a
2-core CPU 55 answers took 33 s in batches of 16, 26 s in batches of 32 or 64 (a step's
cost is mostly per step, not per row); 32 keeps the cache of a 3-8B model's batch small."""
FILE = "replay.jsonl"
"""The answers, in the run folder."""


def _lines(name: str) -> list[str]:
    text = (resources.files("doctune.knowledge") / "general" / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def general_prompts() -> list[str]:
    """The shipped general prompts, one per line."""
    return _lines("prompts.txt")


def general_openings() -> list[str]:
    """The shipped openings of plain English texts, one per line (the base writes on)."""
    return _lines("openings.txt")


def _shipped(plain: bool) -> list[str]:
    return general_openings() if plain else general_prompts()


def read_answers(path: Path) -> list[dict[str, Any]]:
    """The ``{prompt, answer[, stopped]}`` lines of a replay file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def base_answers(model: Any, tokenizer: Any, prompts: list[str], *,
                 system: str | None = None, temperature: float = 0.0,
                 plain: bool = False) -> list[dict[str, Any]]:
    """``model``'s answers to ``prompts`` (greedy at ``temperature`` 0, else sampled) that
    are not empty, each with whether it stopped within :data:`MAX_NEW_TOKENS` tokens;
    ``plain``: the prompts are openings of plain texts the model writes on (no chat
    template), each row marked ``"kind": "text"``."""
    from doctune.knowledge.score import generate_answers

    gens = generate_answers(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS,
                            system=system, batch_size=GENERATE_BATCH, temperature=temperature,
                            plain=plain)
    kind = {"kind": "text"} if plain else {}
    return [{**kind, "prompt": p, "answer": g.text, "stopped": g.stopped}
            for p, g in zip(prompts, gens, strict=True) if g.text.strip()]


def prompts_for(windows: int, *, sampled: bool = False, plain: bool = False) -> int:
    """How many general prompts (``plain``: openings) to answer for ``windows`` replayed
    windows: none for none, else that many and a quarter more (an empty or too long answer
    is left out); greedy answers (the same for a prompt asked twice) at most all of them,
    sampled ones as many as that (the prompts asked again in turn: each window a fresh
    answer)."""
    if windows <= 0:
        return 0
    want = windows + max(4, windows // 4)
    return want if sampled else min(len(_shipped(plain)), want)


def split_windows(windows: int, plain_share: float) -> tuple[int, int]:
    """(answers, continuations): how many of ``windows`` replayed windows are the base's
    answers to general prompts and how many its plain-text continuations of openings."""
    plain = round(windows * plain_share)
    return windows - plain, plain


def asked(count: int | None, *, plain: bool = False) -> list[str]:
    """The first ``count`` general prompts (``plain``: openings), the list taken again from
    the start as often as needed (None: each once)."""
    prompts = _shipped(plain)
    if count is None:
        return prompts
    return [prompts[k % len(prompts)] for k in range(count)]


def make_answers(model_name: str, tokenizer: Any, *, device: str, system: str | None = None,
                 replay: Path | None = None, study: tuple[Any, Path] | None = None,
                 prompts: int | None = None, openings: int = 0, temperature: float = 0.0,
                 seed: int = 0) -> None:
    """Load the base ``model_name`` once for inference on ``device`` and write what it
    answers (atomically): to ``prompts`` general prompts (:func:`asked`) and, as plain text,
    from ``openings`` openings, greedy or sampled at ``temperature`` with torch's generator
    seeded by ``seed`` (the same answers for the same seed and machine), into ``replay``,
    and, for ``study`` = (synth data, file), its
    open-book answers to the trained questions
    (:func:`doctune.knowledge.selfstudy.study_answers`)."""
    import torch

    from doctune.device import empty_cache
    from doctune.inference import load_for_inference

    loaded = load_for_inference(model_name, device=device)
    where = loaded.device
    try:
        if replay is not None:
            devices = [where] if where.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                rows = base_answers(loaded.model, tokenizer, asked(prompts), system=system,
                                    temperature=temperature) if prompts != 0 else []
                if openings:
                    rows += base_answers(loaded.model, tokenizer, asked(openings, plain=True),
                                         temperature=temperature, plain=True)
                _write(replay, rows)
        if study is not None:
            from doctune.knowledge.questions import section_texts
            from doctune.knowledge.selfstudy import study_answers

            synth, out = study
            _write(out, study_answers(loaded.model, tokenizer, synth.qa,
                                      section_texts(synth.folder), system=system))
    finally:
        del loaded
        empty_cache(where)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    from doctune.atomic import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
