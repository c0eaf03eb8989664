"""Study notes written by a teacher model: amplification from a model instead of templates
(``doctune synth DOCS --amplify N --amplify-with teacher --teacher-url URL --teacher-model M``).

Active Reading (arXiv 2508.09494) has a model study each document with several learning
strategies and trains on what it writes; EntiGraph (Yang et al., ICLR 2025) relates a
document's entities in new passages; SEAL (arXiv 2506.10943) trains on a passage's
implications. Here each section of a trained document is studied with the strategies of
:data:`STRATEGIES`, one note per section a round: in round ``r`` the ``i``-th section gets
strategy ``(r + i) mod 5``, so every round mixes the strategies (a small budget that ends in
the first round is not all explanations) and every 5 rounds give each section each strategy
once. Rounds go on (from the sixth on, asked again with another seed) until the kept notes
hold ``factor`` x the trained documents' tokens, or :data:`MAX_PASSES` x 5 rounds are done.

Nothing held out leaks: control documents are never sent; in a trained document the
sentences of held-out facts are cut out of a section before the teacher reads it, and a note
that still holds one of their sentences, or a held-out fact's subject with its answer
(:func:`~doctune.knowledge.amplify.leaks`), is dropped. A note is kept when it has
at least :data:`MIN_WORDS` words and at least :data:`NAMES_FOUND` of the code names it
writes in backticks are in the section it read: a teacher that invents option names is not
trained on, and when every default it states for an option of the section is the one the
section gives (:func:`defaults_agree`): a teacher that swaps two values is not either. Each
kept note becomes an ``amplified.jsonl`` line (generator ``teacher``,
template ``teacher.<strategy>``, ``fact_ids``: the trained facts of its section whose answer
the note holds).

Cache: one JSON file per (section text read, teacher model, :data:`NOTES_VERSION`, strategy,
round) under ``cache_dir``, written atomically as each note comes back, so an interrupted run
loses nothing and a larger ``--amplify`` later asks only for the notes it adds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctune.atomic import write_json
from doctune.knowledge.facts import Fact
from doctune.knowledge.metrics import normalize_answer
from doctune.knowledge.sections import Section
from doctune.knowledge.split import unit_hash
from doctune.knowledge.teacher import (
    TeacherConfig,
    _retryable,
    _scrub,
    api_key,
    make_cache_dir,
    open_client,
    retry_wait,
)

NOTES_VERSION = "1"
"""Part of every cache key: changed when the prompts change (a note's strategy and round are
in the key already)."""
SYSTEM_PROMPT = ("You study software documentation and write study notes about it. You only "
                 "use what the text you are given says.")
USER_PROMPT = """Documentation page `{doc}`, section "{title}":

<section>
{text}
</section>

