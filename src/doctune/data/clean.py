"""Turn one MDX / Markdown / MkDocs / VitePress document into clean Markdown for training.

The output keeps what a reader of the rendered page sees, as Markdown (headings, lists,
links, emphasis, tables, code). Code is never touched: fenced and indented code blocks
and inline code spans come out byte for byte (a fence nested in JSX may be shifted left
as a whole, which keeps its content). The steps, in order:

1. line ends to LF; front matter removed (its ``title`` kept for a ``# Title``);
2. MkDocs or VitePress syntax rewritten (:mod:`doctune.data.mkdocs`,
   :mod:`doctune.data.vitepress`), for that dialect;
3. code blocks found with markdown-it, configured the way the dialect reads Markdown
   (:mod:`doctune.data.blocks`); ``<pre>`` elements in the prose turned into fenced
   blocks (:mod:`doctune.data.rawhtml`), and the code blocks found again;
4. each run of prose between code blocks cleaned line by line, then left to right
   (:mod:`doctune.data.mdx`);
5. blocks left over-indented by removed JSX pulled back, trailing spaces and blank-line
   runs trimmed, the title heading added.

Backslash escapes such as ``\\<`` and ``\\{`` are kept: they already read as ``<`` and
``{`` in Markdown, and unescaped they would turn into tags or expressions when the
output is read again (so cleaning stays idempotent).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from doctune.data.blocks import CodeBlock, code_blocks
from doctune.data.dialect import DIALECTS, detect_dialect
from doctune.data.indent import columns, dedent_blocks, needs_dedent
from doctune.data.lines import Notes, escape_fence_like, line_rules
from doctune.data.mdx import ProseCleaner
from doctune.data.mkdocs import mkdocs_lines
from doctune.data.rawhtml import pre_fences
from doctune.data.vitepress import vitepress_lines

__all__ = ["CleanResult", "clean_markdown", "detect_dialect"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class CleanResult:
    """The cleaned document and what happened while cleaning it."""

    text: str
    """Cleaned Markdown: LF line ends, one final newline (``""`` for an empty document)."""
    dialect: str
    """The dialect actually used: ``"mdx"``, ``"markdown"``, ``"mkdocs"`` or ``"vitepress"``."""
    warnings: list[str] = field(default_factory=list)
    """``"rel/path.md:LINE: message"`` for each thing that could not be read as intended."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Counts of removed constructs, e.g. ``{"include": 2, "jsx_tag": 14}``."""


_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_H1 = re.compile(r" {0,3}#(?:[ \t]|$)")
_SETEXT_H1 = re.compile(r" {0,3}=+[ \t]*")
# In a title, what would read as a tag or an expression (`<form>`, `{x}`) is escaped.
_TITLE_ESCAPES = re.compile(r"[<>{}]")


def _front_matter(lines: list[str], notes: Notes) -> tuple[int, str | None]:
    """Return (number of front-matter lines at the top, its title or None)."""
    if not lines:
        return 0, None
    first = lines[0].rstrip()
    if first not in ("---", "+++"):
        return 0, None
    closers = ("---", "...") if first == "---" else ("+++",)
    end = next((k for k in range(1, len(lines)) if lines[k].rstrip() in closers), -1)
    if end < 0:
        notes.warn(1, f"front matter opened with `{first}` is never closed; kept as text")
        return 0, None
    notes.dropped["front_matter"] += 1
    body = "\n".join(lines[1:end])
    data: Any
    try:
        if first == "---":
            data = yaml.load(body, Loader=_YAML_LOADER)
        else:
            data = tomllib.loads(body)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError, RecursionError) as e:
        kind = "YAML" if first == "---" else "TOML"
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        notes.warn(1, f"front matter is not valid {kind} ({detail}); removed, no title taken")
        return end + 1, None
    title = data.get("title") if isinstance(data, dict) else None
    if isinstance(title, (str, int, float)) and not isinstance(title, bool):
        title = " ".join(str(title).split())
        return end + 1, title or None
    return end + 1, None


def _has_h1(lines: list[str], code: list[bool]) -> bool:
    prev_text = False
    for line, is_code in zip(lines, code, strict=True):
        if is_code:
            prev_text = False
            continue
        if _H1.match(line) or (prev_text and _SETEXT_H1.fullmatch(line)):
            return True
        prev_text = bool(line.strip())
    return False


