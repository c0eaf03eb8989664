"""Clean the prose (everything outside code blocks) of an MDX or Markdown document.

:class:`ProseCleaner` reads a run of prose lines left to right, the way MDX does, so
whichever construct starts first wins: backslash escapes and inline code spans are
copied as they are, JSX/HTML tags are removed and their children kept, ``{...}``
expressions are removed (string and number literals become their text), HTML and MDX
comments are removed. Anything that cannot be read as MDX stays as text, with a warning.
The whole-line rules that run before it live in :mod:`doctune.data.lines`.

In every dialect, a ``<code>`` element becomes one inline code span, and two sibling
elements (``</span><span>``: texts a page shows one at a time) never glue their words
together. With ``vue`` (VitePress), ``{{ }}`` interpolations are removed with the
sentence that shows their value, except inside ``v-pre`` elements, where they are text.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Any

from doctune.data.jsx import expression_text, is_comment, scan_tag, skip_braces
from doctune.data.lines import Notes
from doctune.data.rawhtml import code_span
from doctune.data.vitepress import INTERPOLATION, drop_interpolated

_LITERAL_ESCAPES = re.compile(r"[<{}]")
_CLOSING_PUNCT = frozenset(".,;:!?)")
# A list marker, heading marker or quote alone on its line: the space after it must stay.
_MARKER_ONLY = re.compile(r"(?:\A|\n)[ \t]*(?:[-*+]|\d{1,9}[.)]|#{1,6}|>)[ \t]+\Z")
_ASCII_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_SPECIAL = re.compile(r"[\\`<{\]]")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_AUTOLINK = re.compile(
    r"<(?:[A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*|[\w.!#$%&'*+/=?^`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>"
)
_LINK_DEST = re.compile(
    r"\]\((?:<[^<>\n]*>|(?!<)[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"
    r"(?:[ \t\n]+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?[ \t]*\)"
)
_MD_COMMENT = re.compile(r"\{\s*/\*.*?\*/\s*\}", re.S)
# Tags after which the words on either side belong to different blocks or cells.
_SPACING_TAGS = frozenset((
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "dialog",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "iframe", "img", "li", "main", "nav", "ol", "p", "pre",
    "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul", "video",
    "audio", "source", "picture", "center",
))
_VOID = frozenset((
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr",
))
_DROP_CONTENT = frozenset(("script", "style"))
_CODE_CLOSE = re.compile(r"</code\s*>", re.I)
_BADGE_TEXT = re.compile(r"""\stext=(?:"([^"]*)"|'([^']*)')""")
_V_PRE = re.compile(r"\sv-pre(?=[\s/>=])")
_MARK = "\ufdd0"  # stands for a removed interpolation until its sentence goes (a noncharacter)


@lru_cache(maxsize=32)
def _backtick_run(n: int) -> re.Pattern[str]:
    return re.compile(rf"(?<!`)`{{{n}}}(?!`)")


