"""Find, read and clean a docs folder: the one place that does it, and ``doctune clean``.

:func:`read_docs` finds the docs under SRC, reads them and picks each one's dialect;
:func:`clean_docs` cleans what it read. ``doctune clean`` (:func:`clean_tree`) writes the
result to a folder, ``prepare`` cleans with its cache (:mod:`doctune.data.cache`), and the
from-scratch tokenizer trains on the cleaned texts.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doctune.data.clean import CleanResult, clean_markdown
from doctune.data.corpus import DocFile, Skipped, find_docs, read_doc
from doctune.data.dialect import DIALECTS, detect_dialect, has_mdx_only_signs, sniff_dialect
from doctune.errors import DataError


@dataclass
class FileReport:
    """What cleaning did to one file."""

    rel: str
    dialect: str
    bytes_before: int
    bytes_after: int
    warnings: int
    dropped: dict[str, int]


@dataclass
class CleanSummary:
    """Totals for one ``clean_tree`` run; ``to_dict()`` is the ``--json`` output."""

    src: str
    out: str
    files: list[FileReport] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def bytes_before(self) -> int:
        """UTF-8 bytes of the cleaned files before cleaning."""
        return sum(f.bytes_before for f in self.files)

    @property
    def bytes_after(self) -> int:
        """UTF-8 bytes written."""
        return sum(f.bytes_after for f in self.files)

    @property
    def dialects(self) -> dict[str, int]:
        """How many files were read with each dialect."""
        return dict(sorted(Counter(f.dialect for f in self.files).items()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "src": self.src,
            "out": self.out,
            "files_cleaned": len(self.files),
            "files_skipped": len(self.skipped),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "dialects": self.dialects,
            "dropped": dict(sorted(self.dropped.items())),
            "warnings": self.warnings,
            "skipped": [{"file": s.rel, "reason": s.reason} for s in self.skipped],
            "files": [vars(f) for f in self.files],
            "seconds": round(self.seconds, 3),
        }


def _vote(sniffed: Sequence[str]) -> str | None:
    """The dialect a group of pages clearly shares (MDX or MkDocs), or None."""
    counts = Counter(sniffed)
    best, other = ("mdx", "mkdocs") if counts["mdx"] >= counts["mkdocs"] else ("mkdocs", "mdx")
    if counts[best] >= max(1, len(sniffed) // 5) and counts[other] * 4 <= counts[best]:
        return best
    return None


def tree_dialects(docs: Sequence[DocFile], texts: Sequence[str], root: Path) -> list[str]:
    """Pick each file's dialect, treating each folder as one docs set.

    A generator config (``mkdocs.yml``, ``docusaurus.config.*``, ``astro.config.*``) or
    the ``.mdx`` suffix decides first. The other ``.md`` files are sniffed; plain-looking
    ones follow their docs set: when a clear share of the ``.md`` pages in the same
    top-level folder (or else in the whole tree) shows MDX or MkDocs syntax, they are
    read that way too, as their generator would. VitePress shares ``::: tip`` and
    capitalised components with MDX, so when pages show VitePress-only syntax (``<script
    setup>``, ``::: code-group``, ``[[toc]]``) at least four times as often as MDX-only
    syntax (ESM, ``{/* */}``), all sniffed pages without MDX-only syntax are VitePress.
    """
    found = [detect_dialect(d.path, root) for d in docs]  # "markdown": nothing decided yet
    sniffed = [sniff_dialect(t) if f == "markdown" else f
               for t, f in zip(texts, found, strict=True)]
    mdx_only = [f == "markdown" and has_mdx_only_signs(t) for t, f in zip(texts, found, strict=True)]
    n_vitepress = sum(s == "vitepress" and f == "markdown" for s, f in zip(sniffed, found, strict=True))
    if n_vitepress and n_vitepress >= 4 * sum(mdx_only):
        sniffed = ["vitepress" if f == "markdown" and s != "mkdocs" and not m else s
                   for s, f, m in zip(sniffed, found, mdx_only, strict=True)]
    # Only sniffed pages vote: an .mdx file says nothing of how its site reads .md (Astro
    # reads .md as plain Markdown, Docusaurus as MDX).
    groups: dict[str, list[str]] = {}
    for d, s, f in zip(docs, sniffed, found, strict=True):
        if f == "markdown":
            groups.setdefault(d.rel.split("/", 1)[0] if "/" in d.rel else "", []).append(s)
    whole = _vote([s for v in groups.values() for s in v])
    votes = {g: _vote(v) or whole for g, v in groups.items()}
    return [
        (votes.get(d.rel.split("/", 1)[0] if "/" in d.rel else "") or s) if s == "markdown" else s
        for d, s in zip(docs, sniffed, strict=True)
    ]


@dataclass(frozen=True)
class SourceDoc:
    """One docs file found under SRC and read."""

    doc: DocFile
    raw: str
    """The file's text (UTF-8, a leading BOM removed)."""
    dialect: str
    """The dialect it is read in: ``mdx``, ``markdown``, ``mkdocs`` or ``vitepress``."""

    @property
    def rel(self) -> str:
        """POSIX path relative to SRC."""
        return self.doc.rel


