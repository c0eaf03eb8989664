"""VitePress syntax, turned into plain Markdown lines before code blocks are found.

VitePress reads Markdown with markdown-it (HTML blocks and indented code on, as in
CommonMark) plus its own containers and fence options. This pass rewrites, line by line:

* ``::: tip|info|warning|danger|details [Title]`` containers (any number of colons,
  nested, indented): the marker lines go, the title stays as a bold line (the type when
  there is no title, as the page shows it); ``{open}`` and other attributes go;
* ``::: code-group``: the markers go and each fence's ``[label]`` (the tab title) becomes
  a bold line above its fence;
* ``::: v-pre``: becomes a ``<div v-pre>`` block, so that the ``{{ }}`` inside stays
  literal text, as on the page;
* fence info strings keep only the language: ``ts twoslash [vite.config.ts] {1,3}``,
  ``js{4}`` and ``js:line-numbers`` become ``ts``, ``js`` and ``js``. The code itself is
  never touched.

The blocks are read with markdown-it and VitePress's containers (mdit-py-plugins), as
VitePress reads them: a ``:::`` or a fence inside code or an HTML block is left alone, and
a fence left open at the end of its container is closed where the container closes.

``[[toc]]``, ``<<< @/file`` snippet imports and heading ``{#id}`` anchors are handled by
the whole-line rules (:mod:`doctune.data.lines`), ``<script>``/``<style>`` blocks, Vue
components and ``{{ }}`` interpolations by the prose cleaner (:mod:`doctune.data.mdx`).
Like :func:`doctune.data.mkdocs.mkdocs_lines`, the result has one entry per input line,
where an entry may hold several lines joined by ``\\n``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from markdown_it import MarkdownIt
from mdit_py_plugins.container import container_plugin

from doctune.data.lines import Notes

_FENCE = re.compile(r"(?P<indent>[ \t>]*)(?P<marker>`{3,}|~{3,})")
_LEAD = re.compile(r"[ \t>]*")
_LANG = re.compile(r"[^\s{\[:]+")
_LABEL = re.compile(r"\[([^\]\n]*)\]")
_ATTRS = re.compile(r"[ \t]*\{[^{}]*\}[ \t]*$")
# Containers that show their type as a title when they have none (as VitePress does).
_TITLED = ("tip", "info", "warning", "danger", "details")
_LAYOUT = ("code-group", "raw", "v-pre")


def fence_info(info: str) -> tuple[str, str | None]:
    """The language of a VitePress fence info string, and its ``[label]`` if any.

    >>> fence_info("ts twoslash [vite.config.ts] {1,3}")
    ('ts', 'vite.config.ts')
    """
    info = info.strip()
    m = _LANG.match(info)
    lang = m.group() if m and not info.startswith("[") else ""
    label = _LABEL.search(info)
    return lang, (label[1].strip() or None) if label else None


def _bold(indent: str, title: str) -> str:
    """A title line (and a blank line after it, which keeps it apart from the body)."""
    title = title.strip().replace("*", r"\*")
    return f"{indent}**{title}**\n" if title else ""


def _is(name: str) -> Callable[[str, str], bool]:
    """A container validator: the params start with ``name`` (``:::tip`` or ``::: tip``)."""
    return lambda params, _markup: params.strip().split(" ", 1)[0].lower() == name


@lru_cache(maxsize=1)
def _reader() -> MarkdownIt:
    """markdown-it as VitePress configures it, as far as blocks go: CommonMark with HTML,
    plus its containers."""
    md = MarkdownIt("commonmark", {"html": True})
    for name in (*_TITLED, *_LAYOUT):
        container_plugin(md, name, validate=_is(name))
    return md


def _container_open(line: str, name: str, info: str, notes: Notes) -> str:
    """The replacement for the line opening container ``name`` (``info``: its params)."""
    notes.dropped["admonition"] += 1
    indent = _LEAD.match(line)[0]  # type: ignore[index]
    if name == "v-pre":
        return f"{indent}<div v-pre>\n"
    if name in _LAYOUT:
        return ""
    title = _ATTRS.sub("", info.strip()[len(name) :].strip())
    return _bold(indent, title or name.replace("-", " ").capitalize())


def _fence_open(line: str, info: str, in_group: bool, notes: Notes) -> str:
    """The fence opener ``line`` with only its language left (and, in a code group, its
    label on a line above it)."""
    m = _FENCE.match(line)
    lang, label = fence_info(info)
    if m is None or lang == info.strip():
        return line
    notes.dropped["fence_meta"] += 1
    opener = f"{m['indent']}{m['marker']}{lang}"
    # the label right above its fence (a fence ends a paragraph): a blank line between them
    # would leave the label alone in a list item whose marker an HTML tag shared
    return (_bold(m["indent"], label) + opener) if in_group and label else opener


def vitepress_lines(lines: list[str], notes: Notes) -> list[str]:
    """Rewrite VitePress-only syntax in ``lines``: one entry per input line (an entry
    may hold several lines joined by ``\\n``: split the joined result to get lines).

    The blocks are read with markdown-it and VitePress's containers, as VitePress reads
    them, so a ``:::`` or a fence inside code or inside an HTML block is left alone."""
    out = list(lines)
    if not any(":::" in ln or "```" in ln or "~~~" in ln for ln in lines):
        return out
    groups: list[tuple[str, int]] = []  # containers open around a token: (name, closer line)
    for tok in _reader().parse("\n".join(lines)):
        if tok.type.startswith("container_"):
            name = tok.type[len("container_") : tok.type.rindex("_")]
            if tok.nesting == 1 and tok.map is not None:
                start, end = tok.map
                out[start] = _container_open(lines[start], name, tok.info, notes)
                closes = end < len(lines) and lines[end].strip().startswith(":::")
                groups.append((name, end if closes else -1))
                if closes:
                    lead = _LEAD.match(lines[end])[0]  # type: ignore[index]
                    out[end] = f"{lead}</div>" if name == "v-pre" else ""
            elif tok.nesting == -1 and groups:
                groups.pop()
        elif tok.type == "fence" and tok.map is not None:
            start, end = tok.map
            out[start] = _fence_open(lines[start], tok.info, any(
                g == "code-group" for g, _ in groups), notes)
            last = lines[end - 1].strip(" \t>") if end - start >= 2 else ""
            closed = last[:1] == tok.markup[0] and last == last[0] * len(last) \
                and len(last) >= len(tok.markup)
            if not closed and groups and groups[-1][1] >= 0:
                # The container's end closed the fence: its marker line now closes it.
                at = groups[-1][1]
                fence = _FENCE.match(lines[start])
                lead = fence["indent"] if fence else ""
                out[at] = "\n".join(x for x in (lead + tok.markup, out[at]) if x)
    return out


# --- {{ }} interpolations ------------------------------------------------------------------

INTERPOLATION = re.compile(r"\{\{(?:(?!\n[ \t]*\n).)*?\}\}", re.S)
"""A Vue ``{{ expression }}`` (it may not cross a blank line)."""
_PREFIX = re.compile(r"[ \t]*(?:(?:>[ \t]?)+|#{1,6}(?=[ \t]|$)|(?:[-*+]|\d{1,9}[.)])(?=[ \t]|$))*[ \t]*")
_ITEM = re.compile(r"[ \t]*(?:>[ \t]?)*[ \t]*(?:[-*+]|\d{1,9}[.)])(?=[ \t]|$)")
_SENTENCE_END = re.compile(r"[.!?](?=[ \t]|$)|\|")
_SPAN = re.compile(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)")


def _spans(line: str) -> list[tuple[int, int]]:
    return [m.span() for m in _SPAN.finditer(line)]


def _outside(pos: int, spans: list[tuple[int, int]], *, forward: bool) -> int:
    """``pos`` moved out of any code span it falls in (forward: to its end)."""
    for a, b in spans:
        if a < pos < b:
            return b if forward else a
    return pos


def _drop_sentences(line: str, mark: str, body: int) -> str:
    """``line`` without the sentences that hold ``mark``; ``body``: where its text starts."""
    while (p := line.find(mark)) >= 0:
        spans = _spans(line)
        ends = [m for m in _SENTENCE_END.finditer(line, body)
                if _outside(m.start(), spans, forward=True) == m.start()]
        start = max((m.end() for m in ends if m.end() <= p), default=body)
        end = min((m.start() if m.group() == "|" else m.end() for m in ends if m.start() > p),
                  default=len(line))
        head, tail = line[:start], line[end:].lstrip(" \t")
        if len(head) > body:  # text before it: one space apart from the text after
            head = head.rstrip(" \t")
        line = head + (" " if tail and len(head) > body and head[-1] != " " else "") + tail
    return line


def _item_holds_more(lines: list[str], k: int, body: int) -> bool:
    """Whether list item line ``k`` may have nested blocks after it (lines indented to
    its text, or the end of this run of prose, where code may follow)."""
    if not _ITEM.match(lines[k]):
        return False
    nxt = next((ln for ln in lines[k + 1 :] if ln.strip()), None)
    return nxt is None or len(nxt) - len(nxt.lstrip(" \t")) >= body


def drop_interpolated(text: str, mark: str, originals: list[str]) -> str:
    """Remove from ``text`` each sentence holding ``mark`` (a removed interpolation).

    The page shows a value there that the docs do not hold: "The version is {{ v }}."
    would read "The version is." Sentences end at ``.``/``!``/``?`` and at table cell
    borders, within one line. A list item, heading or quote line left empty goes too,
    unless it is a list item whose nested blocks follow: then its interpolations stay,
    escaped (``originals`` holds the text of each mark, in order)."""
    lines = text.split("\n")
    out: list[str] = []
    seen = 0
    for k, line in enumerate(lines):
        n = line.count(mark)
        if not n:
            out.append(line)
            continue
        mine, seen = originals[seen : seen + n], seen + n
        body = _PREFIX.match(line).end()  # type: ignore[union-attr]
        new = _drop_sentences(line, mark, body)
        if new[body:].strip() or not new[:body].strip():
            out.append(new)
        elif _item_holds_more(lines, k, body):
            for original in mine:
                line = line.replace(mark, "\\" + original, 1)
            out.append(line)
    return "\n".join(out)
