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

from doctune.data.mdx import Notes

_FENCE = re.compile(r"[ \t]*(`{3,}|~{3,})")
_ADMONITION = re.compile(
    r"(?P<indent>[ \t]*)(?:!!!|\?\?\?\+?)[ \t]+(?P<type>[\w-]+)(?:[ \t]+[\w-]+)*"
    r"(?:[ \t]+\"(?P<title>[^\"]*)\")?[ \t]*"
)
_TAB = re.compile(r"(?P<indent>[ \t]*)===[!+]?[ \t]+\"(?P<title>[^\"]*)\"[ \t]*")
_BLOCK_OPEN = re.compile(r"(?P<indent>[ \t]*)/{3,}[ \t]*(?P<type>[\w-]+)(?:[ \t]*\|[ \t]*(?P<title>.*?))?[ \t]*")
_BLOCK_CLOSE = re.compile(r"[ \t]*/{3,}[ \t]*")
_OPTION = re.compile(r"[ \t]+[\w-]+:.*")
_API = re.compile(r"(?P<indent>[ \t]*):::[ \t]+[\w.]+[ \t]*")
_SNIPPET = re.compile(r"[ \t]*;?--8<--(?P<rest>.*)")
_INCLUDE = re.compile(r"[ \t]*\{\*.*\*\}[ \t]*")
_TEMPLATE = re.compile(r"[ \t]*(?:\{%.*%\}|\{#.*#\})[ \t]*")  # mkdocs-macros (Jinja) lines
_ATTRS = re.compile(
    r"[ \t]*\{:?[ \t]*(?:(?:[#.][\w-]+|[\w-]+=(?:\"[^\"]*\"|'[^']*'|[^\s}\"']+))[ \t]*)+\}[ \t]*$"
)
_NO_DEFAULT_TITLE = frozenset(("tab", "html", "caption", "figure-caption", "table-caption",
                               "define", "md-render"))


def _cols(line: str) -> int:
    """Width of the leading whitespace, tabs counted to the next multiple of 4."""
    col = 0
    for ch in line:
        if ch == " ":
            col += 1
        elif ch == "\t":
            col += 4 - col % 4
        else:
            break
    return col


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


def mkdocs_lines(lines: list[str], notes: Notes) -> list[str]:
    """Rewrite MkDocs-only syntax in ``lines``: one entry per input line, where a
    title entry ends in ``\n`` (split the joined result to get lines again)."""
    lines = list(lines)
    n = len(lines)
    fence: str | None = None
    in_snippet = False
    i = 0
    while i < n:
        line = lines[i]
        if fence is not None:
            s = line.strip()
            if s.startswith(fence[0]) and s == fence[0] * len(s) and len(s) >= len(fence):
                fence = None
            i += 1
            continue
        fm = _FENCE.match(line)
        if fm and not (fm[1][0] == "`" and "`" in line[fm.end():]):
            fence = fm[1]
            i += 1
            continue
        sm = _SNIPPET.fullmatch(line)
        if in_snippet or sm is not None:
            if in_snippet:
                in_snippet = sm is None
            elif sm is not None:
                notes.dropped["include"] += 1
                in_snippet = not sm["rest"].strip()  # a bare --8<-- opens a list of files
            lines[i] = ""
            i += 1
            continue
        if "{*" in line and _INCLUDE.fullmatch(line):
            notes.dropped["include"] += 1
            lines[i] = ""
        elif "{" in line and _TEMPLATE.fullmatch(line):
            notes.dropped["template"] += 1
            lines[i] = ""
        elif (m := _ADMONITION.fullmatch(line) or _TAB.fullmatch(line)) is not None:
            is_tab = line.lstrip().startswith("===")
            title = m["title"]
            if title is None and not is_tab:
                title = m["type"].replace("-", " ").capitalize()
            notes.dropped["tab" if is_tab else "admonition"] += 1
            lines[i] = _title_line(m["indent"], title or "")
            body = _cols(line) + 4
            j = last = i + 1
            while j < n and (not lines[j].strip() or _cols(lines[j]) >= body):
                if lines[j].strip():
                    last = j + 1
                j += 1
            for q in range(i + 1, last):
                lines[q] = _dedent(lines[q], 4)
        elif _BLOCK_CLOSE.fullmatch(line):
            lines[i] = ""
        elif (m := _BLOCK_OPEN.fullmatch(line)) is not None:
            kind = m["type"].lower()
            title = m["title"]
            if kind == "html":
                title = None
            elif title is None and kind not in _NO_DEFAULT_TITLE:
                title = kind.replace("-", " ").capitalize()
            notes.dropped["tab" if kind == "tab" else "admonition"] += 1
            lines[i] = _title_line(m["indent"], title or "")
            j = i + 1
            while j < n and _OPTION.fullmatch(lines[j]):  # indented YAML options
                lines[j] = ""
                j += 1
        elif (m := _API.fullmatch(line)) is not None:
            notes.dropped["api_directive"] += 1
            lines[i] = ""
            body = _cols(line) + 1
            j = i + 1
            while j < n and (not lines[j].strip() or _cols(lines[j]) >= body):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1
            for q in range(i + 1, j):
                lines[q] = ""
        elif "{" in line and line.rstrip().endswith("}") and _ATTRS.search(line):
            lines[i] = _ATTRS.sub("", line)
        i += 1
    return lines
