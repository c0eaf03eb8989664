"""Golden cleaning cases: real excerpts (tests/fixtures/clean/SOURCES.md) -> exact Markdown."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from doctune.data.blocks import block_parser
from doctune.data.clean import clean_markdown
from vitepress_blocks import vitepress_fences

CASES = sorted((Path(__file__).parent / "fixtures" / "clean").glob("*/*.in.*"))


def fences(text: str, *, mdx: bool) -> list[tuple[str, str]]:
    """(info, content) of every fenced code block, read as MDX or as CommonMark."""
    md = block_parser(indented_code=not mdx, html_blocks=not mdx)
    return [(t.info, t.content) for t in md.parse(text) if t.type == "fence"]


def expected_path(case: Path) -> Path:
    return case.with_name(case.name.split(".in.")[0] + ".out.md")


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name.split('.in.')[0]}")
def test_golden_output(case: Path) -> None:
    result = clean_markdown(case.read_text(encoding="utf-8"), dialect=case.parent.name, path=case.name)
    assert result.text == expected_path(case).read_text(encoding="utf-8")
    assert result.warnings == []
    assert result.dialect == case.parent.name


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name.split('.in.')[0]}")
def test_golden_idempotent_and_code_kept(case: Path) -> None:
    dialect = case.parent.name
    src = case.read_text(encoding="utf-8")
    once = clean_markdown(src, dialect=dialect).text
    assert clean_markdown(once, dialect=dialect).text == once
    if dialect == "mdx":  # every fence MDX sees comes out, read the CommonMark way, unchanged
        assert fences(once, mdx=False) == fences(src, mdx=True)
    if dialect == "vitepress":  # every fence's code comes out unchanged (its meta goes)
        kept = Counter(code for _, code in fences(once, mdx=False))
        assert not Counter(vitepress_fences(src)) - kept


def test_golden_cases_cover_every_tricky_case() -> None:
    names = {c.name.split("-")[0].rstrip("ab") for c in CASES if c.parent.name == "mdx"}
    # TRICKY 6 (heading ids) lives in case 05 together with TRICKY 5.
    assert names >= {f"{n:02d}" for n in range(1, 13)} - {"06"}
