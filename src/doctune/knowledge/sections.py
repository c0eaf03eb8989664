"""A cleaned document cut into sections at its headings: the unit a teacher model reads and
the unit of the synthesis cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from markdown_it import MarkdownIt


@dataclass(frozen=True)
class Section:
    """The text from one heading to the next (a part of it when it is long)."""

    doc: str
    """Path of the document relative to the docs folder."""
    path: tuple[str, ...]
    """Heading path, outermost first (empty before the first heading)."""
    text: str
    """The section's cleaned Markdown, heading line included."""
    start: int
    """Character offset of ``text`` in the cleaned document."""

    @property
    def content_hash(self) -> str:
        """SHA-256 of the text alone: unchanged text hits the cache wherever it moves."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def words(self) -> int:
        """White-space separated words in ``text``."""
        return len(self.text.split())


def _heading_lines(text: str) -> list[tuple[int, int, str]]:
    """(line, level, title) of each heading, read by markdown-it (never inside code)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    out = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map is not None:
            title = " ".join(tokens[i + 1].content.split())
            out.append((tok.map[0], int(tok.tag[1:]), title))
    return out


def _pieces(text: str, max_chars: int) -> list[tuple[int, str]]:
    """``text`` cut at blank lines into pieces of at most ``max_chars`` (one paragraph
    longer than that stays whole): (offset, piece)."""
    if len(text) <= max_chars:
        return [(0, text)]
    pieces: list[tuple[int, str]] = []
    start = pos = 0
    while True:
        nxt = text.find("\n\n", pos + 1)
        end = len(text) if nxt < 0 else nxt + 2
        if end - start > max_chars and pos > start:
            pieces.append((start, text[start:pos]))
            start = pos
        if nxt < 0:
            break
        pos = end
    pieces.append((start, text[start:]))
    return [(o, p) for o, p in pieces if p.strip()]


def split_sections(text: str, doc: str, *, max_chars: int = 6000) -> list[Section]:
    """The sections of one cleaned document, in order, each at most ``max_chars`` long
    (cut at paragraph breaks) and never empty."""
    offsets = [0]
    for raw in text.split("\n"):
        offsets.append(offsets[-1] + len(raw) + 1)
    heads = _heading_lines(text)
    bounds: list[tuple[int, tuple[str, ...]]] = [(0, ())] if not heads or heads[0][0] > 0 else []
    path: list[tuple[int, str]] = []
    for line, level, title in heads:
        path = [p for p in path if p[0] < level] + [(level, title)]
        bounds.append((line, tuple(t for _, t in path)))
    out = []
    for k, (line, hpath) in enumerate(bounds):
        begin = min(offsets[line], len(text))
        end = min(offsets[bounds[k + 1][0]], len(text)) if k + 1 < len(bounds) else len(text)
        for off, piece in _pieces(text[begin:end], max_chars):
            if piece.strip():
                out.append(Section(doc, hpath, piece, begin + off))
    return out
