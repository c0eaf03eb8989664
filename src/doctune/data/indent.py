"""Indentation repair after MDX cleaning, so the output reads the same in CommonMark.

MDX has no indented code: indentation only nests content inside JSX or lists, and a fence
may open or close at any indent. Once the JSX wrappers are gone, a block indented 4+
columns past its container would read as indented code in CommonMark, and a closing
fence indented 4+ columns would not close. :func:`dedent_blocks` shifts such blocks left
(a fence moved as a whole keeps its code content) and lines closing fences up with their
opening fence. Columns count tabs to the next multiple of 4, as CommonMark does.
"""

from __future__ import annotations

import re

from doctune.data.blocks import block_parser

_BLOCK_STARTS = frozenset((
    "paragraph_open", "heading_open", "fence", "hr", "bullet_list_open",
    "ordered_list_open", "blockquote_open", "table_open", "code_block", "html_block",
))
_ITEM = re.compile(r"( *)([-+*]|\d{1,9}[.)])(?=[ \t]|$)( *)")
_CLOSER = re.compile(r"[ \t]*(?:`{3,}|~{3,})[ \t]*")


def columns(line: str) -> int:
    """Width of the leading whitespace of ``line`` (a tab reaches the next multiple of 4)."""
    col = 0
    for ch in line:
        if ch == " ":
            col += 1
        elif ch == "\t":
            col += 4 - col % 4
        else:
            break
    return col


def remove_columns(line: str, width: int) -> str:
    """``line`` without its first ``width`` columns of leading whitespace.

    A tab that reaches past ``width`` leaves spaces for the rest of its width; later
    characters (tabs included) stay as they are, as CommonMark keeps them in code.
    """
    col = 0
    for i, ch in enumerate(line):
        if col >= width:
            return line[i:]
        if ch == " ":
            col += 1
        elif ch == "\t":
            step = 4 - col % 4
            if col + step > width:
                return " " * (col + step - width) + line[i + 1 :]
            col += step
        else:
            return line[i:]
    return ""


def _expand_lead(line: str) -> str:
    """``line`` with its leading whitespace written as spaces."""
    body = line.lstrip(" \t")
    return " " * columns(line) + body


def _content_column(line: str) -> int:
    """Column where the content of the list item starting on ``line`` begins."""
    m = _ITEM.match(_expand_lead(line))
    if m is None:
        return columns(line)
    marker_end = len(m[1]) + len(m[2])
    spaces = len(m[3])
    if spaces == 0 or spaces > 4 or marker_end + spaces >= len(line.strip()) + len(m[1]):
        return marker_end + 1
    return marker_end + spaces


def _explained(lines: list[str], k: int, indent: int) -> bool:
    """Whether line ``k`` (``indent`` columns) sits less than 4 columns past the content
    column of a list item above it that is still open. A quick check that spares the
    full parse for the common case of an indented paragraph under ``1. Step``; when in
    doubt it says False and the full parse decides."""
    floor = indent  # the least indentation met between the item and line k
    for q in range(k - 1, -1, -1):
        line = lines[q]
        if not line.strip():
            continue
        ind = columns(line)
        if ind >= floor:
            continue
        expanded = _expand_lead(line)
        item = _ITEM.match(expanded)
        if item is not None:
            if item.end() >= len(expanded.rstrip()):
                return False  # an empty item ends at the blank line after it
            col = _content_column(line)
            return col <= floor and indent < col + 4  # a shallower line closed it
        floor = ind
        if floor == 0:
            return False
    return False


def needs_dedent(lines: list[str], code: list[bool], *, mdx: bool = True) -> bool:
    """Whether :func:`dedent_blocks` may change anything; False spares the parse.

    Outside MDX, only prose can be at fault (code was found with indented code on)."""
    prev_blank = True
    prev_code = False
    n = len(lines)
    for k, (line, is_code) in enumerate(zip(lines, code, strict=True)):
        if line[:1] in (" ", "\t") and line.strip():
            starts = (is_code and not prev_code and mdx) or (not is_code and prev_blank)
            closes = mdx and is_code and (k + 1 == n or not code[k + 1]) and _CLOSER.fullmatch(line)
            ind = columns(line)
            if (starts or closes) and ind >= 4 and not _explained(lines, k, ind):
                return True
        prev_blank = not is_code and not line.strip()
        prev_code = is_code
    return False


def dedent_blocks(lines: list[str], code: list[bool] | None = None) -> list[str]:
    """Shift blocks indented 4+ columns past their container back to its column.

    Each such block moves left by its excess indentation, but no line moves left of the
    block's container (so a fence's content keeps the same code). Closing fences end up
    no deeper than their opening fence. Blocks inside block quotes are left alone.

    With ``code`` (Markdown and MkDocs, where indented code is real), only prose that
    would now read as indented code is shifted: ``code`` flags the lines that were code
    in the source.
    """
    markdown = code is not None
    tokens = block_parser(indented_code=markdown, html_blocks=False).parse("\n".join(lines))
    n = len(lines)
    # Whitespace-only lines count too: inside a fence they are code, and CommonMark
    # strips their indentation like any other line's.
    cols = [columns(ln) for ln in lines]
    shift = [0] * n
    fences: list[tuple[int, int, int]] = []  # (opener, closer, fence column)
    containers: list[tuple[int | None, int]] = []  # (content column or None, first line)
    for tok in tokens:
        if tok.nesting == -1:
            if tok.type in ("list_item_close", "blockquote_close"):
                containers.pop()
            continue
        if tok.map is None:
            continue
        start, end = tok.map[0], min(tok.map[1], n)
        col, first = containers[-1] if containers else (0, -1)
        if markdown:
            offending = tok.type == "code_block" and code is not None and not code[start]
        else:
            offending = tok.type in _BLOCK_STARTS and start != first
        if col is not None and offending:
            excess = cols[start] - col
            if excess >= 4:
                for q in range(start, end):
                    if code is None or not code[q]:  # real indented code stays code
                        shift[q] += min(excess, max(0, cols[q] - col))
        if tok.type == "fence" and col is not None and end - start >= 2:
            last = lines[end - 1].strip()
            if last and last[0] == tok.markup[0] and last == last[0] * len(last) \
                    and len(last) >= len(tok.markup):
                # The fence's own column: after the list marker when it opens an item.
                fence_col = col if start == first else cols[start]
                fences.append((start, end - 1, fence_col))
        if tok.type == "list_item_open":
            containers.append((None if col is None else _content_column(lines[start]), start))
        elif tok.type == "blockquote_open":
            containers.append((None, start))
    out = list(lines)
    for q in range(n):
        if shift[q]:
            out[q] = remove_columns(out[q], shift[q])
    for opener, closer, fence_col in fences:
        want = fence_col - shift[opener]
        if columns(out[closer]) > want:
            out[closer] = " " * want + out[closer].lstrip(" \t")
    return out
