"""Questions as people ask them: facts turned into questions that never quote the source
sentence, each relation asked both ways (and a default by what its option is for), with
phrasings split like facts.

A fact relates a *subject* to an *answer* (``build.outDir`` defaults to ``dist``). Each
relation is asked both ways, and a config default a third way:

- ``value``: from the subject to the answer ("What does `build.outDir` default to?");
- ``name``: from the answer (or what the section says the subject does) back to the subject
  ("Which option defaults to `dist`?", "Which option sets the output directory?"). A
  ``name`` question is made only when its answer is unambiguous in the docs read (the value
  is the default of one option only; the description is short enough to ask);
- ``purpose``: a default asked by what the option is for, without naming it ("What is the
  default output directory for the final bundle?" for ``build.outDir``), from the section's
  description (:func:`thing`) when it names one thing no other section names. People ask
  for a value by what it does far more often than by the option's name. Not asked when the
  description is held out and the default trained: the trained text would answer it.

Each (kind, direction) has several *phrasings*. Like facts, phrasings are split by a seeded
hash (:func:`phrasing_split`): a trained fact is asked in trained phrasings only, a held-out
or control fact in held-out phrasings only, so a held-out question is a fact the model never
saw asked, in words it never saw a question put in. It measures answering, not template
matching.

Kinds asked: ``config`` (all three ways), ``heading`` of an identifier-like section (what it does;
which option does that), ``heading`` of a prose section from its first sentence (a task, "How do
I create an Enum class?"; a topic, "What do the docs say about query parameters?"; a heading that
is a question, as itself: :func:`prose_ask`), ``definition`` (what a term does; which term does that),
``table`` (a cell; which row has it), ``flag`` and ``number`` (when a section holds only one).
``code`` facts (an identifier somewhere in a sentence) are not: without a model they can
only be asked as the sentence with a blank (:mod:`~doctune.knowledge.templates` does that).

Every question records its fact, section, kind, direction and phrasing (``template``:
``natural.<kind>.<direction>.<k>``, ``phrasing_split``), and :func:`quotes_sentence` is false
for each: no question holds its fact's sentence.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from doctune.knowledge.facts import Fact
from doctune.knowledge.metrics import normalize_answer
from doctune.knowledge.split import unit_hash

DIRECTIONS = ("value", "name", "purpose")

# Fields: subject (`code` when it is an identifier), answer (`code`), pred (what the subject
# does, a verb phrase in the third person), thing (what it sets, a noun phrase) and be ("is"
# or "are" to agree with it), where (the section), relation, measure.
PHRASINGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("config", "value"): (
        "What does {subject} default to?",
        "If I don't set {subject}, what value does it have?",
        "What's the default value of {subject}?",
        "I left {subject} out of my config. What is it set to?",
        "Out of the box, what is {subject} set to?",
    ),
    ("config", "purpose"): (
        "What {be} the default {thing}?",
        "If I configure nothing, what {be} the {thing}?",
        "By default, what {be} the {thing}?",
        "What do the docs give as the default {thing}?",
        "Unless I change it, what {be} the {thing}?",
    ),
    ("config", "name"): (
        "Which option defaults to {answer}?",
        "Which setting is {answer} when you don't set it?",
        "What option has {answer} as its default value?",
        "{answer} is the default of which option?",
    ),
    ("heading", "value"): (
        "What is {subject} for?",
        "What does the {subject} option do?",
        "In one sentence, what does {subject} do?",
        "What's the purpose of {subject}?",
    ),
    ("heading", "name"): (
        "Which option {pred}?",
        "What setting {pred}?",
        "I need the option that {pred}. What is it called?",
        "Which config key {pred}?",
        "What is the name of the option that {pred}?",
    ),
    ("heading", "how"): (
        "How do I {task}?",
        "How can I {task}?",
        "What's the way to {task}?",
        "I want to {task}. How do I do that?",
        "What do I do to {task}?",
    ),
    ("heading", "about"): (
        "What do the docs say about {topic}?",
        "Can you explain {topic}?",
        "What should I know about {topic}?",
        "Tell me about {topic}.",
    ),
    ("heading", "ask"): (
        "{question}",
        "Quick question: {question}",
        "{question} Answer briefly.",
    ),
    ("definition", "value"): (
        "In {where}, what does {answer} do?",
        "What is {answer} for in {where}?",
        "What does the {answer} field of {where} mean?",
    ),
    ("definition", "name"): (
        "In {where}, which field {pred}?",
        "What is the {where} setting that {pred} called?",
        "{where}: which key {pred}?",
    ),
    ("table", "value"): (
        "What {relation} does {subject} have?",
        "For {subject}, what's the {relation}?",
        "Tell me the {relation} of {subject}.",
    ),
    ("table", "name"): (
        "Which one has {answer} as its {relation} in {where}?",
        "In {where}, what has the {relation} {answer}?",
        "What entry of {where} has {relation} {answer}?",
    ),
    ("flag", "value"): (
        "Which command-line flag goes with {subject}?",
        "What CLI flag do I use for {subject}?",
        "Is there a command-line flag for {subject}? Which one?",
    ),
    ("flag", "name"): (
        "Which option does the {answer} flag go with?",
        "The CLI flag {answer} is the command-line side of which option?",
        "What setting does {answer} on the command line relate to?",
    ),
    ("number", "value"): (
        "What {measure} do the docs give for {subject}?",
        "Which {measure} goes with {subject}?",
        "For {subject}, what {measure} is mentioned?",
    ),
}


@dataclass(frozen=True)
class NaturalQuestion:
    """One question about one fact in one direction and phrasing."""

    question: str
    answer: str
    fact: Fact
    direction: str
    template: str
    phrasing_split: str


def phrasing_split(seed: int, fraction: float) -> dict[str, str]:
    """Phrasing name -> ``"trained"`` or ``"heldout"``: held out when its seeded hash falls
    under ``fraction``; every group keeps at least one of each (the lowest hash is held out,
    the highest trained), so both splits can always be asked."""
    out: dict[str, str] = {}
    for (kind, direction), texts in PHRASINGS.items():
        names = [f"natural.{kind}.{direction}.{k}" for k in range(len(texts))]
        h = {n: unit_hash("phrasing:" + n, seed) for n in names}
        group = {n: "heldout" if h[n] < fraction else "trained" for n in names}
        if fraction > 0 and "heldout" not in group.values():
            group[min(names, key=h.__getitem__)] = "heldout"
        if "trained" not in group.values():
            group[max(names, key=h.__getitem__)] = "trained"
        out.update(group)
    return out


def _plain(text: str) -> str:
    """Markdown links to their text, emphasis marks dropped, white space collapsed."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return " ".join(re.sub(r"\*\*|__", "", text).split())


