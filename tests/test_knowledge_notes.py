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
    defaults_agree,
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
    # round 0: the first section studied (host) explained, the next (cors) asked questions
    host = next(t for t in tasks if "server.host" in t)
    cors = next(t for t in tasks if "server.cors" in t)
    assert STRATEGIES[0][2] in host and STRATEGIES[1][2] in cors

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


def test_every_round_mixes_the_strategies_and_each_section_gets_each_once(
        tmp_path: Path) -> None:
    """Round ``r`` gives section ``i`` strategy ``(r + i) mod 5``: a budget that ends in the
    first round is not all one strategy, and 5 rounds ask each section every strategy."""
    options = [f"build.option{k}" for k in range(8)]  # rounds of 8: whole batches of 2 requests
    page = "# Build Options\n\n" + "".join(
        f"## {o}\n\n- **Default:** `{k}`\n\nSets how the build treats part {k} of the "
        f"bundle when it writes it.\n\n" for k, o in enumerate(options))
    facts = extract_facts(page, "build.md")
    with fake_openai(studious) as server:
        _, info, _ = teacher_notes(_config(server.url), split_sections(page, "build.md"),
                                   facts, {f.id: "trained" for f in facts},
                                   source_tokens=10, factor=10_000.0, cache_dir=tmp_path / "c")
    n = info["teacher"]["sections"]
    assert n == len(options) and info["teacher"]["asked"] == MAX_PASSES * len(STRATEGIES) * n

    def asked(body: dict[str, Any]) -> tuple[str, str]:
        user = body["messages"][1]["content"]
        (name,) = [s[0] for s in STRATEGIES if s[2] in user]
        return user.split('section "', 1)[1].split('"', 1)[0], name

    got = [asked(b) for b in server.requests]
    first = [name for _, name in got[:n]]  # round 0: every strategy, none more than twice
    assert set(first) == {s[0] for s in STRATEGIES}
    assert max(first.count(s) for s in first) == 2
    by_section: dict[str, list[str]] = {}
    for title, name in got[:len(STRATEGIES) * n]:
        by_section.setdefault(title, []).append(name)
    assert len(by_section) == n
    assert all(sorted(v) == sorted(s[0] for s in STRATEGIES) for v in by_section.values())


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