@dataclass
class SourceDocs:
    """What :func:`read_docs` found: the docs read, and the files passed over."""

    root: Path
    """The folder dialects are judged from (SRC, or the folder of a one-file SRC)."""
    found: int
    """Docs files found (read or not)."""
    docs: list[SourceDoc]
    skipped: list[Skipped]


@dataclass(frozen=True)
class CleanedDoc:
    """One docs file and its cleaned text."""

    rel: str
    dialect: str
    raw: str
    text: str
    """Cleaned Markdown (``""`` when nothing was left)."""
    warnings: list[str]
    dropped: dict[str, int]


@dataclass
class CleanedDocs:
    """What :func:`clean_docs` did: the cleaned docs, and the files passed over."""

    root: Path
    found: int
    docs: list[CleanedDoc]
    skipped: list[Skipped]
    """Unreadable files, and files the cleaner failed on (with the reason)."""

    def __iter__(self) -> Iterator[CleanedDoc]:
        return iter(self.docs)

    @property
    def warnings(self) -> list[str]:
        """Every document's cleaning warnings, in path order."""
        return [w for d in self.docs for w in d.warnings]


def _check_dialect(dialect: str) -> None:
    if dialect != "auto" and dialect not in DIALECTS:
        raise DataError(f"--dialect must be auto, {', '.join(DIALECTS)}; got {dialect!r}.")


def read_docs(
    src: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = (),
    dialect: str = "auto",
) -> SourceDocs:
    """Find the docs under ``src`` (see :func:`~doctune.data.corpus.find_docs`), read them
    and pick each one's dialect: ``dialect`` for all, or with ``"auto"`` per folder and
    file (:func:`tree_dialects`). Unreadable files are skipped with a reason. Raises
    :class:`DataError` for an unknown dialect or a missing, docs-less ``src``."""
    _check_dialect(dialect)
    src = Path(src).expanduser()
    found, skipped = find_docs(src, include, exclude)
    readable: list[tuple[DocFile, str]] = []
    for doc in found:
        text = read_doc(doc)
        if isinstance(text, Skipped):
            skipped.append(text)
        else:
            readable.append((doc, text))
    root = src.resolve() if src.is_dir() else src.resolve().parent
    texts = [t for _, t in readable]
    dialects = (tree_dialects([d for d, _ in readable], texts, root) if dialect == "auto"
                else [dialect] * len(readable))
    skipped.sort(key=lambda s: s.rel)
    return SourceDocs(root=root, found=len(found), skipped=skipped, docs=[
        SourceDoc(doc, text, dia) for (doc, text), dia in zip(readable, dialects, strict=True)])


def _clean_one(source: SourceDoc, title_heading: bool) -> CleanResult | Skipped:
    try:
        return clean_markdown(source.raw, dialect=source.dialect, path=source.rel,
                              title_heading=title_heading)
    except Exception as e:  # a bug must not stop the other files
        return Skipped(source.rel, f"cleaner failed ({type(e).__name__}: {e})")


def clean_docs(
    src: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = (),
    dialect: str = "auto", title_heading: bool = True,
) -> CleanedDocs:
    """Find, read and clean the docs under ``src``, as :func:`read_docs` reads them.

    A file the cleaner fails on is skipped with the reason and never stops the others.
    Example: ``[d.text for d in clean_docs(Path("docs"))]`` are the cleaned texts."""
    read = read_docs(src, include=include, exclude=exclude, dialect=dialect)
    docs: list[CleanedDoc] = []
    skipped = list(read.skipped)
    for source in read.docs:
        result = _clean_one(source, title_heading)
        if isinstance(result, Skipped):
            skipped.append(result)
            continue
        docs.append(CleanedDoc(rel=source.rel, dialect=source.dialect, raw=source.raw,
                               text=result.text, warnings=result.warnings,
                               dropped=result.dropped))
    skipped.sort(key=lambda s: s.rel)
    return CleanedDocs(root=read.root, found=read.found, docs=docs, skipped=skipped)