def _settle(text: str, mdx: bool, vue: bool, notes: Notes, rounds: int = 3) -> str:
    """Clean ``text`` again until nothing changes, so that cleaning is idempotent.

    Removing a construct can expose another one: a tag line gone leaves an ``import``
    line after a blank line (now ESM), ``<<b>x>`` leaves ``<x>``. Later rounds count
    what they drop but repeat no warnings."""
    for _ in range(rounds):
        scratch = Notes(None)
        rules = line_rules(text.split("\n"), mdx=mdx, notes=scratch)
        again = ProseCleaner(mdx=mdx, vue=vue, notes=scratch).clean(
            "\n".join(ln for ln in rules if ln is not None), 1)
        if again == text:
            break
        notes.dropped.update(scratch.dropped)
        text = again
    return text


def _code_kept(lines: list[str], code: list[bool]) -> bool:
    """Whether every code line is still inside a code block when ``lines`` is read again."""
    now = [False] * len(lines)
    for b in code_blocks(lines, indented_code=True, html_blocks=True):
        now[b.start : b.end] = [True] * (b.end - b.start)
    return all(n or not c for n, c in zip(now, code, strict=True))


def _clean_prose(
    lines: list[str], code: list[bool], origin: list[int], mdx: bool, vue: bool, notes: Notes
) -> tuple[list[str], list[bool]]:
    """Clean every run of non-code lines; code lines pass through untouched."""
    prose = ProseCleaner(mdx=mdx, vue=vue, notes=notes)
    out: list[str] = []
    out_code: list[bool] = []
    n = len(lines)
    i = 0
    while i < n:
        if code[i]:
            out.append(lines[i])
            out_code.append(True)
            i += 1
            continue
        j = i
        while j < n and not code[j]:
            j += 1
        before = "\n".join(lines[i:j])
        run = "\n".join(ln for ln in line_rules(lines[i:j], mdx=mdx, notes=notes) if ln is not None)
        cleaned = prose.clean(run, origin[i])
        if cleaned != before:  # something was removed: it may have exposed more
            cleaned = _settle(cleaned, mdx, vue, notes)
        cleaned_lines = cleaned.split("\n")
        out.extend(cleaned_lines)
        out_code.extend([False] * len(cleaned_lines))
        i = j
    prose.finish()
    return out, out_code


_EMPTY_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]*")


def _join_empty_items(lines: list[str], code: list[bool]) -> tuple[list[str], list[bool]]:
    """Drop the blank lines after a list item left empty (its text was a tag), when the
    blocks nested under it follow: a list item may start with one blank line only, so
    they would leave the list (and a nested fence would turn into indented code)."""
    drop: set[int] = set()
    for k, line in enumerate(lines):
        if code[k] or "\n" in line or not _EMPTY_ITEM.fullmatch(line):
            continue
        q = k + 1
        while q < len(lines) and not code[q] and not lines[q].strip():
            q += 1
        if q > k + 1 and q < len(lines) and columns(lines[q]) >= len(line.rstrip()) + 1:
            drop.update(range(k + 1, q))
    if not drop:
        return lines, code
    keep = [k for k in range(len(lines)) if k not in drop]
    return [lines[k] for k in keep], [code[k] for k in keep]


def _tidy(lines: list[str], code: list[bool]) -> tuple[list[str], list[bool]]:
    """Strip trailing spaces outside code and collapse runs of blank lines.

    A prose line that would open a fence when read again (its ``` came out of an HTML
    block, or a tag before it was removed) gets its first backtick escaped."""
    out: list[str] = []
    out_code: list[bool] = []
    blank = True  # drop leading blank lines
    for line, is_code in zip(lines, code, strict=True):
        if not is_code:
            line = line.rstrip()
            line = escape_fence_like(line)
            if not line:
                if not blank:
                    out.append("")
                    out_code.append(False)
                blank = True
                continue
        out.append(line)
        out_code.append(is_code)
        blank = False
    while out and not out[-1].strip():
        out.pop()
        out_code.pop()
    return out, out_code


END_LIST = "<!-- -->"
"""The line put between a list and an indented fence that a removed line used to keep out of
it (CommonMark's own advice for ending a list): an empty comment, shown as nothing."""


def _end_lists(lines: list[str], code: list[bool]) -> tuple[list[str], list[bool]]:
    """Keep each fence out of a list it did not belong to.

    A removed line at the start of a line (``<Tabs>`` after ``- item``) may be all that
    ended a list: read again, an indented fence after it joins the list item, and a code
    line less indented than the item's content ends the item and the code with it. Before
    such a fence goes an empty comment, which ends the list as the removed line did (only
    where that brings every code line back into code)."""
    openers = [k for k in range(1, len(lines))
               if code[k] and not code[k - 1] and lines[k][:1].isspace()]
    if not openers or _code_kept(lines, code):
        return lines, code
    for k in reversed(openers):
        tried = [*lines[:k], END_LIST, "", *lines[k:]]
        tried_code = [*code[:k], False, False, *code[k:]]
        if lines[k - 1].strip():
            tried.insert(k, "")
            tried_code.insert(k, False)
        if _code_kept(tried, tried_code):
            return tried, tried_code
    return lines, code