def test_a_teacher_that_gives_nothing_is_counted_not_guessed_from_text(tmp_path: Path) -> None:
    """Every refused note is a teacher error of the summary (what ``doctune train`` warns
    about), and a warning; nothing is amplified from it."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "server.md").write_text(PAGE, encoding="utf-8")

    def refuses(body: dict[str, Any], n: int) -> tuple[int, Any]:
        return 400, {"error": {"message": "model not loaded", "type": "invalid_request_error"}}

    with fake_openai(refuses) as server:
        got = synthesize(docs, tmp_path / "s", seed=1, control_fraction=0, amplify=1,
                         amplify_with="teacher", teacher=_config(server.url),
                         teacher_pairs=False)
    assert got.amplification is not None and got.amplification["examples"] == 0
    asked = got.amplification["teacher"]["asked"]
    assert asked == len(server.requests) == got.amplification["teacher"]["failed"] > 0
    assert len(got.teacher_errors) == asked
    assert all("server.md" in e and "model not loaded" in e for e in got.teacher_errors)
    assert set(got.teacher_errors) <= set(got.warnings)


def test_note_checks() -> None:
    assert clean_note("<think>\nlong plan\n</think>\n\n```markdown\n- `a`: b\n```") == "- `a`: b"
    assert clean_note("<think>never closed") == ""
    section = "## server.port\n\n- **Default:** `5173`\n"
    assert names_supported("`server.port` is `5173`.", section)
    assert names_supported("No names at all.", section)
    assert not names_supported("`server.port` and `server.hmr.port` and `8080`.", section)
    # a switch set the other way names nothing new; a made-up flag does
    assert names_supported("Set `server.port` to `false`, `null` or `undefined`.", section)
    assert not names_supported("`server.port` with `--port-strict`.", section)


def test_a_note_stating_another_default_than_its_section_is_caught() -> None:
    page = ("# SSR Options\n\n## ssr.resolve.conditions\n\n"
            "- **Default:** `['module', 'node', 'development|production']` "
            "(`defaultServerConditions`)\n\nConditions used in the plugin pipeline.\n\n"
            "## ssr.noExternal\n\n- **Default:** `false`\n\nDependencies to bundle.\n")
    facts = extract_facts(page, "ssr.md")
    cond = [f for f in facts if f.section[-1] == "ssr.resolve.conditions"]
    assert any(f.kind == "config" for f in cond)
    right = ("If you set nothing, `ssr.resolve.conditions` defaults to "
             '`["module", "node", "development|production"]`.')
    swapped = ("- When it is set to `['module', 'node', 'development|production']`, Node's "
               "packages resolve.\n- If no setting for `ssr.resolve.conditions` is provided, "
               "it defaults to `['module', 'browser', 'development|production']`.")
    assert defaults_agree(right, cond)  # the other quote style, the same list
    assert not defaults_agree(swapped, cond)
    # the default named after the value, an identifier of the section, the short name
    assert defaults_agree("By default `defaultServerConditions` is what "
                          "`ssr.resolve.conditions` holds.", cond)
    assert not defaults_agree("The default of `conditions` is `['browser']`.", cond)
    # a part of a long default, and a clause that names no default, or two options, or none
    assert defaults_agree("`ssr.resolve.conditions` defaults to a list with `'node'`.", cond)
    assert defaults_agree("Set `ssr.resolve.conditions` to `['browser']` for workers.", cond)
    assert defaults_agree("`ssr.noExternal` has the same default as `ssr.resolve.conditions`: "
                          "`true`.", facts)
    assert defaults_agree("It defaults to `['browser']`.", cond)
    # each clause (line or sentence) is judged: one wrong default among right ones is caught
    assert not defaults_agree("`ssr.noExternal` defaults to `false`. `ssr.noExternal` is "
                              "`true` by default.", facts)
    assert defaults_agree("`ssr.noExternal` defaults to `false`; set it to `true` to bundle.",
                          facts)
    assert defaults_agree("Anything at all about `ssr.noExternal` by default.", [])
    # the section's value said beside another, or a value set against the default: kept
    assert defaults_agree("`ssr.noExternal` defaults to `false`, and you can set it to `true`.",
                          facts)
    assert defaults_agree("Set `ssr.noExternal` to `true` to override the default.", facts)
    assert defaults_agree("The default for `ssr.noExternal` is false, but `true` is common.",
                          facts)
    # a default the section gives in some case is not a contradiction
    section = "If you build for workers, `ssr.noExternal` is `true` by default."
    said = "For workers `ssr.noExternal` defaults to `true`."
    assert defaults_agree(said, facts, section) and not defaults_agree(said, facts)


def test_a_note_with_a_wrong_default_is_dropped(tmp_path: Path) -> None:
    """A switch turned the other way names nothing new (the names check keeps it): the
    defaults check drops it."""
    facts = extract_facts(PAGE, "server.md")
    splits = {f.id: "trained" for f in facts}

    def swaps(body: dict[str, Any], n: int) -> tuple[int, Any]:  # CORS is off, it says
        section = _section_of(body)
        names = " ".join(f"It names {m}." for m in re.findall(r"`[^`\n]+`", section))
        wrong = " `server.cors` is `false` by default." if "server.cors" in section else ""
        return 200, f"Note {n}. {names}{wrong} {FILLER}"

    with fake_openai(swaps) as server:
        rows, info, _ = teacher_notes(_config(server.url), split_sections(PAGE, "server.md"),
                                      facts, splits, source_tokens=100, factor=50.0,
                                      cache_dir=tmp_path / "c")
    n = info["teacher"]
    assert n["dropped_wrong_default"] == MAX_PASSES * len(STRATEGIES) > 0  # every CORS note
    assert n["dropped_unsupported"] == 0
    assert rows and not [r for r in rows if "false" in r["text"]]
    assert {tuple(r["section"])[-1] for r in rows} == {"server.port", "server.host"}


def test_train_asks_the_teacher_for_its_study_data(tmp_path: Path) -> None:
    """``doctune train --teacher-url`` makes the run's study data with the teacher: its
    pairs beside the templates' questions, its notes as the amplified data."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from typer.testing import CliRunner

    from doctune.cli import app
    from doctune.modeling import train_tokenizer

    docs = tmp_path / "docs"
    docs.mkdir()
    page = PAGE + ("\n## Getting started\n\nRead this page before you change an option of the "
                   "dev server, and restart the server after each change, so that the new "
                   "value is the one it uses.\n")  # long enough to be asked for pairs
    (docs / "server.md").write_text(page, encoding="utf-8")
    (docs / "preview.md").write_text(page.replace("server", "preview").replace("Server", "Preview")
                                     .replace("5173", "4173"), encoding="utf-8")

    def teacher(body: dict[str, Any], n: int) -> tuple[int, Any]:
        if "response_format" in body:  # the question/answer pairs of a section
            return 200, json.dumps({"qa": [{
                "question": "What do I do after I change an option of the dev server?",
                "answer": "restart the server"}], "rephrasings": []})
        if "List what follows from" in body["messages"][1]["content"]:  # one strategy refused
            return 400, {"error": {"message": "context too long", "type": "invalid_request"}}
        return studious(body, n)

    tok = train_tokenizer([PAGE], 300)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=256,
                               vocab_size=len(tok), bos_token_id=tok.eos_token_id,
                               eos_token_id=tok.eos_token_id)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    run = tmp_path / "run"
    common = ["--out", str(run), "--model", str(tmp_path / "m"), "--set", "knowledge.auto=true",
              "--set", "knowledge.rephrase_share=0.3", "--set", "knowledge.control_fraction=0",
              "--set", "knowledge.amplify=1", "--set", "knowledge.amplify_with=teacher",
              "--set", "data.block_size=64", "--set", "data.overlap=8", "--set", "train.max_steps=1",
              "--set", "train.micro_batch_size=2", "--set", "train.device=cpu",
              "--set", "train.precision=fp32", "--set", "log.tensorboard=false",
              "--set", "log.progress=false", "--set", "train.sample_max_new_tokens=2",
              "--set", "train.eval_every=0", "--set", "log.report=false"]
    runner = CliRunner()
    with fake_openai(teacher) as server:
        res = runner.invoke(app, ["train", str(docs), *common, "--teacher-url", server.url,
                                  "--teacher-model", "teacher-7b"])
    assert res.exit_code == 0, res.output
    assert "asking the teacher teacher-7b" in res.output
    assert "warning: the teacher gave nothing for" in res.output
    assert "context too long" in res.output
    k = run / "knowledge"
    rows = [json.loads(x) for x in (k / "amplified.jsonl").read_text().splitlines()]
    assert rows and {r["generator"] for r in rows} == {"teacher"}
    qa = [json.loads(x) for x in (k / "qa.jsonl").read_text().splitlines()]
    assert [q for q in qa if q.get("source") == "teacher"]
    assert (k / "cache" / "notes").is_dir() and (k / "cache" / "teacher").is_dir()
    assert server.requests and all(b["model"] == "teacher-7b" for b in server.requests)

    # what cannot work is said before anything is made
    no_teacher = runner.invoke(app, ["train", str(docs), *common, "--overwrite"])
    assert no_teacher.exit_code == 2 and "needs a teacher: set `knowledge.teacher_url`" in (
        no_teacher.output)
    no_model = runner.invoke(app, ["train", str(docs), *common, "--overwrite",
                                   "--teacher-url", "http://127.0.0.1:9/v1"])
    assert no_model.exit_code == 2 and "needs `knowledge.teacher_model`" in no_model.output
    both = runner.invoke(app, ["train", str(docs), "--docs-only", "--teacher-url",
                               "http://127.0.0.1:9/v1", "--out", str(tmp_path / "r2")])
    assert both.exit_code == 2 and "pass one of them" in both.output