def _code(text: str) -> str:
    return text if "`" in text else f"`{text}`"


_WORD = re.compile(r"[A-Z][a-z]+")
"""A capitalised word: "Results", "Testing", "Pydantic" (a title, not an identifier)."""


def _identifier(subject: str) -> bool:
    """A heading that names a thing (``server.port``, ``onPress``, ``root``, ```Button```),
    not a prose title ("Query Parameters", "Results", ``"Schema"``, "FAQ")."""
    s = subject.strip()
    if not s or " " in s.strip("`") or len(s) > 64:
        return False
    return s.startswith("`") or not (s[0] in "\"'" or _WORD.fullmatch(s)
                                     or re.fullmatch(r"[A-Z]{2,6}s?", s))  # "FAQ", "APIs"


_VERBS = frozenset(["add", "adjust", "allow", "apply", "authorize", "build", "change", "choose",
                    "configure", "control", "convert", "create", "customize", "decide", "define",
                    "determine", "disable", "emit", "enable", "exclude", "expose", "externalize",
                    "finalize", "force", "forward", "generate", "identify", "ignore", "include",
                    "initialize", "inject", "keep", "limit", "load", "localize", "make",
                    "memoize", "minify", "modify", "normalize", "notify", "optimize", "override",
                    "pass", "prettify", "prevent", "print", "prioritize", "provide", "register",
                    "remove", "replace", "resize", "restrict", "return", "run", "sanitize",
                    "select", "serialize", "serve", "set", "show", "simplify", "skip", "specify",
                    "start", "stop", "stringify", "synchronize", "tokenize", "transform", "turn",
                    "uglify", "use", "verify", "warm", "write"])
