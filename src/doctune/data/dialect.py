"""Which Markdown dialect a docs file is written in: ``mdx``, ``mkdocs``, ``vitepress``
or ``markdown``.

The docs generator's config decides for a whole folder (``mkdocs.yml`` means MkDocs;
``docusaurus.config.*`` and ``astro.config.*`` mean MDX, since Docusaurus 3 and Astro
read ``.md`` as MDX too; a ``.vitepress/`` folder means VitePress). Without one, ``.mdx``
files are MDX and ``.md`` files are judged by their content: MDX imports, ``{/* */}``
comments or capitalised JSX tags mean MDX; ``!!! note``, ``/// tip`` or ``{* file *}``
mean MkDocs; a ``<script setup>`` block, ``{{ }}`` interpolations, ``::: code-group`` or
``[[toc]]`` next to ``::: tip`` containers mean VitePress; otherwise plain Markdown.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

DIALECTS = ("mdx", "markdown", "mkdocs", "vitepress")

_MARKERS: tuple[tuple[str, str], ...] = (
    ("mkdocs.yml", "mkdocs"),
    ("mkdocs.yaml", "mkdocs"),
    ("docusaurus.config.js", "mdx"),
    ("docusaurus.config.ts", "mdx"),
    ("docusaurus.config.mjs", "mdx"),
    ("docusaurus.config.cjs", "mdx"),
    ("astro.config.mjs", "mdx"),
    ("astro.config.ts", "mdx"),
    ("astro.config.js", "mdx"),
    ("astro.config.mts", "mdx"),
    ("astro.config.cjs", "mdx"),
    (".vitepress", "vitepress"),  # a folder: VitePress keeps its config in .vitepress/
)
_VITEPRESS_ONLY = re.compile(
    r"^<script\s+setup\b|^[ \t]*:{3,}[ \t]*(?:code-group|v-pre)\b|^[ \t]*\[\[toc\]\][ \t]*$|"
    r"^[ \t]*<<<[ \t]+(?:@/|\.{1,2}/)",
    re.M,
)
_LEVELS_ABOVE_ROOT = 3  # mkdocs.yml often sits next to (or above) the docs folder

_FENCE_LINE = re.compile(r"[ \t]*(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_MDX_SIGNS = re.compile(
    r"^(?:import|export)\s[^\n]*?(?:from\s*['\"]|\bconst\b|\bfunction\b)|\{/\*|"
    r"<[A-Z][\w.]*(?:\s[^<>]*)?/?>|^[ \t]*:::[a-z]",
    re.M,
)
_SCRIPT = re.compile(r"^<(script|style)\b[^>]*>.*?^</\1>", re.S | re.M)  # Vue SFC blocks
_MDX_ONLY = re.compile(r"^(?:import|export)\s[^\n]*?(?:from\s*['\"]|\bconst\b)|\{/\*", re.M)
_MKDOCS_SIGNS = re.compile(
    r"^[ \t]*(?:!!!|\?\?\?\+?)[ \t]?[\w-]+|^[ \t]*===[!+]?[ \t]+\"|^[ \t]*/{3,}[ \t]*[\w-]+|"
    r"^[ \t]*\{\*.*\*\}[ \t]*$|^[ \t]*;?--8<--|^:::[ \t]+\w+\.[\w.]+[ \t]*$",
    re.M,
)


@lru_cache(maxsize=1024)
def _folder_dialect(folder: Path, stop: Path | None) -> str | None:
    """The dialect set by a generator config in ``folder`` or above it (up to ``stop``)."""
    for name, dialect in _MARKERS:
        if (folder / name).is_dir() if name.startswith(".vitepress") else (folder / name).is_file():
            return dialect
    if folder == stop or folder.parent == folder:
        return None
    return _folder_dialect(folder.parent, stop)


def _without_fences(text: str) -> str:
    """``text`` without fenced code (a plain line scan: good enough for sniffing)."""
    keep: list[str] = []
    fence = ""
    for line in text.split("\n"):
        m = _FENCE_LINE.match(line)
        if fence:
            if m and m[1][0] == fence[0] and len(m[1]) >= len(fence) and not line[m.end():].strip():
                fence = ""
        elif m:
            fence = m[1]
        else:
            keep.append(line)
    return "\n".join(keep)


def sniff_dialect(text: str) -> str:
    """Guess the dialect of a ``.md`` file from its content (first 200,000 characters)."""
    head = _CODE_SPAN.sub("", _without_fences(text[:200_000]))
    vitepress = _VITEPRESS_ONLY.search(head) is not None
    if vitepress:  # imports inside <script setup> are not MDX's
        head = _SCRIPT.sub("", head)
    mdx = len(_MDX_SIGNS.findall(head))
    mkdocs = len(_MKDOCS_SIGNS.findall(head))
    # VitePress shares `::: tip` with Docusaurus: it needs a sign of its own (a
    # `<script setup>`, `::: code-group`, `[[toc]]`, `<<< @/file`) and no MDX-only one.
    if vitepress and not _MDX_ONLY.search(head) and mkdocs <= mdx:
        return "vitepress"
    if mkdocs > mdx:
        return "mkdocs"
    if mdx:
        return "mdx"
    return "markdown"


def has_mdx_only_signs(text: str) -> bool:
    """Whether ``text`` shows syntax only MDX reads (ESM imports, ``{/* */}`` comments)."""
    head = _SCRIPT.sub("", _CODE_SPAN.sub("", _without_fences(text[:200_000])))
    return _MDX_ONLY.search(head) is not None


def detect_dialect(path: Path, root: Path | None = None, text: str | None = None) -> str:
    """Return ``"mdx"``, ``"mkdocs"``, ``"vitepress"`` or ``"markdown"`` for the file at ``path``.

    Looks for a generator config in the file's folder and its parents, up to three
    levels above ``root`` (or five levels above the file without a root). ``.mdx`` is
    always MDX. Otherwise a ``.md`` file is sniffed from ``text`` when given.
    """
    path = Path(path).absolute()
    stop = Path(root).absolute() if root is not None else path.parent
    for _ in range(_LEVELS_ABOVE_ROOT if root is not None else 5):
        stop = stop.parent
    found = _folder_dialect(path.parent, stop)
    if path.suffix.lower() == ".mdx":
        return "mdx"
    if found is not None:
        return found
    if text is not None:
        return sniff_dialect(text)
    return "markdown"
