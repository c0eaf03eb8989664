"""Question/answer pairs, rephrasings and multiple-choice items from templates over facts.

Everything here is deterministic: which phrasing a fact gets, which distractors a
multiple-choice item draws and where the true answer sits depend only on the fact ids and
the seed (:func:`doctune.knowledge.split.unit_hash`).

``qa.jsonl`` (:meth:`QAPair.to_dict`): ``id`` (16 hex digits of question + answer +
source), ``question``, ``answer`` (for a template pair: the fact's verbatim answer),
``fact_id`` (``""`` for a teacher pair, which belongs to a section), ``split``
(``trained``/``heldout``/``control``), ``doc``, ``section`` (heading path), ``source``
(``"template"`` or ``"teacher"``) and ``template`` (the template's name, or the teacher
model).

``rephrasings.jsonl`` (:meth:`Rephrasing.to_dict`): ``id``, ``text`` (a restatement to
train on like document text), ``fact_id`` (``""`` for a teacher rephrasing of a whole
section), ``split``, ``doc``, ``section``, ``source``, ``template``.

``mc.jsonl`` (:meth:`MCItem.to_dict`): ``id``, ``question``, ``options`` (the true answer
and up to 3 distractors: answers of other facts of the same kind and split),
``answer_index``, ``num_options``, ``chance`` (``1 / num_options``), ``fact_id``, ``kind``,
``split``, ``doc``, ``section``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from doctune.knowledge.facts import Fact
from doctune.knowledge.metrics import normalize_answer
from doctune.knowledge.split import unit_hash

# Each kind's question phrasings. Fields: subject, relation, answer, cloze, topic (the
# section path, "A > B"), sentence.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "code": (
        "In the docs on {topic}, which name completes this sentence? {cloze}",
        "Fill in the blank with the right identifier ({topic}): {cloze}",
        "{cloze}\nWhich identifier goes in the blank? (from \"{topic}\")",
    ),
    "flag": (
        "Which command-line flag completes this sentence from the docs on {topic}? {cloze}",
        "Fill in the missing command-line flag ({topic}): {cloze}",
        "{cloze}\nWhat flag goes in the blank? (from \"{topic}\")",
    ),
    "config": (
        "What is the default value of `{subject}`?",
        "If you do not set `{subject}`, what value does it take?",
        "What does `{subject}` default to?",
    ),
    "number": (
        "In the docs on {topic}, what quantity completes this sentence? {cloze}",
        "Fill in the number and its unit ({topic}): {cloze}",
        "{cloze}\nWhat number and unit go in the blank? (from \"{topic}\")",
    ),
    "table": (
        "In the table in \"{topic}\", what is the {relation} of {subject}?",
        "According to the docs on {topic}, what {relation} does {subject} have?",
        "{subject} ({topic}): what is its {relation}?",
    ),
    "definition": (
        "Which term do the docs on {topic} define as: \"{subject}\"?",
        "What is the name of this, according to \"{topic}\"? {subject}",
        "Name the term ({topic}): {subject}",
    ),
    "heading": (
        "What does the section \"{subject}\" of the docs say first?",
        "In one sentence, how do the docs open the section \"{subject}\"?",
        "Quote the first sentence of the docs section \"{subject}\".",
    ),
}

# Restatements of a fact, to train on like document text.
REPHRASINGS: dict[str, tuple[str, ...]] = {
    "config": (
        "The default value of `{subject}` is {answer}.",
        "`{subject}` defaults to {answer}.",
        "If you do not set `{subject}`, it is {answer}.",
    ),
    "table": (
        "In the docs on {topic}, the {relation} of {subject} is {answer}.",
        "{subject} has the {relation} {answer} ({topic}).",
    ),
    "definition": (
        "{answer}: {subject}",
        "In the docs on {topic}, {answer} means: {subject}",
    ),
}
_SENTENCE_REPHRASINGS = (
    "From the docs on {topic}: {sentence}",
    "{topic}. {sentence}",
    "As the section \"{topic}\" puts it: {sentence}",
)


def _id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:16]


def _fields(fact: Fact) -> dict[str, str]:
    topic = " > ".join(fact.section) or fact.doc
    return {"subject": fact.subject, "relation": fact.relation, "answer": fact.answer,
            "cloze": fact.cloze, "topic": topic, "sentence": fact.sentence}


def _rotation(n: int, key: str, seed: int) -> list[int]:
    """0..n-1 rotated by a hash of ``key``: which phrasings a fact gets, in order."""
    first = int(unit_hash(key, seed) * n)
    return [(first + k) % n for k in range(n)]


@dataclass(frozen=True)
class QAPair:
    """One question with its short answer (see the module docstring for the fields)."""

    question: str
    answer: str
    fact_id: str
    split: str
    doc: str
    section: tuple[str, ...]
    source: str = "template"
    template: str = ""

    @property
    def id(self) -> str:
        """16 hex digits of question, answer and source."""
        return _id(self.question, self.answer, self.source, self.doc)

    def to_dict(self) -> dict[str, Any]:
        """The ``qa.jsonl`` line."""
        return {"id": self.id, "question": self.question, "answer": self.answer,
                "fact_id": self.fact_id, "split": self.split, "doc": self.doc,
                "section": list(self.section), "source": self.source,
                "template": self.template}


@dataclass(frozen=True)
class Rephrasing:
    """A restatement of a fact (or a section) to train on like document text."""

    text: str
    fact_id: str
    split: str
    doc: str
    section: tuple[str, ...]
    source: str = "template"
    template: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``rephrasings.jsonl`` line."""
        return {"id": _id(self.text, self.doc, self.source), "text": self.text,
                "fact_id": self.fact_id, "split": self.split, "doc": self.doc,
                "section": list(self.section), "source": self.source,
                "template": self.template}


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question: the true answer among same-kind distractors."""

    question: str
    options: tuple[str, ...]
    answer_index: int
    fact: Fact
    split: str

    @property
    def chance(self) -> float:
        """The accuracy of guessing: 1 / number of options."""
        return 1.0 / len(self.options)

    def to_dict(self) -> dict[str, Any]:
        """The ``mc.jsonl`` line."""
        return {"id": _id(self.question, *self.options), "question": self.question,
                "options": list(self.options), "answer_index": self.answer_index,
                "num_options": len(self.options), "chance": self.chance,
                "fact_id": self.fact.id, "kind": self.fact.kind, "split": self.split,
                "doc": self.fact.doc, "section": list(self.fact.section)}


def questions_for(fact: Fact, split: str, *, seed: int, per_fact: int = 2) -> list[QAPair]:
    """``per_fact`` questions about ``fact``, in different phrasings (at most one per
    template), chosen by the fact id and ``seed``."""
    templates = QUESTIONS[fact.kind]
    fields = _fields(fact)
    return [QAPair(templates[k].format(**fields), fact.answer, fact.id, split, fact.doc,
                   fact.section, "template", f"{fact.kind}.q{k}")
            for k in _rotation(len(templates), "q:" + fact.id, seed)[:per_fact]]


def rephrasings_for(fact: Fact, split: str, *, seed: int, per_fact: int = 2) -> list[Rephrasing]:
    """``per_fact`` restatements of ``fact``: of the relation where the kind has its own
    phrasings (config, table, definition), else of the fact's sentence in its section."""
    templates = REPHRASINGS.get(fact.kind, _SENTENCE_REPHRASINGS)
    name = fact.kind if fact.kind in REPHRASINGS else "sentence"
    fields = _fields(fact)
    return [Rephrasing(templates[k].format(**fields), fact.id, split, fact.doc, fact.section,
                       "template", f"{name}.r{k}")
            for k in _rotation(len(templates), "r:" + fact.id, seed)[:per_fact]]