_ADVERBS = frozenset(["additionally", "automatically", "conditionally", "directly", "dynamically",
                      "eagerly", "explicitly", "forcibly", "fully", "globally", "lazily",
                      "manually", "optionally", "partially", "permanently", "recursively",
                      "selectively", "silently", "statically", "temporarily"])
_NOT_NOUN_PHRASE = re.compile(r"\b(?:will|must|should|can|may|might|is|was|were|does|did)\b",
                              re.IGNORECASE)
_SKIP_START = frozenset(["a", "an", "the", "this", "these", "that", "it", "its", "if", "when", "unless", "note", "see", "by", "for", "in", "as", "to", "on", "with", "also", "only"])
MAX_DESCRIPTION_WORDS = 14
"""A description longer than this (after its first clause) is not asked the ``name`` way."""


def _third_person(verb: str) -> str:
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ies"
    if re.search(r"(?:s|sh|ch|x|z|o)$", verb):
        return verb + "es"
    return verb + "s"


def _stem(word: str) -> str | None:
    """``word`` as a known verb's base form when it is that verb in the third person."""
    for cut, add in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(cut) and word[:-len(cut)] + add in _VERBS:
            return word[:-len(cut)] + add
    return None


def predicate(sentence: str) -> str | None:
    """What a description says its subject does, as a third-person verb phrase ("specifies
    the server port", "sets the output format for worker bundles", "decides whether to ...");
    None when the sentence is not a short description of that shape."""
    text = _plain(sentence).rstrip(".:;")
    text = re.split(r"\s+\(|;|, (?:but|and|so|which|e\.g\.)", text)[0].strip()
    text = re.sub(r"^This (?:option|setting)\s+", "", text)
    words = text.split()
    if not words or len(words) > MAX_DESCRIPTION_WORDS or "`" in words[0]:
        return None
    first, rest = words[0].lower(), " ".join(words[1:])
    if first in _ADVERBS and len(words) > 2 and words[1].lower() in _VERBS:
        return " ".join([first, _third_person(words[1].lower()), *words[2:]])  # "Directly set"
    head = [p for p in first.split("/") if p]
    if head and all(p in _VERBS for p in head):
        return " ".join(["/".join(_third_person(p) for p in head), *words[1:]])
    if _stem(first) is not None:
        return " ".join([first, *words[1:]])
    if first == "whether":
        return "decides whether " + rest
    if first in _SKIP_START or not words[0][0].isupper() or _NOT_NOUN_PHRASE.search(text):
        return None
    lead = words[0] if words[0].isupper() or any(c.isupper() for c in words[0][1:]) else first
    return " ".join(["sets the", lead, *words[1:]])


_TASK_VERBS = _VERBS | frozenset([
    "access", "await", "bind", "cache", "call", "catch", "check", "compare", "connect", "debug",
    "declare", "deploy", "document", "edit", "extend", "fetch", "get", "handle", "import",
    "install", "log", "migrate", "mock", "navigate", "open", "publish", "query", "raise",
    "read", "render", "route", "save", "send", "share", "store", "test", "throw", "try",
    "update", "upgrade", "upload", "validate", "wrap"])
_NOUNISH = frozenset(["build", "cache", "change", "control", "document", "limit", "load", "log",
                      "mock", "open", "print", "query", "route", "run", "serve", "set",
                      "start", "stop", "store", "test", "turn", "update", "watch"])
"""Verbs that open noun phrases as often ("Build Options", "Query parameter type conversion"):
a task only before an article, a possessive or a particle ("Set up the server")."""
_OBJECT = frozenset(["a", "an", "the", "your", "my", "our", "their", "all", "each", "every",
                     "some", "any", "up", "out", "off", "on", "in"])
_VAGUE = frozenset(["usage", "reference", "caveats", "examples", "example", "installation",
                    "overview", "introduction", "summary", "notes", "troubleshooting", "faq",
                    "prerequisites", "requirements", "setup", "conclusion", "parameters",
                    "returns", "props", "options", "methods", "api", "guide", "basics"])
