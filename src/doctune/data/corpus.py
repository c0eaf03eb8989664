"""Find and read the documentation files under a folder (or one file).

``find_docs`` walks SRC once, following folder symlinks but never the same folder twice,
and returns the Markdown/MDX files sorted by their POSIX path relative to SRC, with the
things it passed over. ``read_doc`` turns one file into text or a :class:`Skipped` with a
reason a person can act on; bad content never raises.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from doctune.errors import DataError

DOC_SUFFIXES = (".md", ".mdx", ".markdown")

# Folder names skipped wherever they appear below SRC: dependencies, VCS data, build
# output of the usual docs generators, virtual environments and tool caches.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "node_modules", ".git", ".hg", ".svn",
    "build", "dist", "site", "_build",
    ".docusaurus", ".astro", ".next", ".nuxt", "**/.vitepress/cache", ".cache",
    ".venv", "venv", "__pycache__", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".doctune-cache",
)


@dataclass(frozen=True)
class DocFile:
    """One documentation file found under SRC."""

    path: Path
    """Absolute path on disk."""
    rel: str
    """POSIX path relative to SRC (for a single-file SRC: its name)."""


@dataclass(frozen=True)
class Skipped:
    """A file (or folder) that was passed over, and why."""

    rel: str
    reason: str
    """A human sentence, e.g. ``"not UTF-8 text (invalid byte 0xff at offset 12)"``."""


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob where ``*`` stays within one path part and ``**`` spans parts."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (j := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(rel: str, pattern: str) -> bool:
    """Whether POSIX path ``rel`` matches ``pattern``.

    A pattern without ``/`` matches any single path part (``node_modules``, ``*.mdx``);
    one with ``/`` matches the whole relative path (``blog/**``, ``docs/*/intro.md``)
    or any folder above it, so ``blog`` or ``blog/2020`` also exclude what is inside.
    """
    pattern = pattern.strip().strip("/") if pattern.strip() != "/" else ""
    if pattern.startswith("./"):
        pattern = pattern[2:]
    if not pattern:
        return False
    rx = _glob_regex(pattern)
    parts = rel.split("/")
    if "/" not in pattern:
        return any(rx.match(p) for p in parts)
    return any(rx.match("/".join(parts[:k])) for k in range(1, len(parts) + 1))


def _excluded(rel: str, exclude: Sequence[str]) -> bool:
    return any(glob_match(rel, p) for p in exclude)


def _included(rel: str, include: Sequence[str]) -> bool:
    return not include or any(glob_match(rel, p) for p in include)


def _is_doc(name: str) -> bool:
    return name.lower().endswith(DOC_SUFFIXES)


def _walk(
    root: Path, include: Sequence[str], exclude: Sequence[str]
) -> tuple[list[DocFile], list[Skipped], int]:
    """Walk ``root`` (iteratively: any depth) and return docs, skipped entries and the
    number of files and folders the user's include/exclude patterns left out."""
    excludes = (*DEFAULT_EXCLUDES, *exclude)
    docs: list[DocFile] = []
    skipped: list[Skipped] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders walked: no loops
    ignored = 0
    todo: list[tuple[Path, str]] = [(root, "")]
    while todo:
        folder, rel_folder = todo.pop()
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(rel_folder or ".", f"cannot list folder ({e.strerror})"))
            continue
        if (st.st_dev, st.st_ino) in seen:
            skipped.append(Skipped(rel_folder, "links to a folder already walked (a symlink "
                                               "loop or a second link); not followed again"))
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders: list[tuple[Path, str]] = []
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError as e:
                skipped.append(Skipped(rel, f"cannot read entry ({e.strerror})"))
                continue
            if is_dir:
                if _excluded(rel, excludes):
                    ignored += _excluded(rel, exclude)  # count only the user's patterns
                else:
                    subfolders.append((Path(entry.path), rel))
            elif _is_doc(entry.name):
                if _excluded(rel, excludes) or not _included(rel, include):
                    ignored += 1
                elif not is_file:
                    reason = "broken symlink" if entry.is_symlink() else "not a regular file"
                    skipped.append(Skipped(rel, reason))
                else:
                    docs.append(DocFile(path=Path(entry.path).absolute(), rel=rel))
        todo.extend(reversed(subfolders))  # walk in name order: real folders before late links
    return docs, skipped, ignored


def find_docs(
    src: Path, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[DocFile], list[Skipped]]:
    """Find the ``.md``, ``.mdx`` and ``.markdown`` files under ``src``.

    ``src`` may be a folder or a single file. ``include`` globs keep only matching
    relative paths; ``exclude`` globs (added to :data:`DEFAULT_EXCLUDES`) drop files and
    whole folders. Folder symlinks are followed once: a link back to a folder already
    walked (a loop) is reported as skipped. Returns the files sorted by ``rel`` and the
    skipped entries. Raises :class:`DataError` when ``src`` is missing, is not a docs
    file, or holds no docs files.
    """
    src = Path(src).expanduser()
    if not src.exists():
        hint = " (it is a broken symlink)" if src.is_symlink() else ""
        raise DataError(f"SRC `{src}` does not exist{hint}; pass a folder of Markdown/MDX "
                        f"docs or one .md/.mdx file.")
    if src.is_file():
        if not _is_doc(src.name):
            raise DataError(f"SRC `{src}` is not a docs file: expected a name ending in "
                            f"{', '.join(DOC_SUFFIXES)}, or a folder that holds such files.")
        return [DocFile(path=src.resolve(), rel=src.name)], []
    if not src.is_dir():
        raise DataError(f"SRC `{src}` is neither a file nor a folder; pass a docs folder.")

    docs, skipped, ignored = _walk(src.resolve(), include, exclude)
    if not docs:
        what = f"no {', '.join(DOC_SUFFIXES)} files under `{src}`"
        if ignored:
            what += f" ({ignored} files or folders left out by the include/exclude patterns)"
        raise DataError(f"{what}; point SRC at the folder holding your Markdown/MDX docs"
                        f"{' or loosen --include/--exclude' if ignored else ''}.")
    docs.sort(key=lambda d: d.rel)
    skipped.sort(key=lambda s: s.rel)
    return docs, skipped


def read_doc(doc: DocFile, max_bytes: int = 20_000_000) -> str | Skipped:
    """Read ``doc`` as UTF-8 text (a leading BOM removed), or say why it cannot be used.

    Returns :class:`Skipped` for files over ``max_bytes``, binary files (NUL bytes), text
    that is not UTF-8, empty or whitespace-only files and files the OS will not read.
    Never raises for bad content.
    """
    try:
        size = doc.path.stat().st_size
        if size > max_bytes:
            return Skipped(doc.rel, f"too large ({size:,} bytes, the limit is {max_bytes:,}); "
                                    f"split it into smaller pages")
        data = doc.path.read_bytes()
    except OSError as e:
        return Skipped(doc.rel, f"cannot read file ({e.strerror or e})")
    if len(data) > max_bytes:
        return Skipped(doc.rel, f"too large ({len(data):,} bytes, the limit is {max_bytes:,}); "
                                f"split it into smaller pages")
    nul = data.find(b"\x00")
    if nul != -1:
        return Skipped(doc.rel, f"binary file, not text (NUL byte at offset {nul})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[e.start]
        return Skipped(doc.rel, f"not UTF-8 text (invalid byte 0x{bad:02x} at offset "
                                f"{e.start}); re-save it as UTF-8")
    if not text:
        return Skipped(doc.rel, "empty file")
    if not text.strip():
        return Skipped(doc.rel, "only whitespace")
    return text
