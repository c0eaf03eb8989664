"""Clean the prose (everything outside code blocks) of an MDX or Markdown document.

Two layers:

* :func:`line_rules` works on whole lines: MDX ``import``/``export`` statements,
  ``:::`` admonition markers, GitHub ``> [!NOTE]`` markers, ``[//]: #`` comments and
  ``{#id}`` heading ids.
* :class:`ProseCleaner` reads a run of prose lines left to right, the way MDX does, so
  whichever construct starts first wins: backslash escapes and inline code spans are
  copied as they are, JSX/HTML tags are removed and their children kept, ``{...}``
  expressions are removed (string and number literals become their text), HTML and MDX
  comments are removed. Anything that cannot be read as MDX stays as text, with a warning.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from doctune.data.jsx import esm_end, expression_text, is_comment, scan_tag, skip_braces


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


# --- line rules -------------------------------------------------------------------------

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
_HEADING_ID = re.compile(r"([ \t]{0,3}#{1,6}[ \t].*?)[ \t]*\\?\{[ \t]*#[\w.:-]+[ \t]*\}[ \t]*")
# Containers that lay out their content rather than label it (VitePress, Starlight...).
_UNTITLED = frozenset(("code-group", "raw", "v-pre", "tabs", "steps", "columns", "center",
                       "details", "div", "section"))
# Whole-line template tags: Hugo shortcodes, Liquid/Jekyll/GitBook tags, VitePress TOC and
# code imports. Read as Markdown they would print as text.
_TEMPLATE_LINE = re.compile(r"[ \t]*(?:\{\{[<%].*[>%]\}\}|\{%.*%\}|\[\[toc\]\]|<<< .*)[ \t]*")
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


# --- the left-to-right prose scanner ----------------------------------------------------

_CLOSING_PUNCT = frozenset(".,;:!?)")
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


@lru_cache(maxsize=32)
def _backtick_run(n: int) -> re.Pattern[str]:
    return re.compile(rf"(?<!`)`{{{n}}}(?!`)")


class ProseCleaner:
    """Cleans the prose runs of one document; keeps the JSX tag stack across runs."""

    def __init__(self, *, mdx: bool, notes: Notes) -> None:
        self.mdx = mdx
        self.notes = notes
        self.stack: list[tuple[str, int]] = []  # open JSX tags: (name, line)
        self._open: Counter[str] = Counter()  # names in the stack

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
                if text[:1] in _CLOSING_PUNCT and out and out[-1][-1:] in (" ", "\t"):
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
                emit(s[j:end])
                i = end
            elif c == "<":
                i = self._angle(s, j)
            else:  # "{"
                i = self._brace(s, j)
        return "".join(self._out)

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
        if low in _SPACING_TAGS and end < len(s) and not s[end].isspace():
            out = self._out
            if out and out[-1][-1:] not in (" ", "\t", "\n", ""):
                space = " "
        self._removed(space)
        return end

    def _brace(self, s: str, j: int) -> int:
        """Handle the ``{`` at ``s[j]``; return where reading goes on."""
        notes = self.notes
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
            self._emit(text)
        else:
            self._removed()
        return k
