"""Amplified study data from templates, offline: each trained fact said many ways, to a
token budget (``doctune synth DOCS --amplify N``: about N x the trained documents' tokens).

Knowledge injected by fine-tuning grows with the synthetic tokens trained on, and a fact
read in one wording is stored but hard to extract (Physics of LMs 3.1; EntiGraph, Yang et
al. 2025). Without a model, four generators restate the facts (:data:`GENERATORS`, each
with a line saying what it makes):

- ``frames``: one fact per example, as a statement in every frame of each direction it can
  be asked in (:func:`doctune.knowledge.natural.natural_questions`' relations), and its
  sentence in its section;
- ``qa``: a trained natural question with its answer, as text, in every trained phrasing;
- ``lists``: the facts of one top section (a page's ``## Server Options``, with each
  option's own section below it) as lists of statements, under several headers;
- ``passages``: two or three facts of one top section related in a short passage
  (EntiGraph's idea, with templates instead of a model).

Only *trained* facts of trained documents are restated. An example that would hold the
sentence of a held-out or control fact (two facts in one sentence) is dropped, so neither
leaks. Each example records its generator, template, facts and section. Tokens are counted
without a tokenizer (:func:`count_tokens`: words and punctuation marks), the same way for
the source and the examples.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from doctune.knowledge.facts import Fact
from doctune.knowledge.metrics import normalize_answer
from doctune.knowledge.natural import _Ask, _asks, _context, natural_questions
from doctune.knowledge.split import unit_hash

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Words and punctuation marks: a tokenizer-free size (BPE tokenizers give ~1.3x)."""
    return len(_TOKEN.findall(text))


# Statements per (kind, direction); fields as natural.PHRASINGS (subject, answer, pred, thing,
# be, where, relation, measure).
STATEMENTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("config", "value"): ("{subject} defaults to {answer}.",
                          "If you don't set {subject}, it is {answer}.",
                          "The default value of {subject} is {answer}.",
                          "Out of the box, {subject} is set to {answer}.",
                          "Leave {subject} out of the config and you get {answer}."),
    ("config", "purpose"): ("The default {thing} {be} {answer}.",
                            "By default, the {thing} {be} {answer} ({subject}).",
                            "Unless you change {subject}, the {thing} {be} {answer}.",
                            "Set nothing and the {thing} {be} {answer}."),
    ("config", "name"): ("The option that defaults to {answer} is {subject}.",
                         "{answer} is the default of {subject}.",
                         "When nothing sets it, {subject} takes the value {answer}."),
    ("heading", "value"): ("{subject}: {answer}", "What {subject} is for: {answer}",
                           "About the {subject} option. {answer}"),
    ("heading", "name"): ("The option that {pred} is {subject}.",
                          "{subject} is the setting that {pred}.",
                          "To get something that {pred}, use {subject}."),
    ("heading", "how"): ("To {task}: {answer}", "How to {task}. {answer}",
                         "If you want to {task}: {answer}"),
    ("heading", "about"): ("About {topic}: {answer}", "On {topic}, the docs say: {answer}"),
    ("heading", "ask"): ("{question} {answer}", "Q: {question}\nA: {answer}"),
    ("definition", "value"): ("In {where}, {answer} means: {subject}",
                              "{answer} ({where}): {subject}"),
    ("definition", "name"): ("In {where}, the field that {pred} is {answer}.",
                             "{answer} is the {where} key that {pred}."),
    ("table", "value"): ("The {relation} of {subject} is {answer}.",
                         "{subject} has the {relation} {answer}.",
                         "For {subject}, the {relation} is {answer}."),
    ("table", "name"): ("In {where}, {subject} is the one whose {relation} is {answer}.",
                        "{answer} is the {relation} of {subject} in {where}."),
    ("flag", "value"): ("The command-line flag for {subject} is {answer}.",
                        "On the command line, {subject} goes with {answer}."),
    ("flag", "name"): ("{answer} is the command-line side of {subject}.",
                       "The flag {answer} goes with the {subject} option."),
    ("number", "value"): ("The {measure} the docs give for {subject} is {answer}.",
                          "{subject} comes with a {measure} of {answer}."),
}
SENTENCE_FRAMES = ("From the docs on {topic}: {sentence}", "{topic}. {sentence}",
                   "As the section \"{topic}\" puts it: {sentence}", "Note on {topic}: {sentence}")
LIST_HEADERS = ("{topic}, in short:", "What the docs say in {topic}:", "Facts from {topic}:",
                "Remember about {topic}:")
