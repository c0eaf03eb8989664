"""Whole-line cleaning rules for prose lines, and the notes kept while cleaning.

:func:`line_rules` handles what only makes sense per line: MDX ``import``/``export``
statements (single or multi-line), ``:::`` admonition and container markers, GitHub
``> [!NOTE]`` alerts, ``[//]: #`` comments, ``{#id}`` heading ids, whole-line template
tags, and prose lines that would read as a code fence.
"""

from __future__ import annotations

import re
from collections import Counter

from doctune.data.jsx import esm_end


class Notes:
    """Warnings and counts of dropped constructs gathered while cleaning one document."""

    def __init__(self, path: str | None, max_warnings: int = 20) -> None:
        self.path = path or "<text>"
        self.warnings: list[str] = []
        self.dropped: Counter[str] = Counter()
        self._max = max_warnings
        self._extra = 0

    def warn(self, line: int, message: str) -> None:
        """Record ``message`` about 1-based ``line`` (only the first few per document)."""
        if len(self.warnings) < self._max:
            self.warnings.append(f"{self.path}:{line}: {message}")
        else:
            self._extra += 1

    def finish(self) -> None:
        """Add a line saying how many warnings were left out."""
        if self._extra:
            self.warnings.append(f"{self.path}: {self._extra} more warnings not shown")
            self._extra = 0


_ADMONITION = re.compile(
    r"(?P<indent>[ \t]*):{3,}[ \t]*(?P<name>[A-Za-z][\w-]*)?[ \t]*"
    r"(?:\[(?P<btitle>[^\]]*)\])?[ \t]*(?:\{(?P<attrs>[^}]*)\})?[ \t]*(?P<title>.*?)[ \t]*"
)
_ATTR_TITLE = re.compile(r"""title=(?:"([^"]*)"|'([^']*)')""")
_GH_ALERT = re.compile(
    r"(?P<quote>[ \t]*(?:>[ \t]?)+)\[!(?P<kind>NOTE|TIP|IMPORTANT|WARNING|CAUTION)\][ \t]*(?P<rest>.*)",
    re.I,
)
# A link definition pointing nowhere is the Markdown comment idiom: [//]: # (text)
_LINK_COMMENT = re.compile(r"[ \t]{0,3}\[[^\]\n]+\]:[ \t]*(?:#|<>)(?:[ \t].*)?")
# The id is anything up to the brace: VitePress takes `{#über–uns}` (an en dash) as well.
_HEADING_ID = re.compile(r"([ \t]{0,3}#{1,6}[ \t].*?)[ \t]*\\?\{[ \t]*#[^\s{}\\]+[ \t]*\\?\}[ \t]*")
# Containers that lay out their content rather than label it (VitePress, Starlight...).
_UNTITLED = frozenset(("code-group", "raw", "v-pre", "tabs", "steps", "columns", "center",
                       "details", "div", "section"))
# Whole-line template tags: Hugo shortcodes, Liquid/Jekyll/GitBook tags, VitePress TOC and
# code imports (VitePress matches `[[toc]]` in any case). Read as Markdown they would print
# as text.
_TEMPLATE_LINE = re.compile(r"[ \t]*(?:\{\{[<%].*[>%]\}\}|\{%.*%\}|\[\[(?i:toc)\]\]|<<< .*)[ \t]*")
_ESM_LINE = re.compile(r"(?:import|export)(?=[\s{*'\"])")
_CANDIDATE = re.compile(r"^[ \t]*(?:import|export|```|~~~|:::|>|\[|#|\{[{%]|<<< )", re.M)


