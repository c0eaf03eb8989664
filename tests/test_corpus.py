"""Finding and reading docs files: order, globs, excludes, symlinks and bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from doctune.data.corpus import DocFile, Skipped, find_docs, glob_match, read_doc
from doctune.errors import DataError


def write(root: Path, rel: str, data: str | bytes = "# Page\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def test_finds_doc_suffixes_sorted_and_skips_default_folders(tmp_path: Path) -> None:
    for rel in ["b.md", "a/z.mdx", "a/y.markdown", "a/x.txt", "UPPER.MD",
                "node_modules/pkg/README.md", ".git/x.md", "build/out.md", "site/index.md",
                ".docusaurus/x.md", "deep/.venv/lib/x.md"]:
        write(tmp_path, rel)
    docs, skipped = find_docs(tmp_path)
    assert [d.rel for d in docs] == ["UPPER.MD", "a/y.markdown", "a/z.mdx", "b.md"]
    assert all(d.path.is_absolute() and d.path.is_file() for d in docs)
    assert skipped == []


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    for rel in ["guide/a.md", "guide/b.mdx", "blog/2020/c.md", "api/d.md"]:
        write(tmp_path, rel)
    rels = lambda **kw: [d.rel for d in find_docs(tmp_path, **kw)[0]]  # noqa: E731
    assert rels(include=["*.mdx"]) == ["guide/b.mdx"]
    assert rels(include=["guide/**"]) == ["guide/a.md", "guide/b.mdx"]
    assert rels(exclude=["blog"]) == ["api/d.md", "guide/a.md", "guide/b.mdx"]
    assert rels(exclude=["blog/**", "api/*.md"]) == ["guide/a.md", "guide/b.mdx"]
    assert glob_match("a/b/c.md", "**/c.md") and not glob_match("a/b/c.md", "a/*.md")


def test_single_file_src(tmp_path: Path) -> None:
    path = write(tmp_path, "one.mdx")
    assert find_docs(path) == ([DocFile(path=path.resolve(), rel="one.mdx")], [])


def test_missing_empty_and_wrong_src_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; pass a folder of Markdown/MDX docs"):
        find_docs(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no \.md, \.mdx, \.markdown files under"):
        find_docs(tmp_path)
    write(tmp_path, "notes.txt", "x")
    with pytest.raises(DataError, match="is not a docs file"):
        find_docs(tmp_path / "notes.txt")
    write(tmp_path, "blog/a.md")
    with pytest.raises(DataError, match="1 files or folders left out by the include/exclude patterns"):
        find_docs(tmp_path, exclude=["blog"])


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlink_loops_are_walked_once_and_broken_links_reported(tmp_path: Path) -> None:
    write(tmp_path, "a/page.md")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "gone.md").symlink_to(tmp_path / "missing.md")
    docs, skipped = find_docs(tmp_path)
    assert [d.rel for d in docs] == ["a/page.md"]
    assert [s.rel for s in skipped] == ["a/loop", "a/self", "gone.md"]
    assert "symlink loop" in skipped[0].reason and skipped[2].reason == "broken symlink"


def test_read_doc_decodes_utf8_and_strips_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "a.md", "\ufeff# Héllo\n".encode())
    assert read_doc(DocFile(path, "a.md")) == "# Héllo\n"


@pytest.mark.parametrize(("data", "reason"), [
    (b"# ok\n\xff\xfe bad", "not UTF-8 text (invalid byte 0xff at offset 5); re-save it as UTF-8"),
    (b"PNG\x00\x01\x02", "binary file, not text (NUL byte at offset 3)"),
    (b"", "empty file"),
    (b" \n\t\n", "only whitespace"),
])
def test_read_doc_gives_reasons_for_bad_files(tmp_path: Path, data: bytes, reason: str) -> None:
    path = write(tmp_path, "bad.md", data)
    assert read_doc(DocFile(path, "bad.md")) == Skipped("bad.md", reason)


def test_read_doc_skips_a_50_mb_file_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.md"
    with path.open("wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB on paper, no disk used
    result = read_doc(DocFile(path, "huge.md"))
    assert isinstance(result, Skipped)
    assert result.reason == ("too large (52,428,800 bytes, the limit is 20,000,000); "
                             "split it into smaller pages")
    small = write(tmp_path, "small.md", "x" * 100)
    assert isinstance(read_doc(DocFile(small, "small.md"), max_bytes=10), Skipped)


def test_read_doc_of_a_vanished_file(tmp_path: Path) -> None:
    result = read_doc(DocFile(tmp_path / "gone.md", "gone.md"))
    assert isinstance(result, Skipped) and result.reason.startswith("cannot read file")


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_a_second_link_to_a_folder_is_walked_once_and_depth_is_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "real/page.md")
    (tmp_path / "zlink").symlink_to(tmp_path / "real", target_is_directory=True)
    deep = "/".join(["d"] * 300)
    write(tmp_path, f"{deep}/deep.md")
    docs, skipped = find_docs(tmp_path)
    assert [d.rel for d in docs] == [f"{deep}/deep.md", "real/page.md"]
    assert [s.rel for s in skipped] == ["zlink"]