"""One-word titles every docs site has: "What do the docs say about usage?" asks nothing."""
_PREPOSITIONS = frozenset(["about", "with", "without", "for", "in", "on", "to", "from", "by",
                           "into", "of", "at", "vs", "versus", "via"])
_ASKING = frozenset(["what", "why", "how", "when", "where", "which", "who"])
_POINTING = re.compile(r"\b(?:it|its|them|they|this|that|these|those|here|there|above|below|"
                       r"following|next|previous)\b", re.IGNORECASE)
_STEP = re.compile(r"^(?:step\s+\d+|\d+)\s*[:.)\-\u2013]\s*", re.IGNORECASE)
_MINE = {"your": "my", "yours": "mine", "you": "I", "yourself": "myself"}
MIN_ANSWER_WORDS = 5
"""Shortest first sentence asked about by a prose heading."""


def _content(text: str) -> set[str]:
    """The words of ``text`` longer than 3 letters, lower case, a plural -s dropped."""
    return {w[:-1] if w.endswith("s") else w
            for w in re.findall(r"[a-z][a-z0-9]+", text.lower()) if len(w) > 3}


def _as_written(word: str, answer: str) -> str:
    """A title-cased word as prose writes it: kept when ``answer`` writes it capitalised
    after its first word (a name: "Pydantic"), else in lower case ("Parameters")."""
    if not _WORD.fullmatch(word):
        return word
    return word if re.search(rf"\S\s+\W*{re.escape(word)}\b", answer) else word.lower()


def prose_ask(heading: str, answer: str) -> tuple[str, dict[str, str]] | None:
    """How a prose heading's section is asked about from its first sentence ``answer``: a
    heading that is a question as itself (``ask``), a task ("Create an Enum class") as "how
    do I create an Enum class?" (``how``), a topic ("Query Parameters") as "what do the docs
    say about query parameters?" (``about``); None for a heading that points elsewhere ("Run
    it", "Check the above"), a first sentence that does not take up any word of its heading
    (an introduction, not an answer), or one under :data:`MIN_ANSWER_WORDS` words."""
    text = _STEP.sub("", _plain(heading).replace("`", "")).strip().rstrip(".:!")
    words, plain = text.split(), _plain(answer)
    if not words or len(words) > 10 or len(plain.split()) < MIN_ANSWER_WORDS:
        return None
    first = words[0].lower()
    task = first in _TASK_VERBS and len(words) >= 2 and (
        words[1].lower() in _OBJECT or first not in _NOUNISH)
    if _POINTING.search(text) or not _content(" ".join(words[task:])) & _content(answer):
        return None
    if first in _ASKING:
        question = text if text.endswith("?") else text + "?"
        return "ask", {"question": question[0].upper() + question[1:]}
    if task:  # "Add React to an Existing Project": add React to an existing project
        return "how", {"task": " ".join([first, *(_MINE.get(w.lower()) or _as_written(w, plain)
                                                  for w in words[1:])])}
    if first == "about":  # "About FastAPI Cloud"
        words = words[1:]
    if (not words or len(words) > 6 or words[0].lower() in _PREPOSITIONS
            or _NOT_NOUN_PHRASE.search(text) or "?" in text
            or (len(words) == 1 and words[0].lower() in _VAGUE)):
        return None
    return "about", {"topic": " ".join(_as_written(w, plain) for w in words)}


_SETTING_VERBS = frozenset(["specifies", "sets", "defines", "configures", "chooses", "selects",
                            "adjusts", "changes", "overrides", "controls"])
_NOT_A_THING = frozenset(["what", "how", "when", "where", "who", "to",
                          "a", "an", "all", "any", "some", "one", "custom", "additional",
                          "options", "extra", "up", "this", "these", "that", "it", "between",
                          "both", "as", "whatever"])
_THING_END = re.compile(r"\s(?:to|that|which|for|of|in|on|from|when|used|with|under|by)\s")