def _admonition(line: str, notes: Notes) -> str | None:
    """The replacement for an admonition marker line, or None if ``line`` is not one."""
    m = _ADMONITION.fullmatch(line)
    if m is None:
        return None
    title = (m["btitle"] or "").strip() or (m["title"] or "").strip()
    if m["attrs"] and not title and (t := _ATTR_TITLE.search(m["attrs"])):
        title = (t[1] or t[2] or "").strip()
    if not m["name"]:
        if title:  # ":::" followed by text is prose, not a marker
            return None
        return ""
    notes.dropped["admonition"] += 1
    if not title and m["name"].lower() in _UNTITLED:
        return ""
    # Without a title, the rendered page shows the type ("Note", "Tip") as the title.
    title = title or m["name"].replace("-", " ").capitalize()
    return f"{m['indent']}**{title}**\n"  # a blank line keeps it apart from the body


_FENCE_LIKE = re.compile(r"([ \t]*(?:>[ \t]?)*)(`{3,}|~{3,})")


def escape_fence_like(line: str) -> str:
    """Escape the backticks/tildes of a prose line that would read as a code fence."""
    m = _FENCE_LIKE.match(line)
    if m is None:
        return line
    return line[: m.end(1)] + "".join("\\" + c for c in m[2]) + line[m.end() :]


def _esm_may_follow(prev: str | None) -> bool:
    """ESM starts a block: after a blank line, a statement, a comment or a tag line."""
    p = (prev or "").strip()
    return not p or (p.startswith("<") and p.endswith(">"))


def line_rules(lines: list[str], *, mdx: bool, notes: Notes) -> list[str | None]:
    """Apply the whole-line rules to a run of prose lines.

    Returns one entry per input line: the new line, ``""`` for a line that became blank
    (it separates blocks), or None for a line deleted outright.
    """
    out: list[str | None] = list(lines)
    text = "\n".join(lines)
    # Only lines starting with one of these can match a rule: find them at C speed.
    starts: list[int] = []
    line_no, pos = 0, 0
    for cand in _CANDIDATE.finditer(text):
        line_no += text.count("\n", pos, cand.start())
        pos = cand.start()
        starts.append(line_no)
    if not starts:
        return out
    offsets: list[int] = []
    pos = 0
    for ln in lines:
        offsets.append(pos)
        pos += len(ln) + 1
    k = -1
    for start in starts:
        if start <= k:  # inside a statement already removed
            continue
        k = start
        line = lines[k]
        lead = len(line) - len(line.lstrip(" \t"))
        # MDX reads ESM at the start of a line only; indented statements are taken too,
        # since they reach column 0 once a JSX wrapper around them is gone.
        if mdx and _ESM_LINE.match(line, lead) and (k == 0 or _esm_may_follow(out[k - 1])):
            end = esm_end(text, offsets[k] + lead)
            if end >= 0:
                last = text.count("\n", offsets[k], end)
                for q in range(k, k + last + 1):
                    out[q] = ""
                notes.dropped["esm"] += 1
                k += last
                continue
        stripped = line.lstrip(" \t")
        if stripped.startswith(("```", "~~~")):
            # Not a fence where it stands (inside an HTML block, say), so it must not
            # become one, nor a code span, when the output is read again.
            out[k] = line = escape_fence_like(line)
            stripped = line.lstrip(" \t")
        if stripped.startswith(":::"):
            rep = _admonition(line, notes)
            if rep is not None:
                out[k] = rep
        elif stripped.startswith(">") and "[!" in line and (m := _GH_ALERT.fullmatch(line)):
            notes.dropped["admonition"] += 1
            quote = m["quote"].rstrip()
            title = f"{quote} **{m['kind'].capitalize()}**\n{quote}"
            out[k] = f"{title}\n{quote} {m['rest']}" if m["rest"].strip() else title
        elif stripped.startswith("[") and "]:" in line and _LINK_COMMENT.fullmatch(line):
            notes.dropped["link_comment"] += 1
            out[k] = ""
        elif stripped.startswith("#") and "{" in line and (m := _HEADING_ID.fullmatch(line)):
            out[k] = m[1]
        elif not mdx and _TEMPLATE_LINE.fullmatch(line):
            notes.dropped["template"] += 1
            out[k] = ""
    return out
