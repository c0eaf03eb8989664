"""Template questions, rephrasings and multiple-choice items over facts."""

from __future__ import annotations

from collections import Counter

from doctune.knowledge.facts import Fact, extract_facts, fact_id
from doctune.knowledge.metrics import normalize_answer
from doctune.knowledge.templates import (
    QUESTIONS,
    mc_items,
    questions_for,
    rephrasings_for,
)

DOC = ("# Server\n\n## server.port\n\n- **Default:** `5173`\n\n"
       "Specify the server port to listen on.\n\n## server.host\n\n- **Default:** `'localhost'`\n\n"
       "## preview.port\n\n- **Default:** `4173`\n\n## build.outDir\n\n- **Default:** `dist`\n\n"
       "## build.assetsDir\n\n- **Default:** `assets`\n")


def _config_facts() -> list[Fact]:
    return [f for f in extract_facts(DOC, "config.md") if f.kind == "config"]


def test_questions_use_different_phrasings_deterministically() -> None:
    fact = _config_facts()[0]
    a = questions_for(fact, "trained", seed=1, per_fact=3)
    assert [q.question for q in a] == [q.question for q in questions_for(fact, "trained", seed=1,
                                                                           per_fact=3)]
    assert len({q.question for q in a}) == 3 == len({q.template for q in a})
    assert {q.question for q in a} == {t.format(subject="server.port") for t in QUESTIONS["config"]}
    assert all(q.answer == "5173" and q.fact_id == fact.id and q.split == "trained" for q in a)
    line = a[0].to_dict()
    assert set(line) == {"id", "question", "answer", "fact_id", "split", "doc", "section",
                         "source", "template"}
    assert line["section"] == ["Server", "server.port"] and line["source"] == "template"


def test_phrasings_spread_over_facts() -> None:
    facts = [Fact(fact_id("d.md", (), "code", "S", "identifier", f"x{k}"), "code", "S",
                  "identifier", f"x{k}", f"Use `x{k}`.", "d.md", ("S",), 0, 2, "Use `____`.")
             for k in range(60)]
    first = Counter(questions_for(f, "trained", seed=0, per_fact=1)[0].template for f in facts)
    assert set(first) == {"code.q0", "code.q1", "code.q2"} and min(first.values()) >= 10


def test_rephrasings_of_relation_and_of_sentence() -> None:
    fact = _config_facts()[0]
    texts = {r.text for r in rephrasings_for(fact, "heldout", seed=0, per_fact=3)}
    assert texts == {"The default value of `server.port` is 5173.",
                     "`server.port` defaults to 5173.",
                     "If you do not set `server.port`, it is 5173."}
    heading = next(f for f in extract_facts(DOC, "config.md") if f.kind == "heading")
    (r,) = rephrasings_for(heading, "trained", seed=0, per_fact=1)
    assert heading.sentence in r.text and r.template.startswith("sentence.")
    assert r.to_dict()["split"] == "trained"


def test_mc_items_same_kind_distractors_and_chance() -> None:
    facts = _config_facts()
    assert len(facts) == 5
    items = mc_items(facts, {f.id: "heldout" for f in facts}, seed=3)
    assert len(items) == 5
    answers = {f.answer for f in facts}
    positions = set()
    for item in items:
        assert item.options[item.answer_index] == item.fact.answer
        assert len(item.options) == 4 and item.chance == 0.25
        assert set(item.options) <= answers
        assert len({normalize_answer(o) for o in item.options}) == 4
        positions.add(item.answer_index)
        line = item.to_dict()
        assert line["num_options"] == 4 and line["split"] == "heldout"
        assert line["question"] == f"What is the default value of `{item.fact.subject}`?"
    assert len(positions) > 1  # the true answer does not always sit first
    again = mc_items(facts, {}, seed=3)
    assert [i.options for i in again] == [i.options for i in items]


def test_mc_skips_a_fact_without_distractors_and_duplicates() -> None:
    facts = _config_facts()[:2]
    twin = Fact("f" * 16, "config", "other", "default", "The 5173", "", "b.md", (), 0, 8)
    items = mc_items([*facts, twin], {}, seed=0)
    by_fact = {i.fact.id: i for i in items}
    assert by_fact[facts[0].id].options.count("The 5173") == 0  # normalises like 5173
    assert len(by_fact[facts[0].id].options) == 2 and by_fact[facts[0].id].chance == 0.5
    assert mc_items(facts[:1], {}, seed=0) == []
