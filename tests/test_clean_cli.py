"""`doctune clean`: files written, summaries, exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from doctune.cli import app

runner = CliRunner()


def make_docs(root: Path) -> Path:
    src = root / "docs"
    (src / "guide").mkdir(parents=True)
    (src / "guide" / "intro.mdx").write_text(
        "---\ntitle: Intro\n---\nimport X from './x'\n\n<Note>Read **this**.</Note>\n", encoding="utf-8")
    (src / "plain.md").write_text("# Plain\n\nUse {braces}.\n", encoding="utf-8")
    (src / "bad.md").write_bytes(b"\xff\xfe\x00binary")
    (src / "node_modules").mkdir()
    (src / "node_modules" / "skip.md").write_text("# no\n", encoding="utf-8")
    return src


def test_clean_writes_files_at_the_same_relative_paths(tmp_path: Path) -> None:
    src, out = make_docs(tmp_path), tmp_path / "out"
    result = runner.invoke(app, ["clean", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "guide" / "intro.mdx").read_text(encoding="utf-8") == "# Intro\n\nRead **this**.\n"
    assert (out / "plain.md").read_text(encoding="utf-8") == "# Plain\n\nUse {braces}.\n"
    assert not (out / "bad.md").exists() and not (out / "node_modules").exists()
    assert f"cleaned 2 files into {out}" in result.output
    assert "skipped 1 files:\n  bad.md: binary file, not text (NUL byte at offset 2)" in result.output
    assert "dialects: markdown 1, mdx 1" in result.output


def test_clean_json_summary(tmp_path: Path) -> None:
    src, out = make_docs(tmp_path), tmp_path / "out"
    result = runner.invoke(app, ["clean", str(src), "--out", str(out), "--json", "--dialect", "mdx",
                                 "--no-title-heading"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["files_cleaned"] == 2 and summary["files_skipped"] == 1
    assert summary["dialects"] == {"mdx": 2}
    assert summary["dropped"] == {"esm": 1, "expression": 1, "front_matter": 1, "jsx_tag": 2}
    assert summary["skipped"] == [{"file": "bad.md", "reason": "binary file, not text (NUL byte at offset 2)"}]
    assert summary["bytes_before"] > summary["bytes_after"] > 0
    assert (out / "guide" / "intro.mdx").read_text(encoding="utf-8") == "Read **this**.\n"
    assert (out / "plain.md").read_text(encoding="utf-8") == "# Plain\n\nUse.\n"


def test_clean_one_file(tmp_path: Path) -> None:
    src = tmp_path / "page.md"
    src.write_text("Hello <b>world</b>\n", encoding="utf-8")
    result = runner.invoke(app, ["clean", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "page.md").read_text(encoding="utf-8") == "Hello world\n"


def test_clean_errors_exit_2_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["clean", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "does not exist; pass a folder of Markdown/MDX docs" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["clean", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no .md, .mdx, .markdown files under" in result.output
    src = make_docs(tmp_path)
    result = runner.invoke(app, ["clean", str(src), "--out", str(src)])
    assert result.exit_code == 2 and "cleaning in place would overwrite your docs" in result.output
    result = runner.invoke(app, ["clean", str(src), "--out", str(tmp_path / "o"), "--dialect", "rst"])
    assert result.exit_code == 2 and "--dialect must be auto, mdx, markdown, mkdocs, vitepress; got 'rst'" in result.output


def test_clean_with_only_unreadable_files_exits_1(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.md").write_bytes(b"")
    result = runner.invoke(app, ["clean", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "a.md: empty file" in result.output
    assert "no file could be cleaned" in result.output


def test_out_inside_src_is_not_read_back(tmp_path: Path) -> None:
    src = make_docs(tmp_path)
    for _ in range(2):
        result = runner.invoke(app, ["clean", str(src), "--out", str(src / "clean")])
        assert result.exit_code == 0, result.output
        assert "cleaned 2 files" in result.output


def test_a_50_mb_file_is_skipped_and_the_others_are_cleaned(tmp_path: Path) -> None:
    src = make_docs(tmp_path)
    with (src / "huge.md").open("wb") as f:
        f.truncate(50 * 1024 * 1024)
    result = runner.invoke(app, ["clean", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "cleaned 2 files" in result.output
    assert "huge.md: too large (52,428,800 bytes, the limit is 20,000,000)" in result.output


def test_cleaning_one_file_onto_itself_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Page\n", encoding="utf-8")
    result = runner.invoke(app, ["clean", str(page), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "would overwrite your docs" in result.output
    assert page.read_text(encoding="utf-8") == "# Page\n"
