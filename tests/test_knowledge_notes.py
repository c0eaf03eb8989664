"""A teacher's study notes as amplified data, against a local fake OpenAI-compatible server:
the token budget, nothing of a held-out fact or a control page ever sent or kept, invented
names dropped, the cache, and half-and-half with the templates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from doctune.errors import ConfigError
from doctune.knowledge.amplify import count_tokens
from doctune.knowledge.facts import extract_facts
from doctune.knowledge.metrics import normalize_answer
from doctune.knowledge.notes import (
    MAX_PASSES,
    STRATEGIES,
    clean_note,
    names_supported,
    teacher_notes,
)
from doctune.knowledge.sections import split_sections
from doctune.knowledge.synth import synthesize
from doctune.knowledge.teacher import TeacherConfig
from fake_openai import fake_openai

PAGE = """# Server Options

## server.port

- **Default:** `5173`

Specify the dev server port.

## server.host

- **Default:** `'localhost'`

Specify which IP addresses the server listens on.

## server.cors

- **Default:** `true`

Configure CORS for the dev server.
"""
FILLER = ("This is what a developer should keep in mind about this part of the docs when "
          "they set up a project and run it for the first time.")


def _section_of(body: dict[str, Any]) -> str:
    user = body["messages"][1]["content"]
    return user.split("<section>\n", 1)[1].split("\n</section>", 1)[0]


def studious(body: dict[str, Any], n: int) -> tuple[int, Any]:
    """A fake teacher: a note naming what its section names (and an invented option about
    CORS), with the task's name and the request number, so each note differs."""
    section = _section_of(body)
    names = " ".join(f"It names {m}." for m in re.findall(r"`[^`\n]+`", section))
    made_up = " See also `server.corsMadeUp`." if "cors" in section.lower() else ""
    return 200, f"<think>plan</think>Note {n}. {names}{made_up} {FILLER}"


def _config(url: str) -> TeacherConfig:
    return TeacherConfig(base_url=url, model="teacher-7b", max_workers=2)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTUNE_TEACHER_API_KEY", "sk-test")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_notes_meet_the_budget_and_never_see_a_heldout_sentence(tmp_path: Path) -> None:
    facts = extract_facts(PAGE, "server.md")
    port = [f for f in facts if f.section[-1] == "server.port"]
    assert port  # the port's facts are held out: their sentences are never sent
    splits = {f.id: "heldout" if f in port else "trained" for f in facts}
    sections = split_sections(PAGE, "server.md")
    with fake_openai(studious) as server:
        rows, info, errors = teacher_notes(_config(server.url), sections, facts, splits,
                                           source_tokens=100, factor=2.0,
                                           cache_dir=tmp_path / "cache")
    assert errors == []
    sent = [_section_of(b) for b in server.requests]
    for f in port:
        assert not [s for s in sent if f.sentence in s], f.sentence
    assert all("Specify the dev server port." not in s for s in sent)
    # notes are taken in order until they hold 2 x 100 tokens; every request was one note
    assert 200 <= info["tokens"] < 200 + max(r["tokens"] for r in rows)
    assert info["tokens"] == sum(r["tokens"] for r in rows) == sum(
        count_tokens(r["text"]) for r in rows)
    assert info["achieved"] == round(info["tokens"] / 100, 3) and not info["exhausted"]
    n = info["teacher"]
    assert n["asked"] == len(server.requests) and n["cached"] == 0 and n["failed"] == 0
    # host and cors are asked about (the port's section is all held out: too short to study,
    # and so is the page's title); every note on cors names a made-up option
    assert n["sections"] == 2 and n["sections_studied"] == 1
    # the CORS section's notes name an option it does not have: dropped, never trained
    assert n["dropped_unsupported"] >= 1 and not [r for r in rows if "MadeUp" in r["text"]]
    assert all(not r["text"].startswith("<think>") for r in rows)
    assert {r["generator"] for r in rows} == {"teacher"} and rows[0]["template"] == "teacher.explain"
    by_id = {f.id: f for f in facts}
    for r in rows:  # the facts a note holds are its own section's trained ones
        assert all(splits[i] == "trained" and by_id[i].section == tuple(r["section"])
                   for i in r["fact_ids"])
    assert any(r["fact_ids"] for r in rows)
    tasks = [b["messages"][1]["content"] for b in server.requests]
    assert STRATEGIES[0][2].split(":")[0] in tasks[0]

    # the same notes again come from the cache: nothing sent
    with fake_openai(studious) as again:
        rows2, info2, _ = teacher_notes(_config(again.url), sections, facts, splits,
                                        source_tokens=100, factor=2.0,
                                        cache_dir=tmp_path / "cache")
    assert again.requests == [] and rows2 == rows and info2["teacher"]["cached"] == n["asked"]