PASSAGES = (
    "{subjects} are described together in {topic}. {s1} {s2}{s3}",
    "In {topic}, {subjects} sit side by side. {s1} Next to it: {s2}{s3}",
    "Comparing {subjects} ({topic}). First: {s1} Then: {s2}{s3}",
    "{topic} covers {subjects}. {s2} {s1}{s3}",
    "Two things to know from {topic}, about {subjects}. {s1} Also: {s2}{s3}",
    "A note on {subjects}, all in {topic}: {s1} {s2}{s3}",
)
MAX_LIST = 8
"""Statements in one list; a longer section makes several lists."""
MAX_GROUPS = 400
"""Pairs and triples of facts per top section and passage template (a seeded sample)."""


@dataclass(frozen=True)
class Example:
    """One amplified example: text trained on like document text, and where it came from."""

    text: str
    generator: str
    template: str
    facts: tuple[Fact, ...]

    def to_dict(self) -> dict[str, Any]:
        """The ``amplified.jsonl`` line."""
        f, section = self.facts[0], list(self.facts[0].section)
        for x in self.facts[1:]:  # the heading path the facts share
            section = [a for a, b in itertools.takewhile(lambda p: p[0] == p[1],
                                                         zip(section, x.section, strict=False))]
        return {"id": hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16],
                "text": self.text, "generator": self.generator, "template": self.template,
                "fact_ids": [x.id for x in self.facts], "split": "trained", "doc": f.doc,
                "section": section, "tokens": count_tokens(self.text)}


@dataclass
class Study:
    """What the generators read: the trained facts and the ways each can be asked."""

    facts: list[Fact]
    asks: dict[str, list[_Ask]]
    all_facts: Sequence[Fact]
    splits: dict[str, str]
    phrasings: dict[str, str]
    seed: int

    def sections(self) -> list[list[Fact]]:
        """The trained facts grouped by document and top section, in document order."""
        groups: dict[tuple[str, tuple[str, ...]], list[Fact]] = {}
        for f in self.facts:
            groups.setdefault((f.doc, f.section[:1]), []).append(f)
        return list(groups.values())


def _topic(f: Fact, depth: int | None = None) -> str:
    return " > ".join(f.section[:depth]) or f.doc


def _full_stop(text: str) -> str:
    return text if text.rstrip().endswith((".", "!", "?", ":")) else text.rstrip() + "."


def _names(facts: Sequence[Fact]) -> str:
    names = [f.answer if f.kind == "definition" else f.subject for f in facts]
    names = [n if "`" in n or " " in n else f"`{n}`" for n in names]
    return ", ".join(names[:-1]) + " and " + names[-1]


def statements(study: Study, f: Fact) -> list[tuple[str, str]]:
    """(template name, text) of every statement of ``f``: each direction's frames."""
    out = []
    for a in study.asks.get(f.id, []):
        for k, frame in enumerate(STATEMENTS.get((f.kind, a.direction), ())):
            out.append((f"{f.kind}.{a.direction}.{k}", frame.format(**a.fields)))
    return out


def _frames(study: Study) -> list[Example]:
    out = []
    for f in study.facts:
        out += [Example(text, "frames", name, (f,)) for name, text in statements(study, f)]
        out += [Example(frame.format(topic=_topic(f), sentence=f.sentence), "frames",
                        f"sentence.{k}", (f,)) for k, frame in enumerate(SENTENCE_FRAMES)]
    return out


def _qa(study: Study) -> list[Example]:
    questions = natural_questions(study.all_facts, study.splits, seed=study.seed,
                                  phrasings=study.phrasings, per_fact=100)
    trained = {f.id for f in study.facts}
    return [Example(f"Question: {q.question}\nAnswer: {q.answer}", "qa", q.template, (q.fact,))
            for q in questions if q.fact.id in trained and q.phrasing_split == "trained"]


def _lists(study: Study) -> list[Example]:
    out = []
    for facts in study.sections():
        said = [(f, statements(study, f)) for f in facts]
        said = [(f, s) for f, s in said if s]
        for k, header in enumerate(LIST_HEADERS):
            for start in range(0, len(said), MAX_LIST):
                part = said[start:start + MAX_LIST]
                if len(part) < 2:
                    continue
                lines = [s[k % len(s)][1] for _, s in part]
                text = "\n".join([header.format(topic=_topic(part[0][0], 1)),
                                  *(f"- {_full_stop(line)}" for line in lines)])
                out.append(Example(text, "lists", f"list.{k}", tuple(f for f, _ in part)))
    return out


