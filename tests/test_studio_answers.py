"""The studio's question-by-question view: base and tuned answers to a run's knowledge questions."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from doctune.errors import DataError
from doctune.knowledge.metrics import exact_match
from doctune.knowledge.synth import synthesize
from doctune.studio.answers import answers
from runfolders import make_lora_run

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
DOCS = Path(__file__).resolve().parents[1] / "examples" / "docs" / "fastapi-docs"


def test_answers_of_base_and_tuned_side_by_side(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    run = make_lora_run(tmp_path / "run", tiny_gpt2_dir)
    with pytest.raises(DataError, match="documents alone"):
        answers(run)
    synthesize(DOCS, run / "knowledge", seed=0)  # where knowledge.auto puts it
    tok = AutoTokenizer.from_pretrained(run / "final")
    tok.chat_template = TEMPLATE  # a template in the vocabulary's own tokens, ended by <|endoftext|>
    tok.save_pretrained(run / "final")
    rows = answers(run, per_split=2)
    assert [r["split"] for r in rows] == ["heldout", "heldout", "trained", "trained"]
    for r in rows:
        assert r["question"] and r["answer"]
        for side in ("base", "tuned"):
            assert r[side]["right"] == (exact_match(r[side]["text"], r["answer"]) == 1.0)
    # the adapter is switched off for the base: a LoRA with non-zero weights answers otherwise
    assert [r["base"]["text"] for r in rows] != [r["tuned"]["text"] for r in rows]


def test_answers_of_a_scored_run_are_read_not_recomputed(tmp_path: Path,
                                                         tiny_gpt2_dir: Path) -> None:
    import json

    run = make_lora_run(tmp_path / "run", tiny_gpt2_dir)
    lines = [{"set": "generated", "split": "heldout", "id": "q1", "question": "Which port?",
              "expected": "5173", "base_answer": "80", "base_right": False,
              "open_book_answer": "5173", "open_book_right": True,
              "tuned_answer": "It is 5173.", "tuned_right": True},
             {"set": "template", "split": "heldout", "id": "q2", "question": "Fill ____",
              "expected": "x", "base_answer": "", "base_right": False,
              "tuned_answer": "x", "tuned_right": True},
             {"set": "generated", "split": "trained", "id": "q3", "question": "Which dir?",
              "expected": "dist", "base_answer": "dist", "base_right": True,
              "tuned_answer": "dist", "tuned_right": True}]
    (run / "knowledge_answers.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = answers(run)  # no synth folder: reading it must not need one, nor a model run
    assert rows == [
        {"question": "Which port?", "answer": "5173", "split": "heldout",
         "base": {"text": "80", "right": False}, "tuned": {"text": "It is 5173.", "right": True},
         "open_book": {"text": "5173", "right": True}},
        {"question": "Which dir?", "answer": "dist", "split": "trained",
         "base": {"text": "dist", "right": True}, "tuned": {"text": "dist", "right": True},
         "open_book": None}]
