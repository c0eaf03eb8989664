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

_INDENTED = re.compile(r"^(?:[ \t]*>)*(?: {4}|[ ]{0,3}\t)", re.M)  # may be indented code


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
    md = MarkdownIt("commonmark", {"maxNesting": 20})  # deeper quotes/lists: no code found
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
    text = "\n".join(lines) + "\n"  # every line ends: a fence's content counts its lines
    if "```" not in text and "~~~" not in text and not (indented_code and _INDENTED.search(text)):
        return []  # nothing could be code: spare the parse
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
        # closed when markdown-it found a closing line: the content is the lines between
        # the two fences. A fence left open runs to the end of its container, and its last
        # line can look like a closer that is not one ("    ```", indented 4 more).
        closed = (end - start >= 2 and tok.content.count("\n") == end - start - 2
                  and _is_closer(lines[end - 1], tok.markup))
        blocks.append(CodeBlock(start, end, True, closed))
    return blocks
