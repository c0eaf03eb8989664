"""Block structure from markdown-it: where the code blocks are, and indentation repair.

MDX reads Markdown with two CommonMark rules turned off: indented code and HTML blocks
(a ``<Tabs>`` line is JSX, and the fence right after it is still a fence). With those
rules off, markdown-it-py also finds fences indented any amount, inside lists or JSX,
as MDX does. Plain Markdown and MkDocs keep indented code on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock


def _paragraph(state: StateBlock, start: int, end: int, silent: bool) -> bool:
    """markdown-it's paragraph rule, except that with indented code off (MDX) a line
    indented 4+ spaces may interrupt the paragraph (a fence nested in JSX), as in MDX."""
    next_line = start + 1
    terminators = state.md.block.ruler.getRules("paragraph")
    end = state.lineMax
    old_parent = state.parentType
    state.parentType = "paragraph"
    while next_line < end:
        if state.isEmpty(next_line):
            break
        # A code block would start here; after a paragraph it is a lazy continuation.
        # markdown-it checks the indent alone; MDX only when indented code is on.
        if state.is_code_block(next_line) or state.sCount[next_line] < 0:
            next_line += 1
            continue
        if any(rule(state, next_line, end, True) for rule in terminators):
            break
        next_line += 1
    state.line = next_line
    token = state.push("paragraph_open", "p", 1)
    token.map = [start, next_line]
    token = state.push("inline", "", 0)
    token.content = state.getLines(start, next_line, state.blkIndent, False).strip()
    token.map = [start, next_line]
    token.children = []
    state.push("paragraph_close", "p", -1)
    state.parentType = old_parent
    return True


@lru_cache(maxsize=8)
def block_parser(*, indented_code: bool, html_blocks: bool) -> MarkdownIt:
    """A block-only CommonMark parser (inline parsing off: only line maps are needed)."""
    md = MarkdownIt("commonmark", {"maxNesting": 100})
    off = ["lheading", "reference"]
    if not indented_code:
        off.append("code")
    if not html_blocks:
        off.append("html_block")
    md.disable(off)
    md.disable(["inline", "text_join"])
    if not indented_code:
        md.block.ruler.at("paragraph", _paragraph)
    return md


@dataclass(frozen=True)
class CodeBlock:
    """Lines ``start`` up to (not including) ``end`` hold one code block."""

    start: int
    end: int
    fenced: bool
    closed: bool


def _is_closer(line: str, marker: str) -> bool:
    s = line.strip().lstrip(">").strip()
    return len(s) >= len(marker) and s == s[0] * len(s) and s[0] == marker[0]


def code_blocks(lines: list[str], *, indented_code: bool, html_blocks: bool) -> list[CodeBlock]:
    """Find the fenced (and, for Markdown, indented) code blocks in ``lines``."""
    text = "\n".join(lines)
    if "```" not in text and "~~~" not in text and not indented_code:
        return []
    tokens = block_parser(indented_code=indented_code, html_blocks=html_blocks).parse(text)
    blocks: list[CodeBlock] = []
    for tok in tokens:
        if tok.type not in ("fence", "code_block") or tok.map is None:
            continue
        start, end = tok.map
        end = min(end, len(lines))
        if tok.type == "code_block":
            blocks.append(CodeBlock(start, end, False, True))
            continue
        closed = end - start >= 2 and _is_closer(lines[end - 1], tok.markup)
        blocks.append(CodeBlock(start, end, True, closed))
    return blocks


# --- indentation repair ---------------------------------------------------------------

_BLOCK_STARTS = frozenset((
    "paragraph_open", "heading_open", "fence", "hr", "bullet_list_open",
    "ordered_list_open", "blockquote_open", "table_open", "code_block", "html_block",
))
_ITEM = re.compile(r"( *)([-+*]|\d{1,9}[.)])( *)")


def _indent(line: str) -> int:
    """Leading spaces of ``line``; -1 if its indentation holds a tab."""
    stripped = line.lstrip(" ")
    if stripped.startswith("\t"):
        return -1
    return len(line) - len(stripped)


def _content_column(line: str) -> int:
    m = _ITEM.match(line)
    if m is None:
        return _indent(line)
    marker_end = len(m[1]) + len(m[2])
    spaces = len(m[3])
    if spaces == 0 or spaces > 4 or marker_end + spaces >= len(line.rstrip()):
        return marker_end + 1
    return marker_end + spaces


def _explained(lines: list[str], k: int, indent: int) -> bool:
    """Whether line ``k`` (indented ``indent``) sits less than 4 columns past the content
    column of a list item above it that is still open. A quick check that spares the
    full parse for the common ``1. Step`` + indented paragraph case."""
    floor = indent
    for q in range(k - 1, -1, -1):
        line = lines[q]
        if not line.strip():
            continue
        ind = _indent(line)
        if ind < 0:
            return False
        if ind < floor:
            if _ITEM.match(line):
                col = _content_column(line)
                if col <= indent < col + 4:
                    return True
                if col <= floor:
                    return False
            floor = ind
            if floor == 0:
                return False
    return False


def needs_dedent(lines: list[str], code: list[bool]) -> bool:
    """Whether some block may be indented 4+ columns past its container (see
    :func:`dedent_blocks`); False means the full parse can be skipped."""
    prev_blank = True
    prev_code = False
    for k, (line, is_code) in enumerate(zip(lines, code, strict=True)):
        starts = (is_code and not prev_code) or (not is_code and prev_blank)
        if starts and line[:1] in (" ", "\t") and line.strip():
            ind = _indent(line)
            if ind < 0 or (ind >= 4 and not _explained(lines, k, ind)):
                return True
        prev_blank = not is_code and not line.strip()
        prev_code = is_code
    return False


def dedent_blocks(lines: list[str]) -> list[str]:
    """Pull blocks indented 4+ columns past their container back to the container's column.

    In MDX, indentation only nests (inside JSX or lists); once the JSX is gone, a block
    indented 4 spaces would read as indented code in CommonMark. Each such block (and
    everything in it) is shifted left by its excess indentation. A fence shifted as a
    whole keeps the same code content. Blocks inside block quotes are left alone.
    """
    if not any(ln.startswith(("    ", "\t")) or ln.startswith(" \t") for ln in lines):
        return lines
    tokens = block_parser(indented_code=False, html_blocks=False).parse("\n".join(lines))
    shift = [0] * len(lines)
    containers: list[tuple[int | None, int]] = []  # (content column or None, first line)
    for tok in tokens:
        if tok.nesting == -1:
            if tok.type in ("list_item_close", "blockquote_close"):
                containers.pop()
            continue
        if tok.map is None:
            continue
        start, end = tok.map
        col, first = containers[-1] if containers else (0, -1)
        if tok.type in _BLOCK_STARTS and col is not None and start != first:
            indent = _indent(lines[start])
            if indent - col >= 4:
                for q in range(start, min(end, len(lines))):
                    shift[q] += indent - col
        if tok.type == "list_item_open":
            inner = None if col is None else _content_column(lines[start])
            containers.append((inner if inner is None or inner >= 0 else None, start))
        elif tok.type == "blockquote_open":
            containers.append((None, start))
    if not any(shift):
        return lines
    out = []
    for line, d in zip(lines, shift, strict=True):
        if d:
            have = len(line) - len(line.lstrip(" "))
            line = line[min(d, have):]
        out.append(line)
    return out
