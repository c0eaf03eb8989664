"""clean_docs / read_docs: the one way docs are found, read, given a dialect and cleaned."""

from __future__ import annotations

from pathlib import Path

import pytest

from doctune.data.cache import Cache, read_and_clean
from doctune.data.cleantree import clean_docs, clean_tree, read_docs
from doctune.errors import DataError


def _site(root: Path) -> Path:
    (root / "guide").mkdir(parents=True)
    (root / "index.mdx").write_text("import A from './a'\n\n# Home\n\n<A>Hi</A>\n")
    (root / "guide" / "a.md").write_text("---\ntitle: A\n---\n\n!!! note\n    Body.\n")
    (root / "guide" / "b.md").write_text("Plain <b>text</b>.\n")
    (root / "guide" / "bad.md").write_bytes(b"\xff\xfe bad")
    (root / "guide" / "empty.md").write_text("<!-- only a comment -->\n")
    return root


def test_clean_docs_gives_each_document_with_its_dialect_raw_and_clean_text(tmp_path: Path) -> None:
    site = _site(tmp_path / "docs")
    cleaned = clean_docs(site)
    assert [(d.rel, d.dialect, d.text) for d in cleaned] == [
        ("guide/a.md", "mkdocs", "# A\n\n**Note**\n\nBody.\n"),
        ("guide/b.md", "mkdocs", "Plain text.\n"),  # its folder's pages are MkDocs
        ("guide/empty.md", "mkdocs", ""),
        ("index.mdx", "mdx", "# Home\n\nHi\n"),
    ]
    assert cleaned.docs[1].raw == "Plain <b>text</b>.\n"
    assert cleaned.found == 5 and cleaned.root == site.resolve()
    assert [s.rel for s in cleaned.skipped] == ["guide/bad.md"]
    assert "not UTF-8" in cleaned.skipped[0].reason
    assert cleaned.warnings == []


def test_include_exclude_and_forced_dialect(tmp_path: Path) -> None:
    site = _site(tmp_path / "docs")
    read = read_docs(site, include=["guide/**"], exclude=["bad.md"], dialect="markdown")
    assert [(d.rel, d.dialect) for d in read.docs] == [
        ("guide/a.md", "markdown"), ("guide/b.md", "markdown"), ("guide/empty.md", "markdown")]
    with pytest.raises(DataError, match="--dialect must be auto, mdx, markdown, mkdocs, vitepress"):
        read_docs(site, dialect="rst")


def test_clean_tree_and_prepare_read_the_docs_as_clean_docs_does(tmp_path: Path) -> None:
    site = _site(tmp_path / "docs")
    cleaned = {d.rel: d for d in clean_docs(site)}
    summary = clean_tree(site, tmp_path / "out")
    assert {f.rel: f.dialect for f in summary.files} == {k: d.dialect for k, d in cleaned.items()}
    for rel, doc in cleaned.items():
        assert (tmp_path / "out" / rel).read_text(encoding="utf-8") == doc.text
    cache = Cache(tmp_path / "cache", previous=None, tokenizer_hash="t")
    files, skipped, found = read_and_clean(site, cache, include=(), exclude=(), dialect="auto",
                                           title_heading=True, workers=1)
    assert {f.rel: (f.clean.dialect, f.clean.text) for f in files} == {
        k: (d.dialect, d.text) for k, d in cleaned.items()}
    assert [s["rel"] for s in skipped] == ["guide/bad.md"] and found == 5