def thing(sentence: str) -> str | None:
    """What a description says its option sets, as a noun phrase of two words or more,
    without its article ("Specify the server port." -> "server port"; "Output directory for
    the final bundle." -> "output directory for the final bundle"); None when the
    description does not name one thing: a clause, "whether ...", a list ("the host, port
    and protocol"), an action other than setting, a possessive, an identifier."""
    pred = predicate(sentence)
    if pred is None:
        return None
    verb, _, rest = pred.partition(" ")
    if verb not in _SETTING_VERBS or not rest:
        return None
    words = rest.split()
    while words and words[0].lower() in ("the", "your", "default"):
        words = words[1:]
    text = " ".join(words)
    head = words[0].lower() if words else ""
    if (len(words) < 2 or head in _NOT_A_THING or head.endswith("ly") or "`" in text
            or {"if", "which", "whether"} & {w.lower() for w in words}  # a clause
            or words[1].lower() in ("the", "a", "an", "your", "its")  # a verb: "compares the"
            or "'s" in text.split(" ")[0] or re.search(r"\d", head) or words[1] == "as"
            or _NOT_NOUN_PHRASE.search(text)
            or ("," in text and re.search(r"\b(?:and|or)\b", text))
            or re.search(r"\b(?:and|or)\b", " ".join(words[:2]))):
        return None
    return text


def plural(noun_phrase: str) -> bool:
    """Whether a noun phrase's head is plural ("plugins to use", "WebSocket connection
    options"; not "list of file extensions", "CORS for the dev server"): the last word before
    its first preposition or clause ends in -s (an acronym or -ss, -us, -is does not count)."""
    head = _THING_END.split(" " + noun_phrase + " ", maxsplit=1)[0].split()
    word = head[-1] if head else ""
    return (len(word) > 2 and word.endswith("s") and not word.isupper()
            and not word.endswith(("ss", "us", "is")))


_MEASURES = ((r"ms|millisecond|second|sec|minute|min|hour|hr|h|day|week|month|year|s", "duration"),
             (r"[KMGT]i?B|kB|B|byte", "size"), (r"%", "percentage"), (r"x|times", "factor"))


def _measure(answer: str) -> str:
    unit = re.sub(r"^[\d.,\s]+", "", answer).rstrip("s") or "s"
    return next((m for pattern, m in _MEASURES if re.fullmatch(pattern, unit)), "number")


def quotes_sentence(question: str, sentence: str) -> bool:
    """True when ``question`` holds its fact's whole sentence (normalised, as whole words): a
    quote, not a question. A sentence of one word (``**Default:** `/``` is ``default``)
    quotes nothing."""
    s = normalize_answer(_plain(sentence))
    return len(s.split()) > 1 and f" {s} " in f" {normalize_answer(question)} "


# ---- questions from facts ------------------------------------------------------------------

_LABEL_TERM = re.compile(r"[A-Z][a-z]+")  # "Related", "Default": a list label, not a term


def _strip(text: str) -> str:
    return text.strip("`")


def _about_its_section(f: Fact) -> bool:
    """Whether ``f``'s subject is what its section is about (the heading names it), not a
    key mentioned inside another option's section."""
    return bool(f.section) and _strip(f.subject) == _strip(f.section[-1])


@dataclass(frozen=True)
class _Ask:
    """One fact asked one way: the answer and the fields of its phrasings."""

    fact: Fact
    direction: str
    answer: str
    fields: dict[str, str]


@dataclass(frozen=True)
class _Context:
    """What is said of one fact only, across the facts read (:func:`_context`)."""

    unique: dict[str, set[str]]
    """Per kind, the normalised config values, flags and descriptions one fact alone has."""
    single: set[tuple[str, str, str]]
    """(doc, section, what) keys one fact alone holds: a section's only flag or number, a
    table column's value."""
    things: dict[tuple[str, str], tuple[str, str]]
    """(doc, section) of an option -> what its description says it sets (:func:`thing`) and
    the id of the description's fact, when no other section's description says the same."""
    splits: dict[str, str]