{task}
Write every option name, flag, value and default exactly as the section does, in backticks.
Write the notes only, with no introduction."""

STRATEGIES: tuple[tuple[str, str, str], ...] = (
    ("explain", "the section explained in the teacher's own words",
     "Explain this section to a developer who is new to it: what each setting or feature is "
     "for, its default, and when one would change it."),
    ("questions", "questions a developer could ask, each with its answer from the section",
     "Write five questions a developer could ask that this section answers, each on a line "
     "starting with `Q:` and its answer on the next line starting with `A:`. Ask some by name "
     "(what does X do?) and some by purpose (which option do I set to ...?)."),
    ("implications", "what follows from the section: what setting or leaving out each thing does",
     "List what follows from this section, one point per line: what happens when each setting "
     "is set, what happens when it is left out, and how the settings relate to each other."),
    ("flashcards", "one line per thing the section names: what it is, does and defaults to",
     "Write flashcards, one per line, in the form `term`: what it is, what it does, its "
     "default. One card for everything the section names."),
    ("scenarios", "situations where a developer needs the section, and what they would set",
     "Describe two short situations in which a developer needs what this section describes, "
     "and what they would write or set in each."),
)
"""(name, what it makes, the task given to the teacher); section ``i`` of round ``r`` gets
strategy ``(r + i) mod 5``."""
MAX_PASSES = 4
"""Passes over the strategies at most (a later pass asks again with another seed)."""
MIN_WORDS = 20
"""Shortest note kept, in words."""
MIN_SECTION_WORDS = 8
"""Shortest section studied (as the teacher reads it, heading included), in words: an
option's heading, default and one sentence."""
NAMES_FOUND = 0.8
LITERALS = frozenset({"true", "false", "null", "none", "undefined", "nil"})
"""Backticked words that name nothing: a note may set a switch to `false` that its section
only shows as `true`."""
MAX_TOKENS = 600
"""Longest note asked for, in the teacher's tokens."""
_CODE = re.compile(r"`([^`\n]+)`")
_CLAUSE = re.compile(r"\n|;\s|\.\s+(?=[A-Z*`-])")
_DEFAULT_WORD = re.compile(r"\bdefault(s|ed)?\b", re.IGNORECASE)
_BY_DEFAULT = re.compile(r"\W*(?:is\s+)?(?:by|as(?:\s+the|\s+its)?|the|its)\s+default\b",
                         re.IGNORECASE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


@dataclass(frozen=True)
class Note:
    """One note asked for: a section (as the teacher reads it), a strategy, a round."""

    section: Section
    shown: str
    """The section's text with held-out sentences cut out: what the teacher reads."""
    strategy: int
    round: int

    @property
    def name(self) -> str:
        return STRATEGIES[self.strategy][0]

    def key(self, model: str) -> str:
        raw = "\0".join((hashlib.sha256(self.shown.encode("utf-8")).hexdigest(), model,
                         NOTES_VERSION, self.name, str(self.round)))
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def shown_text(section: Section, hidden: Sequence[str]) -> str:
    """``section``'s text without the sentences in ``hidden`` (held-out facts' sentences)."""
    text = section.text
    for sentence in hidden:
        text = text.replace(sentence, "")
    return text


def names_supported(note: str, section_text: str) -> bool:
    """Whether at least :data:`NAMES_FOUND` of the distinct backticked names of ``note`` are
    in ``section_text`` (compared with white space collapsed and case folded; the
    :data:`LITERALS` left out); a note that names nothing in backticks passes."""
    names = {" ".join(n.split()).casefold() for n in _CODE.findall(note)} - LITERALS
    names.discard("")
    if not names:
        return True
    section = " ".join(section_text.split()).casefold()
    return sum(n in section for n in names) >= NAMES_FOUND * len(names)


def _value_key(value: str) -> str:
    """``value`` compared as a default: white space and case ignored, one quote style, the
    quotes around a lone string dropped (`'dist'` is `"dist"` is `dist`)."""
    v = "".join(value.split()).casefold().replace('"', "'")
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] == "'" else v


def _agrees(stated: str, default: str) -> bool:
    """Whether a value a note states can be ``default``: the same value, or one holding the
    other (`4096` for `4096` bytes, a long list quoted in part)."""
    a, b = _value_key(stated), _value_key(default)
    return a == b or (min(len(a), len(b)) >= 3 and (a in b or b in a))


def defaults_agree(note: str, facts: Sequence[Fact], section: str = "") -> bool:
    """Whether every default ``note`` states for an option of ``facts`` (a section's
    ``config`` default facts) is that option's default, or one ``section`` (its text) states.

    Read clause by clause (a line or a sentence): a clause that names exactly one option with
    a known default in backticks and says *default* states the first backticked value after
    that word which names nothing (no option, no identifier of ``facts``), or the last one
    before a "by default" ("`x` is `true` by default"). A clause that also says the
    option's default ("defaults to `5173`; set `3000` to move it") is not judged. It
    contradicts the section when that value neither is nor holds the option's default and
    the section never states it as a default of that option (a conditional one: "If you
    specify `build.lib`, `build.cssCodeSplit` will be `false` as default"): "if it is not
    set, `ssr.resolve.conditions` defaults to `['module', 'browser']`" for a section whose
    default is `['module', 'node']`. A clause naming two options ("`a` has the same default
    as `b`") or none is not judged."""
    defaults = {_value_key(f.subject): f.answer for f in facts
                if f.kind == "config" and f.relation == "default"}
    if not defaults:
        return True
    names = set(defaults) | {_value_key(f.answer) for f in facts if f.kind == "code"}
    also = {(option, _value_key(v)) for option, v, _ in _claims(section, defaults, names)}
    for option, stated, clause in _claims(note, defaults, names):
        default = defaults[option]
        if (_value_key(default) not in _value_key(clause) and not _agrees(stated, default)
                and (option, _value_key(stated)) not in also):
            return False
    return True


