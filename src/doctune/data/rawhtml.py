"""Raw HTML that carries code, in any dialect: ``<pre>`` and ``<code>``.

A page that writes code as HTML shows it as code, so the cleaned Markdown should too:

* :func:`pre_fences` turns each ``<pre>`` element (with or without a ``<code>`` inside,
  the language taken from a ``language-x`` class) into a fenced code block, before the
  code blocks of the document are found;
* :func:`code_span` turns the content of a ``<code>`` element into one inline code span
  (the prose cleaner calls it).

Inside both, tags are removed (their text kept: ``Promise\\<<a>T</a>\\>`` reads
``Promise<T>``), a bare ``<`` stays, and character references are decoded.
"""

from __future__ import annotations

import html
import re

from doctune.data.jsx import scan_tag

_PRE_OPEN = re.compile(r"<pre(?=[\s>/])", re.I)
_PRE_CLOSE = re.compile(r"</pre\s*>", re.I)
_CODE_WRAP = re.compile(r"\A[ \t\n]*(<code\b[^>]*>)(.*)</code\s*>[ \t\n]*\Z", re.S | re.I)
_LANG_CLASS = re.compile(r"""class\s*=\s*["'][^"']*?\blang(?:uage)?-([\w+#.-]+)""", re.I)
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_BACKTICKS = re.compile(r"`+")


def strip_tags(s: str, *, jsx: bool) -> str:
    """``s`` without its HTML/JSX tags and comments; a ``<`` that starts no tag stays,
    and so does an escaped ``\\<``."""
    out: list[str] = []
    i = 0
    while (k := s.find("<", i)) >= 0:
        out.append(s[i:k])
        if s.startswith("<!--", k):
            e = s.find("-->", k + 4)
            i = len(s) if e < 0 else e + 3
            continue
        tag = None if k and s[k - 1] == "\\" else scan_tag(s, k, jsx=jsx)
        if tag is None or not tag.name:
            out.append("<")
            i = k + 1
        else:
            i = tag.end
    out.append(s[i:])
    return "".join(out)


def code_span(content: str, *, jsx: bool) -> str:
    """The inline code span that shows what ``<code>content</code>`` shows ("" if empty)."""
    text = html.unescape(_ESCAPE.sub(r"\1", strip_tags(content, jsx=jsx)))
    text = " ".join(text.split("\n")).strip()
    if not text:
        return ""
    ticks = "`" * (max((len(r) for r in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fence(open_tag: str, body: str, indent: str, *, jsx: bool) -> str:
    """The fenced block for ``<pre ...>body</pre>`` ("" when it shows nothing)."""
    body = body.removeprefix("\n")  # HTML drops a newline right after <pre>
    lang_m = _LANG_CLASS.search(open_tag)
    wrap = _CODE_WRAP.fullmatch(body)
    if wrap is not None:
        lang_m = _LANG_CLASS.search(wrap[1]) or lang_m
        body = wrap[2].removeprefix("\n")
    body = html.unescape(strip_tags(body, jsx=jsx)).rstrip()
    if not body.strip():
        return ""
    longest = max((len(r) for r in _BACKTICKS.findall(body)), default=0)
    ticks = "`" * max(3, longest + 1)
    lines = [indent + ln if ln.strip() else ln for ln in body.split("\n")]
    return "\n".join([f"{indent}{ticks}{lang_m[1] if lang_m else ''}", *lines, indent + ticks])


def pre_fences(lines: list[str], code: list[bool], *, jsx: bool) -> list[str] | None:
    """Turn the ``<pre>`` elements in the prose lines into fenced code blocks.

    Returns one entry per line (an entry may hold several lines joined by ``\\n``), or
    None when there is no ``<pre>`` element. The fence stands apart, between blank
    lines, at the indentation of the line the ``<pre>`` opens on."""
    if not any("<pre" in ln.lower() for ln, c in zip(lines, code, strict=True) if not c):
        return None
    out = list(lines)
    changed = False
    n = len(lines)
    i = 0
    while i < n:
        m = None if code[i] else _PRE_OPEN.search(lines[i])
        if m is None or (m.start() and lines[i][m.start() - 1] in "\\`"):
            i += 1
            continue
        j = i
        while j < n and not code[j]:
            j += 1
        chunk = "\n".join(lines[i:j])  # the <pre> element may not reach into code
        tag = scan_tag(chunk, m.start(), jsx=jsx)
        close = _PRE_CLOSE.search(chunk, tag.end) if tag and not tag.self_closing else None
        if tag is None or close is None:
            i += 1
            continue
        last = i + chunk.count("\n", 0, close.end())
        line_end = chunk.find("\n", close.end())
        after = chunk[close.end() : len(chunk) if line_end < 0 else line_end]
        before = lines[i][: m.start()]
        indent = before if not before.strip() else ""
        block = _fence(chunk[m.start() : tag.end], chunk[tag.end : close.start()], indent,
                       jsx=jsx)
        parts = [before.rstrip() if before.strip() else "", "", block, "",
                 indent + after.strip() if after.strip() else ""]
        out[i] = "\n".join(parts)
        out[i + 1 : last + 1] = [""] * (last - i)
        changed = True
        i = last + 1
    return out if changed else None
