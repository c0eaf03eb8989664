"""synthesize(): the files it writes, their consistency, the teacher cache across runs,
and the docs folder left untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from doctune.errors import ConfigError, DataError
from doctune.knowledge.synth import format_summary, synthesize
from doctune.knowledge.teacher import TeacherConfig
from fake_openai import fake_openai

SECRET = "sk-synth-SECRET-42"


@pytest.fixture()
def docs(fixtures_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "config").mkdir(parents=True)
    for name in ("vite-server-options.md", "fastapi-metadata.md", "astro-config.mdx"):
        shutil.copy(fixtures_dir / "knowledge" / name, root / "config" / name)
    for k in range(6):
        (root / f"page{k}.md").write_text(
            f"# Page {k}\n\n## option{k}\n\n- **Default:** `{k * 100 + 7}`\n\n"
            f"The option{k} setting controls how many workers start, up to {k + 2} seconds "
            "apart, and it is read once at start-up by the server process.\n",
            encoding="utf-8")
    return root


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_writes_consistent_files_deterministically(docs: Path, tmp_path: Path) -> None:
    before = _tree_hash(docs)
    summary = synthesize(docs, tmp_path / "out", seed=5, control_fraction=0.2)
    assert _tree_hash(docs) == before  # the docs are never written to
    out = tmp_path / "out"
    facts, qa = _lines(out / "facts.jsonl"), _lines(out / "qa.jsonl")
    mc, reph = _lines(out / "mc.jsonl"), _lines(out / "rephrasings.jsonl")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["facts"] == len(facts) == summary.counts["facts"] > 20
    assert manifest["counts"]["qa"] == len(qa) and manifest["counts"]["mc"] == len(mc)
    assert manifest["version"] == 1 and manifest["seed"] == 5 and manifest["teacher"] is None
    assert len(manifest["docs"]) == 9 and manifest["control_docs"]
    by_id = {f["id"]: f for f in facts}
    for f in facts:  # spans point into the cleaned doc; controls follow their document
        assert (f["split"] == "control") == (f["doc"] in manifest["control_docs"])
    for q in qa:
        fact = by_id[q["fact_id"]]
        assert q["split"] == fact["split"] and q["doc"] == fact["doc"]
        if q["source"] == "natural":  # asked one way or the other, in a phrasing of its split
            assert q["answer"] in (fact["answer"], fact["subject"].strip("`"))
            assert q["phrasing_split"] == ("trained" if q["split"] == "trained" else "heldout")
            assert (q["template"] in manifest["phrasings"]["heldout"]) == (
                q["phrasing_split"] == "heldout")
        else:
            assert q["answer"] == fact["answer"] and q["source"] == "template"
    assert manifest["counts"]["qa_by_source"] == {"natural": 85, "template": 88}
    for m in mc:
        fact = by_id[m["fact_id"]]
        assert m["options"][m["answer_index"]] in (fact["answer"], fact["subject"].strip("`"))
        assert m["chance"] == 1 / m["num_options"]
    assert {r["split"] for r in reph} <= {"trained", "heldout", "control"}
    assert len({r["text"] for r in reph}) == len(reph)  # a sentence of two facts: once
    assert set(manifest["counts"]["facts_by_split"]) == {"trained", "heldout", "control"}
    first = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    synthesize(docs, out, seed=5, control_fraction=0.2)
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == first
    text = format_summary(summary)
    assert "facts" in text and "control docs (leave out of training)" in text


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_refuses_out_dir_in_or_around_the_docs(docs: Path, where: str) -> None:
    out = {"same": docs, "inside": docs / "synth", "contains": docs.parent}[where]
    before = _tree_hash(docs)
    with pytest.raises(ConfigError, match="never writes into your docs"):
        synthesize(docs, out, seed=0)
    assert _tree_hash(docs) == before


def test_missing_docs_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        synthesize(tmp_path / "nope", tmp_path / "out", seed=0)


def test_teacher_pairs_cache_and_changed_docs(docs: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTUNE_TEACHER_API_KEY", SECRET)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)

    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        prompt = body["messages"][1]["content"]
        pairs = [{"question": "How far apart do workers start?", "answer": "seconds apart"},
                 {"question": "Who reads it?", "answer": "the client process"}]
        if "workers start" not in prompt:
            pairs = []
        return 200, json.dumps({"qa": pairs, "rephrasings": ["Workers start in turn."]})

    out = tmp_path / "out"
    progress: list[tuple[int, int]] = []
    with fake_openai(answer) as server:
        cfg = TeacherConfig(base_url=server.url, model="teacher-7b", max_workers=2)
        summary = synthesize(docs, out, seed=1, teacher=cfg,
                             progress=lambda d, t: progress.append((d, t)))
        asked = len(server.requests)
        assert asked == summary.teacher["asked"] == summary.teacher["sections"] > 0  # type: ignore[index]
        assert max(progress) == (asked, asked)
        teacher_qa = [q for q in _lines(out / "qa.jsonl") if q["source"] == "teacher"]
        assert {q["answer"] for q in teacher_qa} == {"seconds apart"}
        assert summary.teacher["dropped_qa"] == 6  # type: ignore[index]
        assert all(q["template"] == "teacher-7b" and q["fact_id"] == "" for q in teacher_qa)

        again = synthesize(docs, out, seed=1, teacher=cfg)
        assert len(server.requests) == asked and again.teacher["cached"] == asked  # type: ignore[index]
        page = docs / "page3.md"
        page.write_text(page.read_text(encoding="utf-8") + "\nIt also logs a line.\n",
                        encoding="utf-8")
        synthesize(docs, out, seed=1, teacher=cfg)
        assert len(server.requests) == asked + 1  # only the changed section
    manifest = (out / "manifest.json").read_text(encoding="utf-8")
    assert json.loads(manifest)["teacher"]["model"] == "teacher-7b"
    for p in out.rglob("*"):
        if p.is_file():
            text = p.read_text(encoding="utf-8")
            assert SECRET not in text and "127.0.0.1" not in text


def test_a_sentence_holding_two_facts_is_restated_once(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Build\n\n## Output\n\nUse `outDir` together with `emptyOutDir` to "
                               "clear the folder before each build of the site.\n", encoding="utf-8")
    (docs / "b.md").write_text("# Other\n\n## Port\n\n- **Default:** `5173`\n\nThe port to "
                               "listen on.\n", encoding="utf-8")
    synthesize(docs, tmp_path / "out", seed=0, control_fraction=0.0)
    facts = [f for f in _lines(tmp_path / "out" / "facts.jsonl") if f["doc"] == "a.md"]
    assert {f["answer"] for f in facts} >= {"outDir", "emptyOutDir"}
    texts = [r["text"] for r in _lines(tmp_path / "out" / "rephrasings.jsonl")]
    assert len(texts) == len(set(texts)) and any("emptyOutDir" in t for t in texts)
