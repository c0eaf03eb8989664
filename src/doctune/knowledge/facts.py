"""Checkable facts from one cleaned Markdown document, without a model.

The document is read with markdown-it (CommonMark + tables + definition lists), so code
blocks are never mined and every fact knows its section. Each fact's ``answer`` is a short
span of the cleaned text: ``text[fact.start:fact.end]``, a line break where the source
wraps a sentence read as a space (:func:`span_answer`).

Kinds of fact (``kind``, what ``subject`` and ``relation`` hold):

- ``code``: an identifier in inline code (``subject``: the section heading,
  ``relation``: ``"identifier"``); the question is the sentence with a blank.
- ``flag``: a command-line flag such as ``--host``, in prose or inline code
  (``subject``: the section heading, ``relation``: ``"flag"``).
- ``config``: a config key's default (``subject``: the key, ``relation``: ``"default"``),
  from ``**Default:** `value``` under a heading that names the key, or from
  ```key` defaults to `value```.
- ``number``: a number with a unit, ``30 seconds``, ``5 MB`` (``subject``: the section
  heading, ``relation``: ``"quantity"``).
- ``table``: one table cell (``subject``: the row's first cell, ``relation``: the column
  header).
- ``definition``: a term of a definition list, or of a list item ``**term**: text`` /
  ```term` - text`` (``subject``: the definition's first sentence, ``relation``: ``"term"``).
- ``heading``: a section's first sentence (``subject``: the heading, ``relation``:
  ``"first sentence"``).

One line of ``facts.jsonl`` is :meth:`Fact.to_dict`: ``id`` (16 hex digits, stable while
the doc path, section, kind, subject, relation and answer stay the same), ``kind``,
``subject``, ``relation``, ``answer``, ``sentence`` (the sentence it came from, whitespace
collapsed, Markdown kept), ``doc`` (POSIX path relative to the docs folder), ``section``
(the heading path, outermost first), ``start``/``end`` (character offsets of ``answer`` in
the cleaned document) and ``cloze`` (``sentence`` with the answer replaced by ``____``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.deflist import deflist_plugin

KINDS = ("code", "flag", "config", "number", "table", "definition", "heading")
BLANK = "____"

_IDENT = re.compile(r"[A-Za-z_$@][\w$@.:/-]*(?:\(\))?")
_LITERALS = frozenset({
    "true", "false", "null", "none", "undefined", "nan", "string", "number", "boolean",
    "object", "int", "str", "dict", "list", "float", "bool", "any", "void", "array",
})
_FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*[a-z0-9]")
_UNITS = (r"ms|milliseconds?|seconds?|secs?|s|minutes?|mins?|hours?|hrs?|h|days?|weeks?|"
          r"months?|years?|bytes?|[KMGT]i?B|kB|B|px|rem|em|characters?|chars|lines?|"
          r"requests?|times|[KMG]Hz|x")
_NUMBER = re.compile(rf"(?<![\w.,/-])\d+(?:[.,]\d+)?(?:\s?%|\s?(?:{_UNITS})\b)")
_DEFAULT_AFTER = re.compile(r"\b(?:defaults? to|default (?:value )?is)\s*$", re.IGNORECASE)
_DEF_SEPARATOR = re.compile(r"^\s*(?::|-|–|—)\s+")
# A sentence ends at . ! or ? followed by white space and a capital, a backtick, a quote or
# a bracket (found on text whose code spans are masked, so `a.b` never ends one).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(\[*_])")
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|incl)\.)\Z", re.IGNORECASE)
_LABEL = re.compile(r"\*\*[^*\n]+:\*\*")  # "**Type:** ...": a field, not prose
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+|^\s*>\s?")
_MAX_ANSWER = 100
_CLOZE_KINDS = frozenset({"code", "flag", "number"})  # asked as a sentence with a blank
_MIN_CLOZE_WORDS = 4
_MAX_SENTENCE_ANSWER = 200
_MIN_WRAPPED_LINE = 50
"""A first sentence over several source lines is one sentence wrapped at a column when no
line but its last could have taken the next word within this many characters
(:func:`_wraps`); shorter lines are items written one per line (a quiz's options) that
Markdown happens to join."""
_LONE_ITEM = re.compile(r"([*_]*)\[[^\]]*\]\([^)]*\)\1|([*_]+)[^*_]+\2")


@dataclass(frozen=True)
class Fact:
    """One checkable fact: ``span_answer(text[start:end]) == answer`` in the cleaned
    document."""

    id: str
    kind: str
    subject: str
    relation: str
    answer: str
    sentence: str
    doc: str
    section: tuple[str, ...]
    start: int
    end: int
    cloze: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``facts.jsonl`` line (see the module docstring)."""
        return {"id": self.id, "kind": self.kind, "subject": self.subject,
                "relation": self.relation, "answer": self.answer, "sentence": self.sentence,
                "cloze": self.cloze, "doc": self.doc, "section": list(self.section),
                "start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fact:
        """The inverse of :meth:`to_dict`."""
        return cls(id=d["id"], kind=d["kind"], subject=d["subject"], relation=d["relation"],
                   answer=d["answer"], sentence=d["sentence"], doc=d["doc"],
                   section=tuple(d["section"]), start=d["start"], end=d["end"],
                   cloze=d.get("cloze", ""))


def fact_id(doc: str, section: tuple[str, ...], kind: str, subject: str, relation: str,
            answer: str) -> str:
    """16 hex digits that change only when what the fact says (or where) changes."""
    key = "\0".join((doc, "\x1f".join(section), kind, subject, relation, answer))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def span_answer(span: str) -> str:
    """``span`` as an answer: a line break inside it (with the spaces around it, where the
    source wraps a sentence or indents a list item's next line, or a backslash's hard
    break) read as one space; "" when it is no clean span: white space at its ends, a blank
    line, a quote's ``>`` or another run of spaces inside it."""
    joined = re.sub(r"(?:\\|[ \t]*)\n[ \t]*", " ", span)
    if (re.search(r"\n[ \t]*(?:\n|>)", span) or not joined.strip()
            or joined != " ".join(joined.split())):
        return ""
    return joined


def _md() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table").use(deflist_plugin)


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for m in re.finditer("\n", text):
        starts.append(m.end())
    starts.append(len(text))
    return starts


def _joined(children: list[Token], kinds: tuple[str, ...] = ("text", "code_inline")) -> str:
    """The content of the ``kinds`` among inline ``children``, a line break as a space."""
    return "".join(c.content if c.type in kinds else " " if "break" in c.type else ""
                   for c in children)


def _plain(inline: Token) -> str:
    """The visible text of an inline token: text and code, without markup."""
    return " ".join(_joined(inline.children or []).split())


def _mask_code(region: str) -> str:
    """``region`` with the insides of code spans replaced by ``x`` (same length)."""
    return re.sub(r"(`+)(.+?)\1", lambda m: m.group(1) + "x" * len(m.group(2)) + m.group(1),
                  region, flags=re.DOTALL)


@dataclass
class _Block:
    """One inline run (paragraph, heading, table cell, term) and where it lies."""

    inline: Token
    context: str  # "paragraph", "heading", "th", "td", "dt", "dd"
    section: tuple[str, ...]
    start: int  # char offset of the block's first line
    end: int
    first_in_section: bool = False
    sentences: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Doc:
    text: str
    doc: str
    facts: list[Fact] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def add(self, kind: str, subject: str, relation: str, start: int, end: int,
            block: _Block) -> None:
        answer = span_answer(self.text[start:end])
        subject = " ".join(subject.split())
        if not subject or not answer:
            return
        fid = fact_id(self.doc, block.section, kind, subject, relation, answer)
        if fid in self.seen:
            return
        s0, s1 = _sentence_at(block, start, end)
        raw = self.text[s0:s1]
        s0 += len(raw) - len(_LIST_MARKER.sub("", raw, count=1))
        sentence = " ".join(self.text[s0:s1].split())
        cloze = " ".join((self.text[s0:start] + BLANK + self.text[end:s1]).split())
        if kind in _CLOZE_KINDS and len(cloze.split()) < _MIN_CLOZE_WORDS:
            return  # "`____`" alone asks nothing
        self.seen.add(fid)
        self.facts.append(Fact(fid, kind, subject, relation, answer, sentence, self.doc,
                               block.section, start, end, cloze))


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    region = text[start:end]
    masked = _mask_code(region)
    spans, pos = [], 0
    for m in _SENTENCE_END.finditer(masked):
        if _ABBREVIATION.search(masked[max(0, m.start() - 8):m.start()]):
            continue
        spans.append((start + pos, start + m.start()))
        pos = m.end()
    tail = region.rstrip()
    spans.append((start + pos, start + len(tail)))
    return [(a, b) for a, b in spans if b > a]


def _sentence_at(block: _Block, start: int, end: int) -> tuple[int, int]:
    for a, b in block.sentences:
        if a <= start and end <= b:
            return a, b
    return block.start, block.end


def _blocks(text: str) -> Iterator[_Block]:
    """Every inline run outside code blocks, with its section path and char range."""
    tokens = _md().parse(text)
    starts = _line_starts(text)
    path: list[tuple[int, str]] = []
    fresh = False  # no paragraph seen yet since the last heading
    context = "paragraph"
    for i, tok in enumerate(tokens):
        if tok.type in ("heading_open", "th_open", "td_open", "dt_open", "dd_open"):
            context = tok.type[:-5]
        elif tok.type == "dd_close" or (tok.type == "paragraph_open" and context != "dd"):
            context = "paragraph"  # a paragraph inside a definition stays "dd"
        if tok.type != "inline" or tok.map is None:
            continue
        b, e = tok.map
        e = max(e, b + 1)
        block = _Block(tok, context, (), starts[b], starts[min(e, len(starts) - 1)])
        while block.end > block.start and text[block.end - 1] == "\n":
            block.end -= 1
        if context == "heading":
            level = int(tokens[i - 1].tag[1:])
            path = [p for p in path if p[0] < level] + [(level, _plain(tok))]
            fresh = True
        block.section = tuple(p for _, p in path)
        raw = text[block.start:block.end]
        if (context == "paragraph" and not _LIST_MARKER.match(raw)
                and not _LABEL.match(raw.lstrip())):
            block.first_in_section, fresh = fresh, False
        block.sentences = _sentence_spans(text, block.start, block.end)
        yield block


def _children(block: _Block, text: str) -> Iterator[tuple[int, Token, int]]:
    """Each inline child with the char offset of its content (-1 when not found verbatim)
    and its index; a cursor keeps the search in source order."""
    cursor = block.start
    for k, child in enumerate(block.inline.children or []):
        if child.type == "code_inline":
            needle = child.markup + child.content + child.markup
            at = text.find(needle, cursor, block.end)
            if at >= 0:
                cursor = at + len(needle)
                at += len(child.markup)
            yield k, child, at
        elif child.type == "text" and child.content:
            at = text.find(child.content, cursor, block.end)
            if at >= 0:
                cursor = at + len(child.content)
            yield k, child, at


def _heading(block: _Block) -> str:
    return block.section[-1] if block.section else block.inline.content


def _code_and_flags(d: _Doc, block: _Block) -> None:
    """``code`` facts from inline identifiers; ``flag`` facts from prose and inline code;
    ``number`` facts from prose, a number and its unit on either side of a wrapped line too."""
    kids = list(_children(block, d.text))
    for n, (_, child, at) in enumerate(kids):
        if at < 0:
            continue
        content = child.content
        if (child.type == "code_inline" and _IDENT.fullmatch(content)
                and 2 <= len(content) <= 64 and content.lower() not in _LITERALS
                and not content.startswith("--")
                and not any(content in h for h in block.section)):  # the heading gives it away
            d.add("code", _heading(block), "identifier", at, at + len(content), block)
        for m in _FLAG.finditer(content):
            d.add("flag", _heading(block), "flag", at + m.start(), at + m.end(), block)
        if child.type == "text":
            for m in _NUMBER.finditer(content):
                d.add("number", _heading(block), "quantity", at + m.start(), at + m.end(), block)
            if n + 1 < len(kids):
                _wrapped_number(d, block, kids[n], kids[n + 1])


def _wrapped_number(d: _Doc, block: _Block, this: tuple[int, Token, int],
                    after: tuple[int, Token, int]) -> None:
    """A ``number`` fact whose number ends one line of a paragraph and whose unit starts the
    next ("waits 30\nseconds"): two text children with a soft break between them."""
    (k, a, at), (k2, b, bt) = this, after
    children = block.inline.children or []
    if (k2 != k + 2 or b.type != "text" or bt < 0 or children[k + 1].type != "softbreak"):
        return
    joined = a.content + " " + b.content
    for m in _NUMBER.finditer(joined):
        if m.start() < len(a.content) < m.end():
            end = bt + m.end() - len(a.content) - 1
            d.add("number", _heading(block), "quantity", at + m.start(), end, block)


def _config(d: _Doc, block: _Block) -> None:
    """``**Default:** `v``` under a heading that names a key; ```key` defaults to `v```."""
    kids = list(_children(block, d.text))
    children = block.inline.children or []
    for n, (k, child, at) in enumerate(kids):
        if child.type != "code_inline" or at < 0 or len(child.content) > _MAX_ANSWER:
            continue
        before = "".join(c.content for c in children[max(0, k - 3):k] if c.type == "text")
        key = _heading(block)
        if before.strip().rstrip(":").strip().lower() == "default" and " " not in key.strip():
            d.add("config", key, "default", at, at + len(child.content), block)
        elif n >= 2 and _DEFAULT_AFTER.search(kids[n - 1][1].content or ""):
            prev = kids[n - 2][1]
            if prev.type == "code_inline" and _IDENT.fullmatch(prev.content):
                d.add("config", prev.content, "default", at, at + len(child.content), block)


def _definition(d: _Doc, block: _Block, term: _Block | None) -> None:
    """Definition-list terms, and list items that open with a bold or code term."""
    if term is not None and block.context == "dd":
        kids = [x for x in _children(term, d.text) if x[2] >= 0]
        if len(kids) == 1 and len(block.sentences) > 0:
            _, child, at = kids[0]
            first = re.sub(r"^\s*:\s*", "", d.text[slice(*block.sentences[0])])
            d.add("definition", first, "term", at, at + len(child.content), term)
        return
    children = block.inline.children or []
    kids = list(_children(block, d.text))
    if not kids or d.text[block.start:block.end].lstrip()[:1] not in "-*+0123456789":
        return
    if children and children[0].type == "text" and not children[0].content:
        children = children[1:]
    if children[:1] and children[0].type == "strong_open" and len(children) > 3:
        term_tok, rest = children[1], children[3:]
    elif children[:1] and children[0].type == "code_inline" and len(children) > 1:
        term_tok, rest = children[0], children[1:]
    else:
        return
    lead = next((c for c in rest if c.type != "text" or c.content.strip()), None)
    if term_tok.content.endswith(":") and lead is not None and lead.type == "code_inline":
        return  # "**Type:** `string`": a label and its value, not a term and its definition
    text_after, prose = _joined(rest), _joined(rest, ("text",))
    sep = _DEF_SEPARATOR.match(text_after)
    term_text = term_tok.content.rstrip(":").strip()
    if term_tok.content.endswith(":") and not sep:
        sep = re.match(r"\s*", text_after)
    if not sep or len(prose.split()) < 4 or not term_text:
        return
    at = next((a for _, c, a in kids if c is term_tok), -1)
    if at >= 0 and len(term_text) <= _MAX_ANSWER:
        definition = _SENTENCE_END.split(text_after[sep.end():])[0]
        d.add("definition", definition, "term", at, at + len(term_text), block)


def _wraps(line: str, following: str) -> bool:
    """Whether the break after ``line`` wraps one sentence at a column: the next word (the
    start of ``following``) would have made the line longer than :data:`_MIN_WRAPPED_LINE`
    (a short line with room to spare is an item written one per line, a quiz's options),
    and the line is not one link or emphasised item alone followed by another or by a
    capital (a list of links, a bold name over its description)."""
    nxt = following.strip()
    if len(line.strip()) + 1 + len(nxt.split(maxsplit=1)[0] if nxt else "") <= _MIN_WRAPPED_LINE:
        return False
    return not (_LONE_ITEM.fullmatch(line.strip())
                and (nxt[:1].isupper() or nxt[:1] in "[*_" or _LONE_ITEM.fullmatch(nxt)))


def _heading_sentence(d: _Doc, block: _Block) -> None:
    """A section's first sentence, when the section opens with a paragraph."""
    if not block.first_in_section or not block.section or not block.sentences:
        return  # only a section's first paragraph outside lists and quotes
    a, b = block.sentences[0]
    a += len(d.text[a:b]) - len(d.text[a:b].lstrip())
    sentence = d.text[a:b]
    if (len(sentence.split()) >= 4 and b - a <= _MAX_SENTENCE_ANSWER
            and all(_wraps(line, after) for line, after in pairwise(sentence.split("\n")))):
        d.add("heading", block.section[-1], "first sentence", a, b, block)


def _table_row(d: _Doc, cells: list[_Block], headers: list[str]) -> None:
    """``table`` facts: the row's first cell -> each other cell, by column header."""
    if len(cells) < 2 or not headers:
        return
    key = _plain(cells[0].inline)
    cursor = cells[0].start
    for col, cell in enumerate(cells):
        content = cell.inline.content.strip()
        at = d.text.find(content, cursor, cell.end) if content else -1
        if at < 0:
            continue
        cursor = at + len(content)
        if col == 0 or col >= len(headers) or "<" in content or len(content) > _MAX_ANSWER:
            continue
        span = (at, at + len(content))
        code = re.fullmatch(r"(`+)(.+?)\1", content)
        if code:
            span = (at + len(code.group(1)), at + len(code.group(1)) + len(code.group(2)))
        cell.sentences = [(cells[0].start, cells[0].end)]
        d.add("table", key, headers[col], span[0], span[1], cell)


def extract_facts(text: str, doc: str) -> list[Fact]:
    """All facts of one cleaned document ``text``, whose path relative to the docs is ``doc``.

    Deterministic: the same text gives the same facts in the same order (document
    order). Code blocks, HTML and link targets are never mined.
    """
    d = _Doc(text, doc)
    headers: list[str] = []
    row: list[_Block] = []
    term: _Block | None = None
    for block in _blocks(text):
        if block.context == "th":
            headers = [*headers, _plain(block.inline)] if not row else [_plain(block.inline)]
            row = []
            continue
        if block.context == "td":
            if row and block.start != row[0].start:
                _table_row(d, row, headers)
                row = []
            row.append(block)
            continue
        if row:
            _table_row(d, row, headers)
            row, headers = [], []
        if block.context == "dt":
            term = block
            continue
        if block.context == "heading":
            continue
        _heading_sentence(d, block)
        _config(d, block)
        _code_and_flags(d, block)
        _definition(d, block, term)
        term = term if block.context == "dd" else None
    if row:
        _table_row(d, row, headers)
    return d.facts
