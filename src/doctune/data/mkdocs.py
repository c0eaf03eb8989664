"""MkDocs (Material + pymdown-extensions) syntax, turned into plain Markdown lines.

Runs before code blocks are found, because it changes indentation: the 4-space-indented
bodies of ``!!! note`` / ``??? tip`` admonitions and ``=== "Tab"`` content tabs are prose
(and may hold fences), so they are dedented. ``/// note | Title`` ... ``///`` blocks lose
their markers; titles become a bold line. ``::: package.module`` API directives,
``--8<--`` snippets, ``{* file *}`` source includes and whole-line ``{% ... %}`` template
tags (mkdocs-macros) are dropped and counted. Removed
lines become blank; a title line ends in a newline (one more blank line after it).
"""

from __future__ import annotations

import re

from doctune.data.indent import columns as _cols
from doctune.data.lines import Notes

_FENCE = re.compile(r"[ \t]*(`{3,}|~{3,})")
_ADMONITION = re.compile(
    # As Python-Markdown reads it: the space after the marker is optional, and the title
    # runs to the last quote on the line (it may hold quotes itself).
    r"(?P<indent>[ \t]*)(?:!!!|\?\?\?\+?)[ \t]?(?P<type>[\w-]+)(?:[ \t]+[\w-]+)*"
    r"(?:[ \t]+\"(?P<title>.*)\")?[ \t]*"
)
_TAB = re.compile(r"(?P<indent>[ \t]*)===[!+]?[ \t]+\"(?P<title>[^\"]*)\"[ \t]*")
_BLOCK_OPEN = re.compile(r"(?P<indent>[ \t]*)/{3,}[ \t]*(?P<type>[\w-]+)(?:[ \t]*\|[ \t]*(?P<title>.*?))?[ \t]*")
_BLOCK_CLOSE = re.compile(r"[ \t]*/{3,}[ \t]*")
_OPTION = re.compile(r"[ \t]+[\w-]+:.*")
_API = re.compile(r"(?P<indent>[ \t]*):::[ \t]+[\w.]+[ \t]*")
_SNIPPET = re.compile(r"[ \t]*;?--8<--(?P<rest>.*)")
_INCLUDE = re.compile(r"[ \t]*\{\*.*\*\}[ \t]*")
_JINJA = re.compile(r"(?<!=)(?:\{\{.*?\}\}|\{%.*?%\})[ \t]*")
_CODE_SPAN = re.compile(r"(`+.*?`+)")
_TEMPLATE = re.compile(r"[ \t]*(?:\{%.*%\}|\{#.*#\})[ \t]*")  # mkdocs-macros (Jinja) lines
_ATTRS = re.compile(
    r"[ \t]*(?<!\\)\{:?[ \t]*(?:(?:[#.][\w-]+|[\w-]+=(?:\"[^\"]*\"|'[^']*'|[^\s}\"']+))[ \t]*)+\}[ \t]*$"
)
_NO_DEFAULT_TITLE = frozenset(("tab", "html", "caption", "figure-caption", "table-caption",
                               "define", "md-render"))


def _dedent(line: str, width: int) -> str:
    """Remove ``width`` columns of leading whitespace (tabs expanded first)."""
    stripped = line.lstrip(" \t")
    if not stripped:
        return ""
    lead = _cols(line)
    return " " * max(lead - width, 0) + stripped


def _title_line(indent: str, title: str) -> str:
    # The blank line after the title keeps it apart from the (dedented) body.
    return f"{indent}**{title.strip()}**\n" if title.strip() else ""


def _body_end(lines: list[str], i: int, width: int) -> int:
    """End (exclusive) of the block under line ``i``: the lines indented ``width``+
    columns (blank lines inside it included, trailing ones not)."""
    j = last = i + 1
    while j < len(lines) and (not lines[j].strip() or _cols(lines[j]) >= width):
        if lines[j].strip():
            last = j + 1
        j += 1
    return last


def _rewrite(lines: list[str], i: int, notes: Notes) -> None:
    """Rewrite line ``i`` (and the block it opens) in place if it is MkDocs syntax."""
    line = lines[i]
    if "{*" in line and _INCLUDE.fullmatch(line):
        notes.dropped["include"] += 1
        lines[i] = ""
    elif "{" in line and _TEMPLATE.fullmatch(line):
        notes.dropped["template"] += 1
        lines[i] = ""
    elif (m := _ADMONITION.fullmatch(line) or _TAB.fullmatch(line)) is not None:
        is_tab = line.lstrip().startswith("===")
        title = m["title"]
        if title is None and not is_tab:  # the page shows the type as the title
            title = m["type"].replace("-", " ").capitalize()
        notes.dropped["tab" if is_tab else "admonition"] += 1
        lines[i] = _title_line(m["indent"], title or "")
        for q in range(i + 1, _body_end(lines, i, _cols(line) + 4)):
            lines[q] = _dedent(lines[q], 4)  # the body is prose, not indented code
    elif _BLOCK_CLOSE.fullmatch(line):
        lines[i] = ""
    elif (m := _BLOCK_OPEN.fullmatch(line)) is not None:
        kind = m["type"].lower()
        title = None if kind == "html" else m["title"]
        if title is None and kind not in _NO_DEFAULT_TITLE:
            title = kind.replace("-", " ").capitalize()
        notes.dropped["tab" if kind == "tab" else "admonition"] += 1
        lines[i] = _title_line(m["indent"], title or "")
        j = i + 1
        while j < len(lines) and _OPTION.fullmatch(lines[j]):  # indented YAML options
            lines[j] = ""
            j += 1
    elif _API.fullmatch(line) is not None:
        notes.dropped["api_directive"] += 1
        for q in range(i, _body_end(lines, i, _cols(line) + 1)):  # with its options
            lines[q] = ""
    elif "{" in line and line.rstrip().endswith("}") and _ATTRS.search(line):
        lines[i] = _ATTRS.sub("", line)
    if ("{{" in lines[i] or "{%" in lines[i]) and lines[i] == line:
        # Inline mkdocs-macros (Jinja) values: the page shows what they render to.
        parts = _CODE_SPAN.split(line)
        for k in range(0, len(parts), 2):
            parts[k], count = _JINJA.subn("", parts[k])
            notes.dropped["template"] += count
        lines[i] = "".join(parts)


def mkdocs_lines(lines: list[str], notes: Notes) -> list[str]:
    """Rewrite MkDocs-only syntax in ``lines``: one entry per input line, where a
    title entry ends in ``\n`` (split the joined result to get lines again)."""
    lines = list(lines)
    fence: str | None = None
    in_snippet = False
    for i in range(len(lines)):
        line = lines[i]  # read now: a block above may have dedented it
        if fence is not None:  # fenced code: left alone (a plain scan is enough here)
            s = line.strip()
            if s.startswith(fence[0]) and s == fence[0] * len(s) and len(s) >= len(fence):
                fence = None
            continue
        fm = _FENCE.match(line)
        if fm and not (fm[1][0] == "`" and "`" in line[fm.end():]):
            fence = fm[1]
            continue
        sm = _SNIPPET.fullmatch(line)
        if in_snippet or sm is not None:
            if in_snippet:
                in_snippet = sm is None
            elif sm is not None:
                notes.dropped["include"] += 1
                in_snippet = not sm["rest"].strip()  # a bare --8<-- opens a list of files
            lines[i] = ""
            continue
        _rewrite(lines, i, notes)
    return lines