def _split_entries(entries: list[str], origin: list[int]) -> tuple[list[str], list[int]]:
    """Lines from per-line entries that may hold several lines, and each one's source line."""
    parts = [e.split("\n") for e in entries]
    return [ln for p in parts for ln in p], [origin[k] for k, p in enumerate(parts) for _ in p]


def _code_lines(blocks: list[CodeBlock], n: int) -> list[bool]:
    """For each of ``n`` lines, whether it is inside one of ``blocks``."""
    code = [False] * n
    for b in blocks:
        code[b.start : b.end] = [True] * (b.end - b.start)
    return code


def _clean_once(text: str, dialect: str, notes: Notes, title_heading: bool) -> tuple[str, bool]:
    """One cleaning pass. Also says whether the result holds indented code next to
    cleaned prose (Markdown/MkDocs), where a second pass may read the blocks anew."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    skip, title = _front_matter(lines, notes)
    lines[:skip] = [""] * skip
    origin = list(range(1, len(lines) + 1))  # line number in the source, for warnings
    if dialect in ("mkdocs", "vitepress"):
        rewrite = mkdocs_lines if dialect == "mkdocs" else vitepress_lines
        lines, origin = _split_entries(rewrite(lines, notes), origin)
    mdx = dialect == "mdx"
    # VitePress reads HTML blocks the CommonMark way, as plain Markdown does.
    html_blocks = dialect in ("markdown", "vitepress")
    blocks = code_blocks(lines, indented_code=not mdx, html_blocks=html_blocks)
    code = _code_lines(blocks, len(lines))
    entries = pre_fences(lines, code, jsx=mdx)
    if entries is not None:
        lines, origin = _split_entries(entries, origin)
        blocks = code_blocks(lines, indented_code=not mdx, html_blocks=html_blocks)
        code = _code_lines(blocks, len(lines))
    for b in blocks:
        if b.fenced and not b.closed:
            notes.warn(origin[b.start], "code fence is never closed; everything after it is "
                                        "kept as code")
    lines, code = _clean_prose(lines, code, origin, mdx, dialect == "vitepress", notes)
    if needs_dedent(lines, code, mdx=mdx):
        shifted = dedent_blocks(lines, None if mdx else code)
        # Outside MDX, a shifted paragraph can pull real indented code into a list item;
        # then the code matters more than the paragraph, and nothing is shifted.
        if mdx or _code_kept(shifted, code):
            lines = shifted
    lines, code = _tidy(*_join_empty_items(lines, code))
    lines, code = _end_lists(lines, code)
    if title and title_heading and not _has_h1(lines, code):
        heading = "# " + _TITLE_ESCAPES.sub(lambda m: "\\" + m.group(), title)
        lines = [heading, "", *lines] if lines else [heading]
    out = "\n".join(lines)
    return (out + "\n" if out else ""), any(not b.fenced for b in blocks)


def clean_markdown(
    text: str, *, dialect: str = "mdx", path: str | None = None, title_heading: bool = True
) -> CleanResult:
    """Clean one document written in ``dialect`` (``"mdx"``, ``"markdown"``, ``"mkdocs"``
    or ``"vitepress"``).

    ``path`` names the document in warnings (``"guide/intro.mdx:12: ..."``). With
    ``title_heading``, a front-matter ``title`` becomes a ``# Title`` line when the
    document has no H1. Never raises on odd input; problems become warnings.
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    notes = Notes(path)
    out, unsettled = _clean_once(text, dialect, notes, title_heading)
    # Indented code (Markdown, MkDocs) depends on the blocks around it; when removed HTML
    # changed those, clean again until the output reads the same (idempotent).
    for _ in range(3):
        if not unsettled:
            break
        scratch = Notes(path)
        again, unsettled = _clean_once(out, dialect, scratch, title_heading)
        if again == out:
            break
        notes.dropped.update(scratch.dropped)
        out = again
    notes.finish()
    return CleanResult(
        text=out,
        dialect=dialect,
        warnings=notes.warnings,
        dropped=dict(sorted(notes.dropped.items())),
    )
