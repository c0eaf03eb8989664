"""Amplified study data: a token budget met (or said to be out of reach), every generator's
examples recorded with their facts, and nothing of a held-out fact or a control document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doctune.knowledge.amplify import GENERATORS, LEAK_SENTENCE_WORDS, _leaks, count_tokens, leaks
from doctune.knowledge.facts import Fact
from doctune.knowledge.metrics import normalize_answer
from doctune.knowledge.mix import load_synth
from doctune.knowledge.synth import synthesize


def _page(name: str, options: list[tuple[str, str, str]]) -> str:
    parts = [f"# {name} Options\n"]
    for key, default, what in options:
        parts.append(f"## {key}\n\n- **Type:** `string`\n- **Default:** `{default}`\n\n{what}\n")
    return "\n".join(parts)


DOCS = {
    "server.md": _page("Server", [
        ("server.port", "5173", "Specify the dev server port."),
        ("server.host", "localhost", "Specify which IP addresses the server listens on."),
        ("server.open", "false", "Open the app in the browser on server start."),
        ("server.cors", "true", "Configure CORS for the dev server."),
        ("server.proxy", "{}", "Configure custom proxy rules for the dev server.")]),
    "build.md": _page("Build", [
        ("build.outDir", "dist", "Specify the output directory."),
        ("build.target", "modules", "Set the browser compatibility target for the final bundle."),
        ("build.minify", "esbuild", "Set to false to disable minification."),
        ("build.sourcemap", "false", "Generate production source maps.")]),
    "preview.md": _page("Preview", [
        ("preview.port", "4173", "Specify the preview server port."),
        ("preview.strictPort", "false", "Exit if the port is already in use.")]),
}


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adocs")
    for name, text in DOCS.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def _synth(docs: Path, out: Path, amplify: float) -> tuple[dict, list[dict], list[dict]]:
    synthesize(docs, out, seed=1, heldout_fraction=0.3, control_fraction=0.3, amplify=amplify)
    manifest = json.loads((out / "manifest.json").read_text())
    rows = [json.loads(x) for x in (out / "amplified.jsonl").read_text().splitlines()]
    facts = [json.loads(x) for x in (out / "facts.jsonl").read_text().splitlines()]
    return manifest, rows, facts


def test_amplify_meets_the_budget_and_records_it(docs: Path, tmp_path: Path) -> None:
    manifest, rows, facts = _synth(docs, tmp_path / "s", 3)
    a = manifest["amplification"]
    source = sum(count_tokens(t) for rel, t in _cleaned(docs) if rel not in manifest["control_docs"])
    assert manifest["control_docs"] == ["build.md"]
    assert a["source_tokens"] == source == 238
    assert a["tokens"] == sum(r["tokens"] for r in rows) == sum(count_tokens(r["text"]) for r in rows)
    assert 3 * source <= a["tokens"] < 3 * source + max(r["tokens"] for r in rows)
    assert a["examples"] == len(rows) == 16 and not a["exhausted"] and a["dropped_leaks"] == 0
    assert a["achieved"] == round(a["tokens"] / source, 3)
    made = {g: sum(r["generator"] == g for r in rows) for g, _, _ in GENERATORS}
    assert made == {g: a["generators"][g]["examples"] for g in made}
    assert made == {"frames": 4, "qa": 4, "lists": 4, "passages": 4}  # taken in turn
    assert all(a["generators"][g]["makes"] for g in made)
    assert manifest["counts"]["amplified"] == len(rows)
    assert len({r["text"] for r in rows}) == len(rows)  # no example twice
    # every example names facts of its document, and the section they share
    by_id = {f["id"]: f for f in facts}
    for r in rows:
        assert r["fact_ids"] and all(by_id[i]["doc"] == r["doc"] for i in r["fact_ids"])
        assert all(by_id[i]["section"][:len(r["section"])] == r["section"] for i in r["fact_ids"])
    # asked beyond what the templates make: it stops and says so
    manifest, rows, _ = _synth(docs, tmp_path / "big", 1000)
    big = manifest["amplification"]
    assert big["exhausted"] and big["achieved"] < 1000 and big["tokens"] == sum(r["tokens"] for r in rows)
    assert len(rows) == 407 and big["generators"]["passages"]["examples"] == 234
    # a default of punctuation alone (`{}`) is asked about too (its sentence is one word)
    assert any("`server.proxy`" in r["text"] and r["text"].endswith("Answer: {}") for r in rows)
    # defaults said by what the option sets, and linked to its name
    said = {r["text"] for r in rows if r["template"].startswith("config.purpose.")}
    assert "By default, the preview server port is `4173` (`preview.port`)." in said
    assert "Question: What is the default preview server port?\nAnswer: 4173" in {
        r["text"] for r in rows if r["template"].startswith("natural.config.purpose.")}


def _cleaned(docs: Path) -> list[tuple[str, str]]:
    from doctune.knowledge.synth import cleaned_docs

    return cleaned_docs(docs, (), (), "auto")[0]


def test_amplified_examples_never_hold_a_heldout_fact_or_a_control_doc(
        docs: Path, tmp_path: Path) -> None:
    manifest, rows, facts = _synth(docs, tmp_path / "s", 1000)  # every example there is
    split = {f["id"]: f["split"] for f in facts}
    held = [f for f in facts if f["split"] != "trained"]
    assert sum(f["split"] == "heldout" for f in held) >= 3 and manifest["control_docs"]
    assert {split[i] for r in rows for i in r["fact_ids"]} == {"trained"}
    assert not {r["doc"] for r in rows} & set(manifest["control_docs"])
    texts = [normalize_answer(r["text"]) for r in rows]
    for f in held:  # neither the sentence nor the relation of a held-out or control fact
        sentence = normalize_answer(f["sentence"])
        assert len(sentence.split()) < LEAK_SENTENCE_WORDS or not [
            t for t in texts if sentence in t], f
        subject = f["subject"].strip("`")
        assert not [r for r in rows if subject in r["text"] and f["answer"].strip("`") in r["text"]
                    and f["kind"] == "config"], f
    control_keys = {f["subject"].strip("`") for f in facts if f["doc"] in manifest["control_docs"]}
    assert "build.outDir" in control_keys
    assert not [r for r in rows if any(k in r["text"] for k in control_keys)]
    assert load_synth(tmp_path / "s").amplified == rows  # what training reads


def test_no_amplify_writes_no_file(docs: Path, tmp_path: Path) -> None:
    synthesize(docs, tmp_path / "s", seed=1)
    assert not (tmp_path / "s" / "amplified.jsonl").exists()
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["amplification"] is None
    assert load_synth(tmp_path / "s").amplified == []


def test_a_short_heldout_sentence_leaks_only_with_its_subject() -> None:
    """``Default: `false``` is said of many options: an example saying it of a trained one
    is no leak; the held-out option's name with its answer is, however it is worded."""
    port = Fact("a", "config", "server.strictPort", "default", "false", "**Default:** `false`",
                "s.md", ("Server", "server.strictPort"), 0, 1)
    desc = Fact("b", "config", "server.open", "description", "open the app in the browser",
                "Automatically open the app in the browser on server start.", "s.md",
                ("Server", "server.open"), 0, 1)
    forbidden = _leaks([port, desc], {"a": "heldout", "b": "heldout"})
    assert not leaks("`server.cors`: **Default:** `false`. It defaults to false.", forbidden)
    assert leaks("Set `server.strictPort` to `false`, its default.", forbidden)
    assert not leaks("`server.strictPort` defaults to falsehood.", forbidden)  # whole words
    assert leaks("It will automatically open the app in the browser on server start!", forbidden)
    assert not leaks("Automatically open the app.", forbidden)
