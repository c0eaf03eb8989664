"""``doctune synth`` and ``doctune eval --knowledge`` through the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from doctune.cli import app
from fake_openai import fake_openai
from test_knowledge_mix import DOCS

runner = CliRunner()


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-docs")
    for name in ("server.md", "build.md", "cache.md"):
        (root / name).write_text(DOCS[name], encoding="utf-8")
    return root


def test_synth_writes_the_files_and_a_json_summary(docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    res = runner.invoke(app, ["synth", str(docs), "--out", str(out), "--seed", "0",
                              "--control-fraction", "0", "--questions-per-fact", "1",
                              "--rephrasings-per-fact", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["docs"] == ["build.md", "cache.md", "server.md"]
    assert summary["control_docs"] == [] and summary["teacher"] is None
    # one template question per fact, and natural ones
    assert summary["counts"]["facts"] == summary["counts"]["qa_by_source"]["template"] == 19
    # one per fact, less the 2 that repeat another fact's text (two facts in one sentence)
    # multiple choice: 7 fill-in-the-blank items, 6 natural ones (a fact and a direction
    # each, of those with an answer of the same kind in their split to stand beside theirs:
    # 3 held-out ones have none)
    assert summary["counts"]["rephrasings"] == 17 and summary["counts"]["mc"] == 7 + 6
    for name in ("facts.jsonl", "qa.jsonl", "mc.jsonl", "rephrasings.jsonl", "sections.jsonl",
                 "manifest.json"):
        assert (out / name).is_file(), name
    plain = runner.invoke(app, ["synth", str(docs), "--out", str(out)])
    assert plain.exit_code == 0 and "synthesized from 3 docs" in plain.output


def test_synth_refusals_are_one_line_errors(docs: Path, tmp_path: Path) -> None:
    inside = runner.invoke(app, ["synth", str(docs), "--out", str(docs / "synth")])
    assert inside.exit_code == 2 and "never writes into your docs" in inside.output
    no_url = runner.invoke(app, ["synth", str(docs), "--out", str(tmp_path / "s"),
                                 "--teacher-model", "m"])
    assert no_url.exit_code == 2 and "--teacher-model needs --teacher-url" in no_url.output
    no_model = runner.invoke(app, ["synth", str(docs), "--out", str(tmp_path / "s"),
                                   "--teacher-url", "http://127.0.0.1:9/v1"])
    assert no_model.exit_code == 2 and "needs --teacher-model" in no_model.output
    no_teacher = runner.invoke(app, ["synth", str(docs), "--out", str(tmp_path / "s"),
                                     "--amplify", "2", "--amplify-with", "teacher"])
    assert no_teacher.exit_code == 2 and "needs a teacher: pass --teacher-url" in no_teacher.output
    bad = runner.invoke(app, ["synth", str(docs), "--out", str(tmp_path / "s"),
                              "--heldout-fraction", "1.5"])
    assert bad.exit_code == 2 and "heldout_fraction" in bad.output


def test_synth_with_a_teacher_server(docs: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTUNE_TEACHER_API_KEY", "k")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)

    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        return 200, json.dumps({"qa": [{"question": "Where does the build write files?",
                                        "answer": "dist"}], "rephrasings": []})

    with fake_openai(answer) as server:
        res = runner.invoke(app, ["synth", str(docs), "--out", str(tmp_path / "s"), "--json",
                                  "--teacher-url", server.url, "--teacher-model", "t-7b",
                                  "--teacher-workers", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["teacher"]["model"] == "t-7b" and summary["teacher"]["asked"] >= 1
    assert summary["counts"]["qa_by_source"]["teacher"] >= 1


def test_eval_knowledge_prints_base_and_tuned(docs: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from doctune.modeling import train_tokenizer

    tok = train_tokenizer(DOCS.values(), 400)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256,
                               vocab_size=len(tok), bos_token_id=tok.eos_token_id,
                               eos_token_id=tok.eos_token_id)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    run = tmp_path / "run"
    res = runner.invoke(app, [
        "train", str(docs), "--out", str(run), "--set", f"model.name={tmp_path / 'm'}",
        "--set", "knowledge.auto=true", "--set", "knowledge.qa_share=0.3",
        "--set", "knowledge.replay_share=0.1", "--set", "knowledge.control_fraction=0.6",
        "--set", "data.block_size=128", "--set", "data.overlap=8", "--set", "train.max_steps=2",
        "--set", "train.micro_batch_size=2", "--set", "train.grad_accum=1",
        "--set", "train.device=cpu", "--set", "train.precision=fp32",
        "--set", "log.tensorboard=false", "--set", "log.progress=false",
        "--set", "train.sample_max_new_tokens=2", "--set", "train.eval_every=0"])
    assert res.exit_code == 0, res.output
    assert "knowledge mix per pass" in res.output
    page = (run / "report.html").read_text()
    assert "Does it know the docs?" in page and "trained questions, exact match" in page
    saved = json.loads((run / "knowledge_eval.json").read_text())
    assert saved["control_docs"] == ["build.md"]

    res = runner.invoke(app, ["eval", str(run), "--knowledge", "--json", "--device", "cpu",
                              "--max-questions", "3"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    for side in ("base", "tuned"):
        for key in ("heldout_mc_acc", "heldout_em", "trained_em", "heldout_doc_ppl",
                    "general_ppl", "stop_rate"):
            assert key in result[side], (side, key)
        assert result[side]["trained_em_n"] == 3
        assert result[side]["general_ppl"] > 1 and result[side]["heldout_doc_ppl"] > 1
        # build.md is the control document: its 3 fill-in-the-blank items (its natural
        # questions have no other control answer of their kind to stand beside)
        assert result[side]["control_template_mc_acc_n"] == 3
        assert "control_mc_acc_n" not in result[side]
        low, high = result[side]["control_template_mc_acc_ci"]
        assert 0 <= low <= result[side]["control_template_mc_acc"] <= high <= 1
    table = runner.invoke(app, ["eval", str(run), "--knowledge", "--device", "cpu",
                                "--max-questions", "2"])
    assert table.exit_code == 0 and "perplexity" in table.output and "gap" in table.output

    no_data = runner.invoke(app, ["eval", str(run)])
    assert no_data.exit_code == 2 and "--data DOCS" in no_data.output
    not_run = runner.invoke(app, ["eval", str(tmp_path / "m"), "--knowledge"])
    assert not_run.exit_code == 2 and "pass a run folder" in not_run.output


def test_synth_amplifies_with_a_teachers_notes(docs: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTUNE_TEACHER_API_KEY", "k")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    filler = ("is what a developer should remember about this page when they set up a "
              "project and run it for the first time.")

    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        if "response_format" in body:  # the question/answer pairs
            return 200, json.dumps({"qa": [], "rephrasings": []})
        section = body["messages"][1]["content"].split("<section>")[1].split("</section>")[0]
        return 200, f"Note {n}: {' and '.join(re.findall('`[^`]+`', section))} {filler}"

    with fake_openai(answer) as server:
        res = runner.invoke(app, ["synth", str(docs), "--out", str(tmp_path / "s"),
                                  "--amplify", "1", "--amplify-with", "teacher",
                                  "--teacher-url", server.url, "--teacher-model", "t-7b"])
    assert res.exit_code == 0, res.output
    assert "teacher notes (t-7b): 2 of 2 sections studied, " in res.output
    assert "amplified 1" in res.output and "ran out" not in res.output
    rows = [json.loads(x) for x in (tmp_path / "s" / "amplified.jsonl").read_text().splitlines()]
    assert rows and {r["generator"] for r in rows} == {"teacher"}
    # build.md is the control page: never studied (its questions are asked, as control ones)
    assert {r["doc"] for r in rows} <= {"server.md", "cache.md"}
    notes = [b for b in server.requests if "response_format" not in b]
    assert notes and not [b for b in notes if "# Build" in b["messages"][-1]["content"]]