def _claims(text: str, defaults: dict[str, str],
            names: set[str]) -> list[tuple[str, str, str]]:
    """(option, the value stated as its default, the clause) for each clause of ``text``
    that states one (see :func:`defaults_agree`)."""
    short = {k.rsplit(".", 1)[-1]: k for k in defaults}  # `outDir` for `build.outDir`
    out = []
    for clause in _CLAUSE.split(text):
        parts = re.split(r"(`[^`\n]+`)", clause)  # odd positions: code spans
        spans = [(i, parts[i][1:-1], _value_key(parts[i][1:-1])) for i in range(1, len(parts), 2)]
        options = {short.get(k, k) for _, _, k in spans
                   if k in defaults or (k in short and short[k] in defaults)}
        said = next((i for i in range(0, len(parts), 2) if _DEFAULT_WORD.search(parts[i])), None)
        if len(options) != 1 or said is None:
            continue
        values = [(i, v) for i, v, k in spans if k not in names and k not in short]
        after = [v for i, v in values if i > said]
        before = [v for i, v in values if i < said] if _BY_DEFAULT.match(parts[said]) else []
        stated = after[0] if after else (before[-1] if before else None)
        if stated is not None:
            out.append((options.pop(), stated, clause))
    return out


def clean_note(content: str) -> str:
    """The note of a reply: a reasoning model's ``<think>`` part and an outer code fence
    removed."""
    text = _THINK.sub("", content).strip()
    fence = re.fullmatch(r"```[a-z]*\n(.*)\n```", text, re.DOTALL)
    return (fence.group(1) if fence else text).strip()