def _asks(fact: Fact, ctx: _Context) -> list[_Ask]:
    """The ways ``fact`` can be asked (see the module docstring)."""
    f, subject, unique = fact, _strip(fact.subject), ctx.unique
    where = " > ".join(f.section[-1:]) or f.doc
    where = _code(where) if _identifier(where) else where
    base = {"subject": _code(subject) if _identifier(subject) else subject,
            "answer": f.answer if f.kind == "heading" else _code(f.answer),  # a sentence
            "relation": f.relation.lower(), "where": where}
    out: list[_Ask] = []
    norm = normalize_answer(f.answer) or f.answer

    def ask(direction: str, answer: str, **extra: str) -> None:
        out.append(_Ask(f, direction, answer, {**base, **extra}))

    if f.kind == "config":
        ask("value", f.answer)
        if norm in unique["config"]:
            ask("name", subject)
        what, said_by = ctx.things.get((f.doc, " > ".join(f.section)), ("", ""))
        trained = ctx.splits.get(f.id, "trained") == "trained"
        if what and _about_its_section(f) and (not trained or ctx.splits.get(said_by, "trained") == "trained"):
            ask("purpose", f.answer, thing=what, be="are" if plural(what) else "is")
    elif f.kind == "heading" and _identifier(subject):
        ask("value", f.answer)
        pred = predicate(f.answer)
        if pred and normalize_answer(pred) in unique["heading"]:
            ask("name", subject, pred=pred)
    elif f.kind == "heading" and (prose := prose_ask(subject, f.answer)) is not None \
            and normalize_answer(subject) in unique["prose"]:  # one section of that title
        ask(prose[0], f.answer, **prose[1])
    elif f.kind == "definition" and not _LABEL_TERM.fullmatch(f.answer):
        ask("value", f.subject)
        pred = predicate(f.subject)
        if pred and normalize_answer(pred) in unique["definition"]:
            ask("name", f.answer, pred=pred)
    elif f.kind == "table":
        ask("value", f.answer)
        if (f.doc, " > ".join(f.section), f.relation + "\0" + norm) in ctx.single:
            ask("name", f.subject)
    elif (f.kind in ("flag", "number") and _identifier(subject)
          and (f.doc, " > ".join(f.section), f.kind) in ctx.single):
        ask("value", f.answer, measure=_measure(f.answer))
        if f.kind == "flag" and norm in unique["flag"]:
            ask("name", subject)
    return out


def _context(facts: Sequence[Fact], splits: dict[str, str]) -> _Context:
    """What is said of one fact only (see :class:`_Context`); ``splits`` as
    :func:`natural_questions`'."""
    counts: dict[str, Counter[str]] = {k: Counter() for k in
                                       ("config", "heading", "definition", "flag", "prose")}
    per_section: Counter[tuple[str, str, str]] = Counter()
    described: dict[tuple[str, str], tuple[str, str]] = {}
    for f in facts:
        sec = " > ".join(f.section)
        if f.kind in ("config", "flag"):
            counts[f.kind][normalize_answer(f.answer) or f.answer] += 1
        elif f.kind in ("heading", "definition"):
            pred = predicate(f.answer if f.kind == "heading" else f.subject)
            if pred:
                counts[f.kind][normalize_answer(pred)] += 1
            if f.kind == "heading" and not _identifier(_strip(f.subject)):
                counts["prose"][normalize_answer(f.subject)] += 1
        if f.kind in ("flag", "number"):
            per_section[f.doc, sec, f.kind] += 1
        elif f.kind == "table":
            per_section[f.doc, sec, f.relation + "\0" + normalize_answer(f.answer)] += 1
        elif f.kind == "heading" and _identifier(_strip(f.subject)) and _about_its_section(f):
            what = thing(f.answer)
            if what:
                described.setdefault((f.doc, sec), (what, f.id))
    unique = {k: {v for v, n in c.items() if n == 1} for k, c in counts.items()}
    said = Counter(normalize_answer(w) for w, _ in described.values())
    return _Context(unique, {k for k, n in per_section.items() if n == 1},
                    {k: v for k, v in described.items() if said[normalize_answer(v[0])] == 1},
                    splits)


def _rotation(n: int, key: str, seed: int) -> list[int]:
    first = int(unit_hash(key, seed) * n)
    return [(first + k) % n for k in range(n)]