class ProseCleaner:
    """Cleans the prose runs of one document; keeps the JSX tag stack across runs."""

    def __init__(self, *, mdx: bool, notes: Notes, vue: bool = False) -> None:
        self.mdx = mdx
        self.vue = vue
        self.notes = notes
        self.stack: list[tuple[str, int]] = []  # open JSX tags: (name, line)
        self._open: Counter[str] = Counter()  # names in the stack
        self._vpre: list[list[Any]] = []  # open v-pre elements: [name, depth of that name]
        self._close_end = -1  # where the last closing tag removed ends

    def finish(self) -> None:
        """Warn about JSX tags that were opened and never closed."""
        for name, line in self.stack[:3]:
            self.notes.warn(line, f"<{name}> is never closed; read with Markdown rules")
        self.stack.clear()
        self._open.clear()

    def _balance(self, tag_name: str, closing: bool, self_closing: bool, j: int) -> None:
        """Track open tags to warn where the MDX structure is broken (tags go either way)."""
        if self_closing or tag_name.lower() in _VOID:
            return
        stack = self.stack
        if not closing:
            stack.append((tag_name, self._line_at(j)))
            self._open[tag_name] += 1
        elif stack and stack[-1][0] == tag_name:
            stack.pop()
            self._open[tag_name] -= 1
        elif self._open[tag_name] > 0:
            while stack and stack[-1][0] != tag_name:
                name, opened = stack.pop()
                self._open[name] -= 1
                self.notes.warn(opened, f"<{name}> is never closed; read with Markdown rules")
            stack.pop()
            self._open[tag_name] -= 1
        else:
            self.notes.warn(self._line_at(j),
                            f"</{tag_name}> closes nothing; read with Markdown rules")

    # Output state of the run being cleaned (set by clean()).
    _out: list[str]
    _strip: bool
    _src: str
    _first: int
    _memo: dict[int, int]
    _pos: int
    _line: int

    def _line_at(self, j: int) -> int:
        """1-based source line of offset ``j`` (counted on from the last call: linear)."""
        if j < self._pos:
            self._pos, self._line = 0, self._first
        self._line += self._src.count("\n", self._pos, j)
        self._pos = j
        return self._line

    def _emit(self, text: str) -> None:
        if self._strip:
            out = self._out
            if not out or out[-1][-1:] in (" ", "\t", "\n"):
                text = text.lstrip(" \t")
                # "see <Since v="4" />." reads "see.", not "see ."
                if text[:1] in _CLOSING_PUNCT and out and out[-1][-1:] in (" ", "\t") \
                        and not _MARKER_ONLY.search("".join(out[-4:])):
                    out[-1] = out[-1].rstrip(" \t")
            if not text:
                return
            self._strip = False
        self._out.append(text)

    def _removed(self, before: str = "") -> None:
        """Note a removal: spaces that would now double up are dropped from what follows."""
        if before:
            self._out.append(before)
        self._strip = True

    def clean(self, s: str, first_line: int) -> str:
        """Return the prose run ``s`` (1-based ``first_line``) with MDX/HTML removed."""
        self._out, self._strip, self._src, self._first = [], False, s, first_line
        self._memo = {}
        self._pos, self._line = 0, first_line
        self._close_end = -1
        self._marks = self.vue and _MARK not in s
        self._interps: list[str] = []  # the text of each interpolation marked
        blank_at = -1  # start of the next blank line: code spans stop there
        no_close: dict[int, int] = {}  # backtick run length -> blank_at it has no closer before
        n = len(s)
        i = 0
        emit = self._emit
        while i < n:
            m = _SPECIAL.search(s, i)
            if m is None:
                emit(s[i:])
                break
            j = m.start()
            if j > i:
                emit(s[i:j])
            c = s[j]
            if c == "\\":
                if j + 1 < n and s[j + 1] in _ASCII_PUNCT:
                    emit(s[j : j + 2])
                    i = j + 2
                else:
                    emit("\\")
                    i = j + 1
            elif c == "`":
                k = j
                while k < n and s[k] == "`":
                    k += 1
                if blank_at < k:
                    limit_m = _BLANK_LINE.search(s, k)
                    blank_at = limit_m.start() if limit_m else n
                close = None
                if no_close.get(k - j) != blank_at:  # known: no run this long before blank_at
                    close = _backtick_run(k - j).search(s, k, blank_at)
                    if close is None:
                        no_close[k - j] = blank_at
                end = close.end() if close else k
                emit(s[j:end])
                i = end
            elif c == "]":
                lm = _LINK_DEST.match(s, j) if s.startswith("(", j + 1) else None
                end = lm.end() if lm else j + 1
                if lm is None or not self._empty_link():
                    emit(s[j:end])
                i = end
            elif c == "<":
                i = self._angle(s, j)
            else:  # "{"
                i = self._brace(s, j)
        out = "".join(self._out)
        return drop_interpolated(out, _MARK, self._interps) if self._interps else out

    def _angle(self, s: str, j: int) -> int:
        """Handle the ``<`` at ``s[j]``; return where reading goes on."""
        notes = self.notes
        if s.startswith("<!--", j):
            k = s.find("-->", j + 4)
            notes.dropped["html_comment"] += 1
            self._removed()
            if k < 0:
                notes.warn(self._line_at(j),
                           "`<!--` comment is never closed; removed to the end of the line")
                nl = s.find("\n", j)
                return len(s) if nl < 0 else nl
            return k + 3
        am = _AUTOLINK.match(s, j)
        if am is not None:
            self._emit(am.group())
            return am.end()
        tag = scan_tag(s, j, jsx=self.mdx, memo=self._memo)
        if tag is None:
            nxt = s[j + 1 : j + 2]
            if self.mdx and (nxt.isalpha() or nxt == "/"):
                snippet = s[j : j + 20].split("\n", 1)[0]
                notes.warn(self._line_at(j),
                           f"cannot read `{snippet}` as a JSX tag; kept as text (Markdown rules)")
            self._emit("<")
            return j + 1
        name = tag.name
        low = name.lower()
        if self.mdx:
            self._balance(name, tag.closing, tag.self_closing, j)
        end = tag.end
        if self.vue:
            self._track_vpre(s, j, name, tag.closing, tag.self_closing)
            badge = _BADGE_TEXT.search(s, j, end) if name == "Badge" and tag.self_closing else None
            if badge is not None:  # VitePress's <Badge text="..." /> shows its text
                self.notes.dropped["jsx_tag"] += 1
                self._emit(badge[1] or badge[2] or "")
                return end
        if low == "code" and not tag.closing and not tag.self_closing:
            k = self._code_element(s, j, end)
            if k >= 0:
                return k
        if low in _DROP_CONTENT and not tag.closing and not tag.self_closing:
            close = re.compile(rf"</{re.escape(name)}\s*>", re.I).search(s, end)
            if close is None:
                notes.warn(self._line_at(j), f"<{name}> is never closed; its content is kept")
            else:
                end = close.end()
                if self.mdx:
                    self._balance(name, True, False, close.start())
        key = "html_tag" if name[:1].islower() and "." not in name else "jsx_tag"
        notes.dropped[key] += 1
        space = ""
        if end < len(s) and not s[end].isspace() and self._glued():
            # Sibling elements (`</span><span>`) hold texts of their own: never one word.
            sibling = j == self._close_end and not tag.closing and not tag.self_closing \
                and s[end] not in _CLOSING_PUNCT and low not in _VOID
            if low in _SPACING_TAGS or sibling:
                space = " "
        if tag.closing:
            self._close_end = end
        self._removed(space)
        return end

    def _empty_link(self) -> bool:
        """If the output ends in the ``[`` of a link whose text is all gone (it held a
        badge or an icon), remove that ``[`` and say so: the link shows nothing."""
        out = self._out
        k = len(out) - 1
        while k >= 0 and not out[k].strip():
            k -= 1
        last = out[k].rstrip() if k >= 0 else ""
        if not last.endswith("[") or last.endswith(("\\[", "![")) or last.startswith("`"):
            return False
        out[k] = last[:-1]
        del out[k + 1 :]
        self.notes.dropped["empty_link"] += 1
        self._removed()
        return True

    def _line_start(self) -> str:
        """The output line being written, up to now."""
        tail: list[str] = []
        for piece in reversed(self._out):
            tail.append(piece)
            if "\n" in piece:
                break
        return "".join(reversed(tail)).rsplit("\n", 1)[-1]

    def _glued(self) -> bool:
        """Whether text emitted now would join the last word of the output."""
        out = self._out
        return bool(out) and out[-1][-1:] not in (" ", "\t", "\n", "")

    def _track_vpre(self, s: str, j: int, name: str, closing: bool, self_closing: bool) -> None:
        """Follow the elements marked ``v-pre``: inside them ``{{ }}`` is literal text."""
        if self_closing or name.lower() in _VOID:
            return
        vpre = self._vpre
        if vpre and vpre[-1][0] == name:
            vpre[-1][1] += -1 if closing else 1
            if vpre[-1][1] == 0:
                vpre.pop()
        elif not closing and _V_PRE.search(s, j, s.find(">", j) + 1 or len(s)):
            vpre.append([name, 1])

    def _code_element(self, s: str, j: int, end: int) -> int:
        """Turn ``<code>...</code>`` (opening tag ``s[j:end]``) into an inline code span;
        return where reading goes on, or -1 when the element is not closed."""
        blank = _BLANK_LINE.search(s, end)
        close = _CODE_CLOSE.search(s, end, blank.start() if blank else len(s))
        if close is None:
            return -1
        body = s[end : close.start()]
        if self.vue and not self._vpre:
            body = INTERPOLATION.sub("", body)
        span = code_span(body, jsx=self.mdx)
        if "|" in span and self._line_start().lstrip().startswith("|"):
            span = span.replace("|", "\\|")  # in a table row, GFM reads `\|` as `|`
        if self.mdx:
            self._balance(s[close.start() + 2 : close.end() - 1].strip(), True, False, close.start())
        self.notes.dropped["html_tag"] += 2
        if not span:
            self._removed()
        elif self._glued() and (self._out[-1].endswith("`") or j == self._close_end):
            self._emit(" " + span)  # two code spans side by side stay two
        else:
            self._emit(span)
        self._close_end = close.end()
        return close.end()

    def _brace(self, s: str, j: int) -> int:
        """Handle the ``{`` at ``s[j]``; return where reading goes on."""
        notes = self.notes
        if self.vue and s.startswith("{{", j):
            return self._interpolation(s, j)
        if not self.mdx:
            cm = _MD_COMMENT.match(s, j)
            if cm is None:
                self._emit("{")
                return j + 1
            notes.dropped["mdx_comment"] += 1
            self._removed()
            return cm.end()
        k = skip_braces(s, j, memo=self._memo)
        if k < 0:
            notes.warn(self._line_at(j), "`{` starts an expression that is never closed; "
                                         "kept as text (Markdown rules)")
            self._emit("{")
            return j + 1
        body = s[j + 1 : k - 1]
        if is_comment(body):
            notes.dropped["mdx_comment"] += 1
            self._removed()
            return k
        text = expression_text(body)
        if text is None:
            notes.dropped["expression"] += 1
            self._removed()
        elif text:
            # The string was literal text: keep `<` and braces from reading as MDX.
            self._emit(_LITERAL_ESCAPES.sub(r"\\\g<0>", text))
        else:
            self._removed()
        return k

    def _interpolation(self, s: str, j: int) -> int:
        """Handle the Vue ``{{`` at ``s[j]``; return where reading goes on."""
        m = INTERPOLATION.match(s, j)
        if self._vpre or m is None:
            # Literal braces: escaped so that they do not read as one when read again.
            self._emit("\\{")
            return j + 1
        self.notes.dropped["interpolation"] += 1
        if self._marks:
            self._out.append(_MARK)
            self._interps.append(m.group())
        self._removed()
        return m.end()
