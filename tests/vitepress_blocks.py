"""Fenced code as VitePress sees it, for the VitePress cleaning tests.

VitePress reads Markdown with markdown-it (CommonMark: HTML blocks and indented code on)
and its own ``:::`` containers; mdit-py-plugins' container plugin reads them the same way.
"""

from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt
from mdit_py_plugins.container import container_plugin

CONTAINERS = ("tip", "info", "warning", "danger", "details", "code-group", "raw", "v-pre")


@lru_cache(maxsize=1)
def _reader() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True})
    for name in CONTAINERS:
        container_plugin(md, name)
    return md


def vitepress_fences(text: str) -> list[str]:
    """The code of every fenced block in ``text``, read as VitePress reads a page."""
    return [t.content for t in _reader().parse(text) if t.type == "fence"]