def natural_questions(facts: Sequence[Fact], splits: dict[str, str], *, seed: int,
                      phrasings: dict[str, str], per_fact: int) -> list[NaturalQuestion]:
    """Questions about ``facts`` (see the module docstring): a trained fact in up to
    ``per_fact`` of its trained phrasings per direction, a held-out or control fact in one
    held-out phrasing per direction, each chosen by the fact id and ``seed``."""
    ctx = _context(facts, splits)
    out: list[NaturalQuestion] = []
    for fact in facts:
        split = splits.get(fact.id, "trained")
        want = "trained" if split == "trained" else "heldout"
        for a in _asks(fact, ctx):
            texts = PHRASINGS[fact.kind, a.direction]
            names = [f"natural.{fact.kind}.{a.direction}.{k}" for k in range(len(texts))]
            order = [k for k in _rotation(len(texts), f"nq:{a.direction}:{fact.id}", seed)
                     if phrasings.get(names[k]) == want]
            for k in order[:per_fact if want == "trained" else 1]:
                q = texts[k].format(**a.fields)
                if not quotes_sentence(q, fact.sentence):
                    out.append(NaturalQuestion(q, a.answer, fact, a.direction, names[k], want))
    return out


def _row_id(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:16]


def qa_row(q: NaturalQuestion, split: str) -> dict[str, object]:
    """The ``qa.jsonl`` line of ``q``: the fields of :class:`~doctune.knowledge.templates.QAPair`
    (``source`` ``"natural"``) plus ``kind``, ``direction`` and ``phrasing_split``."""
    f = q.fact
    return {"id": _row_id(q.question, q.answer, "natural", f.doc), "question": q.question,
            "answer": q.answer, "fact_id": f.id, "split": split, "doc": f.doc,
            "section": list(f.section), "source": "natural", "template": q.template,
            "kind": f.kind, "direction": q.direction, "phrasing_split": q.phrasing_split}


def mc_rows(questions: Sequence[NaturalQuestion], facts: Sequence[Fact],
            splits: dict[str, str], *, seed: int, max_distractors: int = 3
            ) -> list[dict[str, object]]:
    """One multiple-choice line per fact and direction (its first question): the answer
    among up to ``max_distractors`` answers of other facts of the same split and kind asked
    in the same direction (the same relation first), walked from a seeded start, each
    normalising differently from the answer and the others; the answer's place is seeded.
    Fields: those of ``mc.jsonl`` plus ``source``, ``direction``, ``template``.

    The distractors of a held-out question are other held-out answers, never trained ones:
    a tuned model prefers whatever it was trained to say, whatever the question, and
    trained answers among the options of a held-out question made its score fall below
    the base's (the quickstart: 2 of 6 right before training, none after, each time a
    trained answer chosen). A fact whose split has no other answer of its kind has no
    multiple-choice line."""
    pools: dict[tuple[str, str, str, str], list[tuple[str, str]]] = {}
    for q in sorted(questions, key=lambda q: unit_hash("pool:" + q.fact.id, seed)):
        split = splits.get(q.fact.id, "trained")
        for relation in (q.fact.relation, ""):  # "": the whole kind
            pools.setdefault((split, q.fact.kind, q.direction, relation), []).append(
                (q.fact.id, q.answer))
    rows, seen = [], set()
    for q in questions:
        if (q.fact.id, q.direction) in seen:
            continue
        seen.add((q.fact.id, q.direction))
        taken = {normalize_answer(q.answer) or q.answer}
        options: list[str] = []
        split = splits.get(q.fact.id, "trained")
        for pool in (pools[split, q.fact.kind, q.direction, q.fact.relation],
                     pools[split, q.fact.kind, q.direction, ""]):
            start = int(unit_hash("mc:" + q.direction + q.fact.id, seed) * len(pool))
            for k in range(len(pool)):
                fid, cand = pool[(start + k) % len(pool)]
                norm = normalize_answer(cand) or cand
                if fid != q.fact.id and norm not in taken and len(options) < max_distractors:
                    taken.add(norm)
                    options.append(cand)
        if not options:
            continue
        at = int(unit_hash("mc-pos:" + q.direction + q.fact.id, seed) * (len(options) + 1))
        options.insert(at, q.answer)
        rows.append({"id": _row_id(q.question, *options), "question": q.question,
                     "options": options, "answer_index": at, "num_options": len(options),
                     "chance": 1 / len(options), "fact_id": q.fact.id, "kind": q.fact.kind,
                     "split": split, "doc": q.fact.doc,
                     "section": list(q.fact.section), "source": "natural",
                     "direction": q.direction, "template": q.template})
    return rows