class NoteWriter:
    """Asks a teacher for notes, with retries and the cache (``client``: an
    ``openai.OpenAI``, built from the config when omitted)."""

    def __init__(self, config: TeacherConfig, cache_dir: Path, *, client: Any = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        import time

        config.check()
        self.config = config
        self.cache_dir = Path(cache_dir)
        self._sleep = sleep or time.sleep
        self._key = api_key(config)
        self._client = client if client is not None else open_client(config, self._key)
        make_cache_dir(self.cache_dir)

    def write(self, note: Note) -> tuple[str | None, bool, str | None]:
        """(the note's text or None, whether it came from the cache, the error if none)."""
        path = self.cache_dir / f"{note.key(self.config.model)}.json"
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["text"]), True, None
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent, torn or edited by hand: ask again
        error = None
        for attempt in range(self.config.max_attempts):
            if attempt:
                self._sleep(retry_wait(self.config, attempt))
            try:
                text = clean_note(self._complete(note))
            except Exception as e:
                error = _scrub(f"{note.section.doc}: {type(e).__name__}: {e}", self._key)
                if not _retryable(e):
                    return None, False, error
                continue
            write_json(path, {"model": self.config.model, "notes_version": NOTES_VERSION,
                              "doc": note.section.doc, "section": list(note.section.path),
                              "strategy": note.name, "round": note.round, "text": text})
            return text, False, None
        return None, False, error

    def _complete(self, note: Note) -> str:
        sec = note.section
        prompt = USER_PROMPT.format(doc=sec.doc, title=" > ".join(sec.path) or sec.doc,
                                    text=note.shown, task=STRATEGIES[note.strategy][2])
        kwargs: dict[str, Any] = {}
        if note.round >= len(STRATEGIES):  # a later pass: the same task, another draw
            kwargs["seed"] = note.round
        reply = self._client.chat.completions.create(
            model=self.config.model, temperature=0.7, max_tokens=MAX_TOKENS,
            messages=[{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": prompt}], **kwargs)
        return str(reply.choices[0].message.content or "")


def _plan(sections: Sequence[Section], facts: Sequence[Fact],
          splits: dict[str, str]) -> list[tuple[Section, str, list[Fact]]]:
    """(section, the text the teacher reads, the section's trained facts) per section."""
    hidden: dict[str, list[str]] = {}
    trained: dict[tuple[str, tuple[str, ...]], list[Fact]] = {}
    for f in facts:
        if splits.get(f.id, "trained") == "trained":
            trained.setdefault((f.doc, f.section), []).append(f)
        else:
            hidden.setdefault(f.doc, []).append(f.sentence)
    return [(s, shown_text(s, hidden.get(s.doc, [])), trained.get((s.doc, s.path), []))
            for s in sections]


def teacher_notes(config: TeacherConfig, sections: Sequence[Section], facts: Sequence[Fact],
                  splits: dict[str, str], *, source_tokens: int, factor: float,
                  cache_dir: Path, seed: int = 0, client: Any = None,
                  sleep: Callable[[float], None] | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  ) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """``amplified.jsonl`` lines of the teacher's notes on ``sections`` (those of trained
    documents; :data:`MIN_SECTION_WORDS`+ words) up to about ``factor x source_tokens``
    tokens; what was made; the errors of notes that failed after every attempt. ``seed`` orders the sections within
    each round. ``progress(tokens, budget)``."""
    from doctune.knowledge.amplify import _leaks, count_tokens, leaks

    writer = NoteWriter(config, cache_dir, client=client, sleep=sleep)
    plan = [p for p in _plan(sections, facts, splits) if len(p[1].split()) >= MIN_SECTION_WORDS]
    forbidden = _leaks(facts, splits)
    budget = factor * source_tokens
    # each round takes the sections in its own seeded order, so a budget that ends inside
    # a round leaves out sections from every page, not the last pages
    def order(r: int) -> list[tuple[Section, str, list[Fact]]]:
        return sorted(plan, key=lambda p: unit_hash(f"notes:{r}:{p[0].doc}:{p[0].start}", seed))

    index = {(sec.doc, sec.start): i for i, (sec, _, _) in enumerate(plan)}
    asks = [Note(sec, shown, (r + index[sec.doc, sec.start]) % len(STRATEGIES), r)
            for r in range(MAX_PASSES * len(STRATEGIES)) for sec, shown, _ in order(r)]
    trained = {(sec.doc, sec.path): fs for sec, _, fs in plan}
    rows: list[dict[str, Any]] = []
    counts = {"asked": 0, "cached": 0, "failed": 0, "dropped_leaks": 0, "dropped_unsupported": 0,
              "dropped_wrong_default": 0}
    errors: list[str] = []
    total, seen, width = 0, set(), max(1, config.max_workers)
    studied: set[tuple[str, int]] = set()
    with ThreadPoolExecutor(max_workers=width) as pool:
        for start in range(0, len(asks), width):
            if total >= budget:
                break
            batch = asks[start:start + width]
            for note, (text, cached, error) in zip(batch, pool.map(writer.write, batch),
                                                   strict=True):
                counts["cached" if cached else "asked"] += 1
                if text is None:
                    counts["failed"] += 1
                    errors.append(f"teacher gave no note for a section of {error}")
                    continue
                if leaks(text, forbidden):
                    counts["dropped_leaks"] += 1
                    continue
                if len(text.split()) < MIN_WORDS or not names_supported(text, note.shown):
                    counts["dropped_unsupported"] += 1
                    continue
                if not defaults_agree(text, trained[(note.section.doc, note.section.path)],
                                      note.shown):
                    counts["dropped_wrong_default"] += 1
                    continue
                if text in seen or total >= budget:
                    continue
                seen.add(text)
                norm = normalize_answer(text)
                held = [f.id for f in trained[(note.section.doc, note.section.path)]
                        if normalize_answer(f.answer) and normalize_answer(f.answer) in norm]
                rows.append(_row(text, note, held, count_tokens(text)))
                studied.add((note.section.doc, note.section.start))
                total += count_tokens(text)
            if progress:
                progress(min(int(total), int(budget)), int(budget))
    by = {name: {"makes": makes, "examples": sum(r["template"] == f"teacher.{name}" for r in rows),
                 "tokens": sum(r["tokens"] for r in rows if r["template"] == f"teacher.{name}")}
          for name, makes, _ in STRATEGIES}
    info = {"asked": factor, "source_tokens": source_tokens, "tokens": total,
            "achieved": round(total / source_tokens, 3) if source_tokens else 0.0,
            "examples": len(rows), "exhausted": total < budget,
            "dropped_leaks": counts["dropped_leaks"], "token_count":
            "words and punctuation marks (no tokenizer)",
            "generators": {"teacher": {"makes": "study notes written by the teacher model "
                                                "(one per section and strategy)",
                                       "examples": len(rows), "tokens": total}},
            "teacher": {"model": config.model, "sections": len(plan),
                        "sections_studied": len(studied),
                        **counts,
                        "strategies": by}}
    return rows, info, errors


def _row(text: str, note: Note, fact_ids: list[str], tokens: int) -> dict[str, Any]:
    """The ``amplified.jsonl`` line of a note (``fact_ids``: its section's trained facts
    whose answer it holds; a note may hold none and still study the section)."""
    return {"id": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], "text": text,
            "generator": "teacher", "template": f"teacher.{note.name}", "fact_ids": fact_ids,
            "split": "trained", "doc": note.section.doc, "section": list(note.section.path),
            "tokens": tokens}