def _check_paths(src: Path, out: Path) -> tuple[Path, list[str]]:
    """Refuse an --out that would overwrite SRC; exclude --out when it lies inside SRC."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out `{out}` is a file; pass a folder to write the cleaned docs into.")
    src_abs, out_abs = src.resolve(), out.resolve()
    if (src.is_dir() and out_abs == src_abs) or (src.is_file() and out_abs / src.name == src_abs):
        raise DataError(f"--out `{out}` would receive the cleaned files in place of SRC; "
                        "cleaning in place would overwrite your docs. Pass another folder.")
    extra: list[str] = []
    if src.is_dir() and out_abs.is_relative_to(src_abs):
        extra.append(out_abs.relative_to(src_abs).as_posix())
    return out_abs, extra


def clean_tree(
    src: Path,
    out: Path,
    *,
    dialect: str = "auto",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    title_heading: bool = True,
) -> CleanSummary:
    """Clean every ``.md``/``.mdx``/``.markdown`` file under ``src`` into ``out``.

    Each cleaned file is written at the same relative path and name. Unreadable files are
    skipped with a reason and never stop the others. ``dialect`` is ``"auto"`` (per
    folder and file, see :func:`tree_dialects`) or one of ``mdx``, ``markdown``,
    ``mkdocs``, ``vitepress`` for all files. Raises :class:`DataError` for a missing or
    empty ``src`` or an unusable ``out``.
    """
    _check_dialect(dialect)
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    if not src.exists():
        find_docs(src)  # raises the DataError that says what to do
    out_abs, extra = _check_paths(src, out)
    cleaned = clean_docs(src, include=include, exclude=[*exclude, *extra], dialect=dialect,
                         title_heading=title_heading)
    summary = CleanSummary(src=str(src), out=str(out), skipped=list(cleaned.skipped))
    for doc in cleaned:
        target = out_abs / doc.rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(doc.text, encoding="utf-8", newline="\n")
        except OSError as e:
            raise DataError(f"cannot write `{target}` ({e.strerror}); check that --out is a "
                            "folder you can write to.") from e
        warnings = list(doc.warnings)
        if not doc.text:
            warnings.append(f"{doc.rel}: nothing left after cleaning; wrote an empty file")
        summary.files.append(FileReport(
            rel=doc.rel, dialect=doc.dialect, bytes_before=len(doc.raw.encode("utf-8")),
            bytes_after=len(doc.text.encode("utf-8")), warnings=len(warnings),
            dropped=doc.dropped,
        ))
        summary.warnings.extend(warnings)
        summary.dropped.update(doc.dropped)
    summary.skipped.sort(key=lambda s: s.rel)
    summary.seconds = time.perf_counter() - started
    return summary


def format_summary(summary: CleanSummary, max_lines: int = 20) -> str:
    """The human summary printed by ``doctune clean``."""
    before, after = summary.bytes_before, summary.bytes_after
    change = f", {100 * (after - before) / before:+.0f}%" if before else ""
    lines = [f"cleaned {len(summary.files)} files into {summary.out} "
             f"({before:,} -> {after:,} bytes{change}) in {summary.seconds:.1f} s"]
    if summary.files:
        lines.append("dialects: " + ", ".join(f"{k} {v}" for k, v in summary.dialects.items()))
    if summary.dropped:
        lines.append("removed: " + ", ".join(f"{k} {v}" for k, v in
                                             sorted(summary.dropped.items(), key=lambda x: -x[1])))
    for title, items in (
        (f"skipped {len(summary.skipped)} files", [f"{s.rel}: {s.reason}" for s in summary.skipped]),
        (f"warnings ({len(summary.warnings)})", summary.warnings),
    ):
        if items:
            lines.append(title + ":")
            lines.extend(f"  {x}" for x in items[:max_lines])
            if len(items) > max_lines:
                lines.append(f"  ... {len(items) - max_lines} more (see --json)")
    return "\n".join(lines)
