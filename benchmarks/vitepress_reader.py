"""Reference reader for VitePress pages (benchmarks/check_clean.py, dev only).

VitePress renders Markdown with markdown-it (HTML on, tables) plus its own containers
(``::: tip|info|warning|danger|details|code-group|raw|v-pre``), fence options and Vue.
This reads a page the same way with markdown-it-py and mdit-py-plugins' container plugin,
renders it to HTML and reads that HTML as a browser shows it:

* code blocks: fences (language = the info string up to a space, ``{``, ``[`` or ``:``)
  and raw ``<pre>`` elements; code spans: backtick spans and raw ``<code>`` elements;
* visible text: text outside ``<script>``/``<style>``/``<pre>``, container titles (the
  type in capitals when there is none), code-group tab labels, ``<Badge text>``;
* junk: front matter, attribute values, and ``{{ }}`` interpolations outside code and
  ``v-pre`` (the page shows a runtime value there, not these words).

``<<< @/file`` imports and ``[[toc]]`` are taken out of the input first: VitePress
replaces them with content from elsewhere. The cleaned output is read with the same
reader without the VitePress parts (plain CommonMark + tables), and lines that still
carry VitePress or HTML syntax are flagged.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any

from markdown_it import MarkdownIt
from mdit_py_plugins.container import container_plugin
from mdit_py_plugins.front_matter import front_matter_plugin

CONTAINERS = ("tip", "info", "warning", "danger", "details", "code-group", "raw", "v-pre")
_LANG = re.compile(r"[^\s{\[:]+")
_LABEL = re.compile(r"\[([^\]\n]*)\]")
_IMPORTS = re.compile(r"^[ \t]*(?:<<<[ \t].*|\[\[toc\]\])[ \t]*$", re.M)
_HEADING_ID = re.compile(r"[ \t]*\{#[\w.:-]+\}[ \t]*$")
_INTERP = re.compile(r"\{\{.*?\}\}", re.S)
_ATTRS = re.compile(r"[ \t]*\{[^{}]*\}[ \t]*$")


def _container_render(name: str):  # type: ignore[no-untyped-def]
    def render(self: Any, tokens: list[Any], idx: int, options: Any, env: dict) -> str:
        tok = tokens[idx]
        if tok.nesting == -1:
            if env.get("open"):
                env["open"].pop()
            return "</details>" if name == "details" else "</div>"
        env.setdefault("open", []).append(name)
        if name in ("code-group", "raw"):
            return "<div>"
        if name == "v-pre":
            return "<div v-pre>"
        title = _ATTRS.sub("", tok.info.strip()[len(name):].strip())
        if name == "details":
            return f"<details><summary>{html.escape(title or 'Details')}</summary>"
        return f'<div class="custom-block"><p>{html.escape(title or name.upper())}</p>'
    return render


def _fence(self: Any, tokens: list[Any], idx: int, options: Any, env: dict) -> str:
    tok = tokens[idx]
    info = tok.info.strip()
    m = _LANG.match(info)
    lang = m.group() if m and not info.startswith("[") else ""
    label = _LABEL.search(info)
    tab = ""
    if label and "code-group" in env.get("open", []):
        tab = f"<span>{html.escape(label[1])}</span>"
    full = html.escape(info) if env.get("plain") else html.escape(lang)
    return f'{tab}<pre data-lang="{full}"><code>{html.escape(tok.content)}</code></pre>'


def _code_inline(self: Any, tokens: list[Any], idx: int, options: Any, env: dict) -> str:
    # VitePress renders inline code with v-pre: its {{ }} is text.
    return f"<code v-pre>{html.escape(tokens[idx].content)}</code>"


def _parser(vitepress: bool) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.use(front_matter_plugin)
    if vitepress:
        for name in CONTAINERS:
            container_plugin(md, name, render=_container_render(name))
    md.add_render_rule("fence", _fence)
    md.add_render_rule("code_inline", _code_inline)
    md.add_render_rule("front_matter", lambda *a: "")
    return md


class _Page(HTMLParser):
    """What a browser shows of the rendered HTML."""

    def __init__(self, *, vue: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.vue = vue
        self.code: list[list[str]] = []
        self.spans: list[str] = []
        self.visible: list[str] = []
        self.junk: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, v-pre)
        self._pre: list[str] | None = None
        self._lang = ""
        self._span: list[str] | None = None
        self._skip = 0

    def _vpre(self) -> bool:
        return any(v for _, v in self._stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if self.vue and tag == "badge":  # VitePress's <Badge text="..."/> shows its text
            self.visible.extend(v for k, v in attrs if k == "text" and v)
            attrs = [(k, v) for k, v in attrs if k != "text"]
        self.junk.extend(v for k, v in attrs if v and k not in ("class", "data-lang"))
        if tag in ("br", "wbr", "img", "hr", "input", "meta", "link", "source"):
            return
        self._stack.append((tag, "v-pre" in names))
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "pre" and self._pre is None:
            self._pre = []
            cls = dict(attrs).get("class") or ""
            lm = re.search(r"\blang(?:uage)?-([\w+#.-]+)", cls)
            self._lang = dict(attrs).get("data-lang") or (lm[1] if lm else "")
        elif tag == "code" and self._pre is None and self._span is None:
            self._span = []

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _ in self._stack):
            return
        while self._stack:
            t, _ = self._stack.pop()
            if t in ("script", "style"):
                self._skip -= 1
            elif t == "pre" and self._pre is not None:
                text = "".join(self._pre)
                self.code.append([self._lang, "", text.removeprefix("\n").rstrip()])
                self._pre = None
            elif t == "code" and self._span is not None:
                span = " ".join("".join(self._span).split())
                if span:
                    self.spans.append(span)
                self._span = None
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre is not None:
            self._pre.append(data)
            return
        if self.vue and not self._vpre():  # Vue shows a value here
            self.junk.extend(_INTERP.findall(data))
            data = _INTERP.sub(" ", data)
        if self._span is not None:
            self._span.append(data)
        self.visible.append(data)


_READERS = {True: _parser(True), False: _parser(False)}


def read_with_vitepress(text: str, *, is_input: bool) -> dict[str, Any]:
    """Read a page as VitePress does (input) or the cleaned Markdown as CommonMark does."""
    md = _READERS[is_input]
    junk: list[str] = []
    if is_input:
        junk.extend(m.group() for m in _IMPORTS.finditer(text))
        text = _IMPORTS.sub("", text)
    tokens = md.parse(text)
    flagged: list[list[Any]] = []
    for k, tok in enumerate(tokens):
        line = tok.map[0] + 1 if tok.map else 0
        if tok.type == "front_matter":
            junk.append(tok.content)
        elif tok.type == "heading_open" and tokens[k + 1].children:
            last = tokens[k + 1].children[-1]
            if last.type == "text" and _HEADING_ID.search(last.content):
                if is_input:
                    last.content = _HEADING_ID.sub("", last.content)
                else:
                    flagged.append([line, "heading_anchor"])
        elif not is_input and tok.type == "html_block":
            kind = "html_comment" if tok.content.lstrip().startswith("<!--") else "tag"
            flagged.append([line, kind])
        elif not is_input and tok.type == "inline":
            if any(c.type == "html_inline" for c in tok.children or []):
                flagged.append([line, "tag"])
            if re.match(r"[ \t]*(?::{3,}[ \t]*[\w-]*|\[\[toc\]\]|<<<[ \t])", tok.content):
                flagged.append([line, "container"])
    page = _Page(vue=is_input)
    page.feed(md.renderer.render(tokens, md.options, {"plain": not is_input}))
    page.close()
    return {"code": page.code, "spans": page.spans, "visible": " ".join(page.visible),
            "junk": " ".join(page.junk + junk), "flagged": flagged, "error": None}