def _passages(study: Study) -> list[Example]:
    out = []
    for facts in study.sections():
        said = {f.id: statements(study, f) for f in facts}
        usable = [f for f in facts if said[f.id]]
        groups = [*itertools.combinations(usable, 2), *itertools.combinations(usable, 3)]
        for k, frame in enumerate(PASSAGES):
            key = f"passage{k}:{usable[0].id}" if usable else ""
            ranked = sorted(groups, key=lambda g: unit_hash(key + "".join(f.id for f in g),
                                                            study.seed))
            for g in ranked[:MAX_GROUPS]:
                s = [_full_stop(said[f.id][(k + i) % len(said[f.id])][1])
                     for i, f in enumerate(g)]
                text = frame.format(topic=_topic(g[0], 1), subjects=_names(g),
                                    s1=s[0], s2=s[1], s3=f" {s[2]}" if len(s) > 2 else "")
                out.append(Example(text, "passages", f"passage.{k}.{len(g)}", tuple(g)))
    return out


GENERATORS: tuple[tuple[str, str, Callable[[Study], list[Example]]], ...] = (
    ("frames", "one fact as a statement in each frame of each way it is asked, and its sentence "
               "in its section", _frames),
    ("qa", "a trained natural question and its answer, as text, in each trained phrasing", _qa),
    ("lists", "the facts of one section as a list of statements", _lists),
    ("passages", "two or three facts of one section related in a short passage", _passages),
)


LEAK_SENTENCE_WORDS = 4
"""A held-out sentence this long (normalised) is its fact's own: an example holding it leaks
the fact. A shorter one (``Default: `false```) is said of many options, and leaks only with
its fact's subject."""


def _leaks(facts: Sequence[Fact], splits: dict[str, str]) -> list[tuple[str, ...]]:
    """What no example may hold, per held-out or control fact: its normalised sentence when it
    has :data:`LEAK_SENTENCE_WORDS` words or more, and its subject with its answer (``server.host``
    and ``localhost`` in one example), each as whole words (see :func:`leaks`)."""
    out: set[tuple[str, ...]] = set()
    for f in facts:
        if splits.get(f.id, "trained") == "trained":
            continue
        sentence = normalize_answer(f.sentence)
        if len(sentence.split()) >= LEAK_SENTENCE_WORDS:
            out.add((sentence,))
        subject, answer = normalize_answer(f.subject), normalize_answer(f.answer)
        if subject and answer and subject != answer:
            out.add((subject, answer))
    return sorted(out)


def leaks(text: str, forbidden: Sequence[tuple[str, ...]]) -> bool:
    """Whether ``text`` holds every part of one of ``forbidden`` (from :func:`_leaks`), each
    as whole words of its normalised form."""
    norm = f" {normalize_answer(text)} "
    return any(all(f" {part} " in norm for part in parts) for parts in forbidden)


def amplify(facts: Sequence[Fact], splits: dict[str, str], *, source_tokens: int, factor: float,
            seed: int, phrasings: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``amplified.jsonl`` lines of about ``factor x source_tokens`` tokens, and what was made.

    The generators' examples, each list in a seeded order, are taken in turn (one of each
    generator, then the next of each) until the budget is reached or every list is used up;
    the summary says how far it got (``achieved``: tokens over the source's).
    """
    trained = [f for f in facts if splits.get(f.id, "trained") == "trained"]
    ctx = _context(facts, splits)
    study = Study(trained, {f.id: _asks(f, ctx) for f in trained}, facts, splits,
                  phrasings, seed)
    forbidden = _leaks(facts, splits)
    queues, dropped = [], 0
    for name, _, make in GENERATORS:
        made = sorted(make(study), key=lambda e: unit_hash(f"amp:{name}:{e.text}", seed))
        kept = [e for e in made if not leaks(e.text, forbidden)]
        dropped += len(made) - len(kept)
        queues.append(kept)
    budget, total, seen = factor * source_tokens, 0, set()
    taken: list[Example] = []
    for e in (e for row in itertools.zip_longest(*queues) for e in row if e is not None):
        if total >= budget:
            break
        if e.text in seen:
            continue
        seen.add(e.text)
        taken.append(e)
        total += count_tokens(e.text)
    by = {name: {"makes": makes,
                 "examples": sum(e.generator == name for e in taken),
                 "tokens": sum(count_tokens(e.text) for e in taken if e.generator == name)}
          for name, makes, _ in GENERATORS}
    info = {"asked": factor, "source_tokens": source_tokens, "tokens": total,
            "achieved": round(total / source_tokens, 3) if source_tokens else 0.0,
            "examples": len(taken), "exhausted": total < budget, "dropped_leaks": dropped,
            "token_count": "words and punctuation marks (no tokenizer)", "generators": by}
    return [e.to_dict() for e in taken], info