def _distractors(fact: Fact, pools: Sequence[Sequence[Fact]], seed: int, limit: int,
                 max_looks: int = 200) -> list[str]:
    """Up to ``limit`` answers from ``pools`` (in order of preference), each pool walked
    from a seeded start, skipping answers that normalise like one already taken."""
    seen = {normalize_answer(fact.answer)}
    options: list[str] = []
    for pool in pools:
        if not pool:
            continue
        first = int(unit_hash("mc:" + fact.id, seed) * len(pool))
        for k in range(min(len(pool), max_looks)):
            cand = pool[(first + k) % len(pool)]
            norm = normalize_answer(cand.answer)
            if cand.id != fact.id and norm not in seen:
                seen.add(norm)
                options.append(cand.answer)
                if len(options) == limit:
                    return options
    return options


def mc_items(facts: Sequence[Fact], splits: dict[str, str], *, seed: int,
             max_distractors: int = 3) -> list[MCItem]:
    """One multiple-choice item per fact that has at least one distractor.

    Distractors are answers of other facts of the same split and kind whose normalised
    text differs from the true answer and from each other: first from facts with the same
    relation (a table column, "default"), then from the whole kind, each walked from a
    seeded start. The true answer's position is seeded too, so the chance level is
    ``1 / num_options``. (Of the same split: a held-out question among trained answers is
    scored against what the tuned model was trained to say; see
    :func:`doctune.knowledge.natural.mc_rows`.)
    """
    by_kind: dict[tuple[str, str], list[Fact]] = {}
    by_relation: dict[tuple[str, str, str], list[Fact]] = {}
    for f in sorted(facts, key=lambda f: unit_hash("pool:" + f.id, seed)):
        split = splits.get(f.id, "trained")
        by_kind.setdefault((split, f.kind), []).append(f)
        by_relation.setdefault((split, f.kind, f.relation), []).append(f)
    items = []
    for fact in facts:
        split = splits.get(fact.id, "trained")
        pools = (by_relation[split, fact.kind, fact.relation], by_kind[split, fact.kind])
        options = _distractors(fact, pools, seed, max_distractors)
        if not options:
            continue
        at = int(unit_hash("mc-pos:" + fact.id, seed) * (len(options) + 1))
        options.insert(at, fact.answer)
        question = QUESTIONS[fact.kind][0].format(**_fields(fact))
        items.append(MCItem(question, tuple(options), at, fact, split))
    return items