def test_a_note_holding_a_heldout_sentence_is_dropped_and_passes_end(tmp_path: Path) -> None:
    facts = extract_facts(PAGE, "server.md")
    host = [f for f in facts if f.section[-1] == "server.host"]
    splits = {f.id: "heldout" if f in host else "trained" for f in facts}

    def leaky(body: dict[str, Any], n: int) -> tuple[int, Any]:  # knows the page by heart
        return 200, f"Note {n}. Specify which IP addresses the server listens on. {FILLER}"

    with fake_openai(leaky) as server:
        rows, info, _ = teacher_notes(_config(server.url), split_sections(PAGE, "server.md"),
                                      facts, splits, source_tokens=100, factor=50.0,
                                      cache_dir=tmp_path / "c")
    assert rows == [] and info["exhausted"] and info["tokens"] == 0
    # asked every pass over every section long enough, then stopped
    assert len(server.requests) == info["teacher"]["asked"] == info["dropped_leaks"]
    assert info["teacher"]["asked"] == MAX_PASSES * len(STRATEGIES) * info["teacher"]["sections"]
    seeds = {b.get("seed") for b in server.requests}
    assert None in seeds and len(seeds) > 1  # later passes ask again with another seed


def test_synth_amplifies_with_the_teacher_and_never_sends_a_control_page(
        tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "server.md").write_text(PAGE, encoding="utf-8")
    (docs / "preview.md").write_text(PAGE.replace("server", "preview").replace("Server", "Preview")
                                     .replace("5173", "4173"), encoding="utf-8")
    with fake_openai(studious) as server:
        got = synthesize(docs, tmp_path / "s", seed=1, control_fraction=0.5, amplify=3,
                         amplify_with="both", teacher=_config(server.url), teacher_pairs=False)
    (control,) = got.control_docs
    word = control.removesuffix(".md")
    assert server.requests and not [b for b in server.requests if word in _section_of(b)]
    rows = [json.loads(x) for x in (tmp_path / "s" / "amplified.jsonl").read_text().splitlines()]
    a = got.amplification
    assert a is not None and a["asked"] == 3
    teacher = [r for r in rows if r["generator"] == "teacher"]
    templates = [r for r in rows if r["generator"] != "teacher"]
    assert teacher and templates and a["examples"] == len(rows)
    source = a["source_tokens"]
    assert sum(r["tokens"] for r in teacher) >= 1.5 * source  # half of 3x each
    assert a["generators"]["teacher"]["tokens"] == sum(r["tokens"] for r in teacher)
    assert got.teacher is None  # teacher_pairs=False: no pairs asked, only notes
    heldout = [normalize_answer(json.loads(x)["sentence"]) for x in
               (tmp_path / "s" / "facts.jsonl").read_text().splitlines()
               if json.loads(x)["split"] != "trained"]
    assert not [r for r in rows for s in heldout if s and s in normalize_answer(r["text"])]
    with pytest.raises(ConfigError, match="needs a teacher"):
        synthesize(docs, tmp_path / "t", seed=1, amplify=3, amplify_with="teacher")
    with pytest.raises(ConfigError, match="amplify_with must be one of"):
        synthesize(docs, tmp_path / "t", seed=1, amplify=3, amplify_with="model")


def test_note_checks() -> None:
    assert clean_note("<think>\nlong plan\n</think>\n\n```markdown\n- `a`: b\n```") == "- `a`: b"
    assert clean_note("<think>never closed") == ""
    section = "## server.port\n\n- **Default:** `5173`\n"
    assert names_supported("`server.port` is `5173`.", section)
    assert names_supported("No names at all.", section)
    assert not names_supported("`server.port` and `server.hmr.port` and `8080`.", section)
