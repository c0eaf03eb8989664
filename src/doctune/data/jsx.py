"""Scanners for the parts of MDX that are JavaScript: tags, ``{...}`` expressions, ESM.

No Python library parses JSX, so these are small hand-written scanners. Each takes the
text and a start index and returns the index just past the construct, or -1 when the
construct is not complete (the caller then reads the text with Markdown rules). They
balance ``{}``, ``()`` and ``[]`` and skip JavaScript strings, template literals and
comments, so a ``}`` or ``/>`` inside ``"..."`` never ends anything early.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OPEN = {"{": "}", "(": ")", "[": "]"}
_CLOSE = frozenset("})]")
_INTERESTING = re.compile(r"""[{}()\[\]'"`/]""")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def skip_string(s: str, i: int) -> int:
    """Skip a JavaScript string starting with the quote at ``s[i]``; -1 if unterminated."""
    quote = s[i]
    j = i + 1
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == quote:
            return j + 1
        if c == "\n":
            return -1
        j += 1
    return -1


def skip_template(s: str, i: int) -> int:
    """Skip a template literal starting at the backtick ``s[i]``, including ``${...}`` parts."""
    j = i + 1
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
        elif c == "`":
            return j + 1
        elif c == "$" and s.startswith("{", j + 1):
            j = skip_braces(s, j + 1)
            if j < 0:
                return -1
        else:
            j += 1
    return -1


MAX_SPAN = 200_000  # no expression or tag is longer; bounds the work on broken input
MAX_STRING = 20_000  # nor a quoted attribute value


def skip_braces(
    s: str, i: int, limit: int | None = None, memo: dict[int, int] | None = None
) -> int:
    """Skip a balanced bracket group opening at ``s[i]`` (``{``, ``(`` or ``[``).

    Returns the index after the matching closer, or -1 when it is never closed before
    ``limit`` (default: end of ``s``, at most :data:`MAX_SPAN` on) or a closer does not
    match. With ``memo`` (one dict per string), the result for every ``{`` met on the
    way is remembered, so reading many unclosed braces stays linear.
    """
    if memo is not None and i in memo:
        return memo[i]
    end = min(len(s) if limit is None else limit, i + MAX_SPAN)
    stack = [(_OPEN[s[i]], i)]
    j = i + 1
    while stack:
        m = _INTERESTING.search(s, j, end)
        if m is None:
            j = -1
            break
        j = m.start()
        c = s[j]
        if c in _OPEN:
            stack.append((_OPEN[c], j))
            j += 1
        elif c in _CLOSE:
            want, at = stack.pop()
            if c != want:
                j = -1
                break
            j += 1
            if memo is not None and want == "}":
                memo[at] = j
        elif c in "'\"":
            j = skip_string(s, j)
        elif c == "`":
            j = skip_template(s, j)
        elif s.startswith("//", j):
            nl = s.find("\n", j)
            j = end if nl < 0 else nl
        elif s.startswith("/*", j):
            k = s.find("*/", j + 2, end)
            j = -1 if k < 0 else k + 2
        else:
            j += 1
        if j < 0 or j > end:
            j = -1
            break
    if j < 0:
        if memo is not None:
            for want, at in stack:
                if want == "}":
                    memo[at] = -1
        return -1
    return j


# --- tags -------------------------------------------------------------------------------

_NAME = re.compile(r"[^\W\d][\w$.:-]*|[$_][\w$.:-]*")
_ATTR_NAME = re.compile(r"[^\s\"'<>/={}`]+")
_UNQUOTED = re.compile(r"[^\s\"'=<>`{}]+")
_WS = re.compile(r"\s*")


@dataclass(frozen=True)
class Tag:
    """A JSX or HTML tag found by :func:`scan_tag`."""

    end: int
    """Index just past the closing ``>``."""
    name: str
    """Tag name as written (``""`` for a fragment ``<>``)."""
    closing: bool
    self_closing: bool


def _skip_ws(s: str, j: int, end: int) -> int:
    m = _WS.match(s, j, end)
    assert m is not None
    return m.end()


def scan_tag(
    s: str, i: int, end: int | None = None, *, jsx: bool = True,
    memo: dict[int, int] | None = None,
) -> Tag | None:
    """Read the JSX/HTML tag starting at ``s[i] == "<"``, or return None if it is not one.

    Accepts what MDX accepts (expression attributes ``={...}`` with nested braces, spread
    ``{...props}``, strings holding ``>`` or ``/>``, fragments ``<>``) and what HTML
    accepts (unquoted values). A blank line outside a value ends the search. Fragments
    are JSX only (``jsx=False`` reads ``<>`` as text, as HTML does).
    """
    stop = min(len(s) if end is None else end, i + MAX_SPAN)
    j = i + 1
    closing = s.startswith("/", j)
    if closing:
        j += 1
    m = _NAME.match(s, j, stop)
    if m is None:
        if jsx and s.startswith(">", j):  # fragment <> or </>
            return Tag(j + 1, "", closing, False)
        return None
    name = m.group()
    j = m.end()
    while True:
        k = _skip_ws(s, j, stop)
        if "\n" in s[j:k] and _BLANK_LINE.search(s, j, k + 1):
            return None
        j = k
        if j >= stop:
            return None
        c = s[j]
        if c == ">":
            return Tag(j + 1, name, closing, False)
        if c == "/" and s.startswith(">", j + 1) and not closing:
            return Tag(j + 2, name, False, True)
        if closing:
            return None
        if c == "{":
            j = skip_braces(s, j, stop, memo)
            if j < 0:
                return None
            continue
        am = _ATTR_NAME.match(s, j, stop)
        if am is None:
            return None
        j = _skip_ws(s, am.end(), stop)
        if not s.startswith("=", j):
            continue
        j = _skip_ws(s, j + 1, stop)
        if j >= stop:
            return None
        c = s[j]
        if c in "'\"":
            k = s.find(c, j + 1, min(stop, j + MAX_STRING))
            if k < 0:
                return None
            j = k + 1
        elif c == "{":
            j = skip_braces(s, j, stop, memo)
            if j < 0:
                return None
        else:
            um = _UNQUOTED.match(s, j, stop)
            if um is None:
                return None
            j = um.end()


# --- expressions ----------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?|0[xXbBoO][\da-fA-F_]+|Infinity|NaN)")
_ONLY_COMMENTS = re.compile(r"\s*(?:/\*.*?\*/\s*|//[^\n]*\n\s*)+", re.S)
_JS_ESCAPES = {"n": "\n", "t": "\t", "r": "", "b": "", "f": "", "v": "", "0": ""}
_JS_ESCAPE = re.compile(r"\\(u\{[0-9a-fA-F]+\}|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|\n|.)", re.S)


def _unescape_js(body: str) -> str:
    def repl(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] in "ux" and len(e) > 1:
            code = int(e.strip("ux{}"), 16)
            return chr(code) if code < 0x110000 else ""
        if e == "\n":
            return ""
        return _JS_ESCAPES.get(e, e)

    return _JS_ESCAPE.sub(repl, body)


def expression_text(body: str) -> str | None:
    """What the expression ``{body}`` renders as text, or None when that is unknown.

    String and template literals (without ``${}``) give their value, numbers and
    ``Infinity``/``NaN`` their digits, ``true``/``false``/``null``/``undefined`` and
    comments render nothing (``""``). Anything else (a variable, a call) is None.
    """
    b = body.strip()
    if not b or _ONLY_COMMENTS.fullmatch(body + "\n"):
        return ""
    if b in ("true", "false", "null", "undefined"):
        return ""
    if len(b) >= 2 and b[0] in "'\"" and skip_string(b, 0) == len(b):
        return _unescape_js(b[1:-1])
    if len(b) >= 2 and b[0] == "`" and "${" not in b and skip_template(b, 0) == len(b):
        return _unescape_js(b[1:-1])
    if _NUMBER.fullmatch(b):
        return b
    return None


def is_comment(body: str) -> bool:
    """Whether the expression ``{body}`` holds only comments (``{/* ... */}``)."""
    return bool(body.strip()) and _ONLY_COMMENTS.fullmatch(body + "\n") is not None


# --- ESM --------------------------------------------------------------------------------

_IMPORT = re.compile(r"import\s+(?:type\s+)?(?:[\w$*{][^'\"]*?\s*from\s*)?['\"][^'\"\n]+['\"]")
_EXPORT = re.compile(
    r"export\s+(?:default\b|const\b|let\b|var\b|function\b|async\b|class\b|type\b|"
    r"interface\b|enum\b|\{|\*)"
)
_CONTINUES = re.compile(r"(?:[,=(\[{+\-*/&|?:.]|=>|\bfrom|\bimport|\bexport|\bas)\s*\Z")
_NEXT_CONTINUES = re.compile(r"[ \t]*(?:[.?:)\]}]|from\b|as\b)")


def esm_end(s: str, i: int, max_lines: int = 400) -> int:
    """If an ESM ``import``/``export`` statement starts at ``s[i]``, return where it ends.

    The end is the index of the newline after the statement (or ``len(s)``). Returns -1
    when the text is not a complete ``import ... from "x"`` or ``export const/function/
    default ...`` statement, so prose starting with the word "import" is left alone.
    """
    if not (s.startswith("import", i) or s.startswith("export", i)):
        return -1
    depth_end = i
    n = len(s)
    lines = 0
    while True:
        nl = s.find("\n", depth_end)
        line_end = n if nl < 0 else nl
        # Walk the line, jumping over bracket groups, strings and comments.
        j = depth_end
        while True:
            m = _INTERESTING.search(s, j, line_end)
            if m is None:
                break
            k = m.start()
            c = s[k]
            if c in _OPEN:
                j = skip_braces(s, k)
            elif c in "'\"":
                j = skip_string(s, k)
            elif c == "`":
                j = skip_template(s, k)
            elif s.startswith("/*", k):
                e = s.find("*/", k + 2)
                j = -1 if e < 0 else e + 2
            elif s.startswith("//", k):
                j = line_end
            elif c in _CLOSE:
                return -1
            else:
                j = k + 1
            if j < 0:
                return -1
            if j > line_end:  # a group spanning lines: continue on its last line
                nl = s.find("\n", j)
                line_end = n if nl < 0 else nl
        stmt = s[i:line_end]
        lines += 1
        if line_end >= n or lines >= max_lines:
            break
        nl2 = s.find("\n", line_end + 1)
        nxt = s[line_end + 1 : n if nl2 < 0 else nl2]
        if not nxt.strip():
            break
        if _CONTINUES.search(stmt) or _NEXT_CONTINUES.match(nxt):
            depth_end = line_end + 1
            continue
        break
    stmt = s[i:line_end]
    if s.startswith("import", i):
        if not _IMPORT.match(stmt):
            return -1
    elif not _EXPORT.match(stmt):
        return -1
    return line_end
