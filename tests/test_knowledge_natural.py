"""Natural questions from facts, question files, and the exam's arithmetic (open-book gap,
answer in reply, the per-question lines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doctune.errors import DataError
from doctune.knowledge.exam import gap_closed, merge_answers
from doctune.knowledge.facts import extract_facts
from doctune.knowledge.metrics import answer_in_reply
from doctune.knowledge.natural import (
    PHRASINGS,
    _identifier,
    mc_rows,
    natural_questions,
    phrasing_split,
    plural,
    predicate,
    prose_ask,
    quotes_sentence,
    thing,
)
from doctune.knowledge.questions import file_items, load_question_file

DOC = ("# Server\n\n## server.port\n\n- **Default:** `5173`\n\nSpecify the server port.\n\n"
       "## server.host\n\n- **Default:** `'localhost'`\n\nSpecify which IP addresses the server "
       "should listen on.\n\n## build.outDir\n\n- **Default:** `dist`\n\n"
       "Output directory for the final bundle.\n\n## build.sourcemap\n\n- **Default:** `false`\n\n"
       "Whether to generate production source maps.\n\n## build.minify\n\n- **Default:** `false`\n\n"
       "This option allows users to minify the bundle.\n")


def test_predicate_turns_descriptions_into_verb_phrases() -> None:
    assert predicate("Specify the server port.") == "specifies the server port"
    assert predicate("Enable/disable CSS code splitting.") == "enables/disables CSS code splitting"
    assert predicate("Defines aliases used to replace values.") == "defines aliases used to replace values"
    assert predicate("Whether to generate production source maps.") == \
        "decides whether to generate production source maps"
    assert predicate("Output directory for the final bundle.") == \
        "sets the output directory for the final bundle"
    assert predicate("This option allows users to minify it.") == "allows users to minify it"
    assert predicate("Externalize given dependencies for SSR.") == \
        "externalizes given dependencies for SSR"  # a verb made with -ize
    assert predicate("Directly customize the underlying bundle.") == \
        "directly customizes the underlying bundle"
    assert predicate("By default, all files are served.") is None  # not a description
    assert predicate("Imported assets that are small will be inlined.") is None
    assert predicate(" ".join(["Specify"] + ["word"] * 20)) is None  # too long to ask


def test_thing_is_what_a_description_says_its_option_sets() -> None:
    assert thing("Specify the server port.") == "server port"
    assert thing("Output directory for the final bundle.") == "output directory for the final bundle"
    assert thing("Sets the CSS target for the build.") == "CSS target for the build"
    assert thing("Chooses the default color mode.") == "color mode"  # not "default default"
    assert thing("Directory to serve as plain static assets.") == \
        "directory to serve as plain static assets"
    assert thing("Specify the size limit for inlined assets.") == "size limit for inlined assets"
    for description in ("Specify which IP addresses the server should listen on.",  # a clause
                        "Whether to generate production source maps.",
                        "Enable/disable CSS code splitting.",  # not a setting of a value
                        "Directly customize the underlying bundle.",  # an action
                        "Specify additional options.", "Sets up the development server.",
                        "Sets this to true to enable the cache.", "Selects between light and dark.",
                        "Controls both the port and host.", "Sets the host name, port and protocol.",
                        "Specifies Hermes as the JavaScript engine.", "Sets the `base` path.",
                        "Sets the project's GitHub organization.", "Specify the port.",
                        "Checks if the given URL's port matches the specified port.",
                        "Environment variables to be enforced by Zod and for which types exist.",
                        "Indicates the level of the notification.",
                        "Teardown the compiler instance after build."):
        assert thing(description) is None, description


def test_plural_agrees_with_the_head_noun() -> None:
    assert plural("plugins to use") and plural("WebSocket connection options")
    assert plural("conditions that are used during ssr import")
    assert not plural("list of file extensions") and not plural("CORS for the dev server")
    assert not plural("output directory") and not plural("address")


def _port_doc(preview_description: str) -> str:
    return ("# Options\n\n## server.port\n\n- **Default:** `5173`\n\nSpecify the server port.\n\n"
            "Also, `server.strictPort` defaults to `false`.\n\n## preview.port\n\n"
            f"- **Default:** `4173`\n\n{preview_description}\n")


def _purpose(doc: str, held: str = "") -> set[tuple[str, str]]:
    facts = extract_facts(doc, "o.md")
    splits = {f.id: "heldout" if held and f.kind == held else "trained" for f in facts}
    qs = natural_questions(facts, splits, seed=0, phrasings=phrasing_split(0, 0.3), per_fact=5)
    return {(q.fact.subject, q.answer) for q in qs if q.direction == "purpose"}


def test_purpose_questions_only_where_the_answer_is_one_and_nothing_leaks() -> None:
    # two options described alike: "the default server port" would have two answers
    assert _purpose(_port_doc("Specify the server port.")) == set()
    # described apart: each asked; the key mentioned inside server.port's section is not
    assert _purpose(_port_doc("Specify the preview server port.")) == {
        ("server.port", "5173"), ("preview.port", "4173")}
    # the description held out, the default trained: a trained question would answer it
    assert _purpose(_port_doc("Specify the preview server port."), held="heading") == set()
    # the default held out: asked (in a held-out phrasing), the description trained or not
    assert _purpose(_port_doc("Specify the preview server port."), held="config") == {
        ("server.port", "5173"), ("preview.port", "4173")}


def test_phrasing_split_is_seeded_and_keeps_both_sides() -> None:
    a = phrasing_split(0, 0.3)
    assert a == phrasing_split(0, 0.3) and len(a) == sum(len(t) for t in PHRASINGS.values())
    for kind, direction in PHRASINGS:
        group = {v for k, v in a.items() if k.startswith(f"natural.{kind}.{direction}.")}
        assert group == {"trained", "heldout"}, (kind, direction)
    assert sorted(a.values()).count("heldout") == 21
    assert set(phrasing_split(0, 0.0).values()) == {"trained"}


def test_natural_questions_both_ways_in_their_split_phrasings() -> None:
    facts = extract_facts(DOC, "config.md")
    port = next(f for f in facts if f.kind == "config" and f.subject == "server.port")
    splits = {f.id: "trained" for f in facts} | {port.id: "heldout"}
    phrasings = phrasing_split(0, 0.3)
    qs = natural_questions(facts, splits, seed=0, phrasings=phrasings, per_fact=2)
    assert qs == natural_questions(facts, splits, seed=0, phrasings=phrasings, per_fact=2)
    mine = [q for q in qs if q.fact.id == port.id]
    # held out: one question a direction, in a held-out phrasing
    assert sorted(q.direction for q in mine) == ["name", "purpose", "value"]
    assert {q.answer for q in mine} == {"5173", "server.port"}
    assert all(q.phrasing_split == "heldout" == phrasings[q.template] for q in mine)
    # "false" is the default of two options: never asked the name way
    assert not [q for q in qs if q.direction == "name" and q.fact.answer == "false"]
    # which option does what: not where the question would hold the whole description
    # ("Which option sets the output directory for the final bundle?" quotes it)
    names = {q.answer for q in qs if q.fact.kind == "heading" and q.direction == "name"}
    assert names == {"server.port", "server.host", "build.minify"}
    assert all(not quotes_sentence(q.question, q.fact.sentence) for q in qs)
    trained = [q for q in qs if q.fact.id != port.id]
    assert all(q.phrasing_split == "trained" == phrasings[q.template] for q in trained)
    # a default asked by what the option sets, where the description names one thing
    purpose = {(q.fact.subject, q.question, q.answer) for q in qs if q.direction == "purpose"}
    assert purpose == {
        ("server.port", "By default, what is the server port?", "5173"),
        ("build.outDir", "Unless I change it, what is the output directory for the final bundle?",
         "dist"),
        ("build.outDir", "What is the default output directory for the final bundle?", "dist")}
    assert len(qs) == 28
    rows = mc_rows(qs, facts, splits, seed=0)
    # a line per fact and direction, but the held-out fact's 3 (no other held-out answer)
    # and build.outDir's purpose (the only other default asked by purpose was server.port's)
    assert len({(q.fact.id, q.direction) for q in qs}) == 18
    assert len(rows) == 18 - 3 - 1 and {r["split"] for r in rows} == {"trained"}
    for r in rows:
        assert r["options"][r["answer_index"]] in {q.answer for q in qs if q.fact.id == r["fact_id"]}
        assert len({o.lower() for o in r["options"]}) == len(r["options"])
    # the held-out question's options are held-out answers only, never trained ones (a tuned
    # model prefers what it was trained to say, whatever the question)
    host = next(f for f in facts if f.kind == "config" and f.subject == "server.host")
    splits |= {host.id: "heldout"}
    qs = natural_questions(facts, splits, seed=0, phrasings=phrasings, per_fact=2)
    rows = mc_rows(qs, facts, splits, seed=0)
    held = [r for r in rows if r["split"] == "heldout"]
    held_answers = {q.answer for q in qs if splits[q.fact.id] == "heldout"}
    trained_answers = {q.answer for q in qs if splits[q.fact.id] == "trained"}
    assert held and all(set(r["options"]) <= held_answers for r in held)
    assert {r["fact_id"] for r in held} == {port.id, host.id}
    assert all(set(r["options"]) <= trained_answers for r in rows if r["split"] == "trained")


def test_quotes_sentence() -> None:
    assert quotes_sentence("Specify the server port. What is it?", "Specify the server port.")
    assert not quotes_sentence("Which option specifies the server port?", "Specify the server port.")
    # a default of punctuation only leaves one word: asking about that default quotes nothing
    assert not quotes_sentence("What does `base` default to?", "**Default:** `/`")
    assert not quotes_sentence("Does it set the server portal?", "Set the server port.")


def test_question_file_rows_items_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [{"id": "a", "question": "Which port?", "answer": "5173", "aliases": ["port 5173"],
             "distractors": ["3000", "8080"], "doc": "server.md", "section": ["S"]},
            {"id": "b", "question": "Default mode?", "answer": "dev", "doc": "mode.md"},
            {"id": "c", "question": "Where?", "answer": "x", "doc": "unread.md"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    items = file_items(load_question_file(path), docs=["server.md", "mode.md"],
                       control_docs=["mode.md"])
    assert [(i.id, i.split) for i in items] == [("a", "trained"), ("b", "control")]
    a = items[0]
    assert a.golds == ("5173", "port 5173") and len(a.options) == 3
    assert a.options[a.answer_index] == "5173" and items[1].options == ()
    path.write_text('{"question": "Q?"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r'q.jsonl:1: "answer" must be a non-empty string'):
        load_question_file(path)
    path.write_text('{"question": "Q?", "answer": "a", "id": "x"}\n' * 2, encoding="utf-8")
    with pytest.raises(DataError, match=r"q.jsonl:2: \"id\" 'x' repeats"):
        load_question_file(path)


def test_answer_in_reply_gap_closed_and_answer_lines() -> None:
    assert answer_in_reply("The default port is 5173.", "5173") == 1.0
    assert answer_in_reply("It is 51730.", "5173") == 0.0
    assert answer_in_reply("Use `server.strictPort`.", ["strictPort", "server.strictPort"]) == 1.0
    gap = gap_closed({"heldout_em": 0.1, "hand_em": 0.5}, {"heldout_em": 0.5, "hand_em": 0.4},
                     {"heldout_em": 0.3, "hand_em": 0.6})
    assert gap["heldout_em"] == pytest.approx(0.5) and gap["hand_em"] is None
    rec = {"set": "handwritten", "split": "trained", "id": "a", "question": "Q?",
           "expected": "5173", "doc": "d"}
    lines = merge_answers([{**rec, "answer": "3000", "exact": 0.0, "f1": 0.0, "contains": 0.0}],
                          [{**rec, "answer": "5173", "exact": 1.0, "f1": 1.0, "contains": 1.0}],
                          [{**rec, "answer": "It is 5173", "exact": 0.0, "f1": 0.5,
                            "contains": 1.0}])
    assert lines == [{**rec, "base_answer": "3000", "base_right": False, "base_exact": False,
                      "base_f1": 0.0, "open_book_answer": "5173", "open_book_right": True,
                      "open_book_exact": True, "open_book_f1": 1.0,
                      "tuned_answer": "It is 5173", "tuned_right": True, "tuned_exact": False,
                      "tuned_f1": 0.5}]


TUTORIAL = """# Query Parameters

When you declare other function parameters that are not part of the path parameters, they are \
automatically interpreted as query parameters.

## Create an Enum class

Import `Enum` and create a sub-class that inherits from `str` and from `Enum`.

## Run it

Start the server with `fastapi dev` and open your browser at the address it prints.

## Results

With just that Python type declaration, the framework will:

## Why use Pydantic?

Pydantic validates the data for you and gives clear errors when it is wrong.

## Step 2: create your data model

Then you declare your data model as a class that inherits from `BaseModel`.

## Pydantic

All the data validation is performed under the hood by Pydantic, so you get all its benefits.
"""


def test_prose_headings_are_asked_as_people_ask_about_a_tutorial() -> None:
    answer = "When you declare parameters that are not path parameters, they are query parameters."
    assert prose_ask("Query Parameters", answer) == ("about", {"topic": "query parameters"})
    assert prose_ask("Create an Enum class", "Import `Enum` and create a sub-class of it.") == (
        "how", {"task": "create an Enum class"})
    assert prose_ask("Step 2: create your data model", "Then you declare your data model.") \
        == ("how", {"task": "create my data model"})
    assert prose_ask("Why use Pydantic", "Pydantic validates the data for you.") == (
        "ask", {"question": "Why use Pydantic?"})
    assert prose_ask("Pydantic", "The data is validated by Pydantic, under the hood.") == (
        "about", {"topic": "Pydantic"})
    # a heading that points elsewhere, an introduction that takes up nothing of its heading,
    # a first sentence too short to answer anything
    assert prose_ask("Run it", "Start the server and open your browser at its address.") is None
    assert prose_ask("How does it work?", "The server reloads each module you change.") is None
    # a title-cased task is still a task, in the words prose writes; one-word titles every
    # site has ask nothing; an all-capitals word is a title, not an option
    assert prose_ask("Add React to an Existing Project",
                     "You can add React to an existing project with npm.") == (
        "how", {"task": "add React to an existing project"})
    assert prose_ask("Installation", "Installation takes one command with npm.") is None
    assert not _identifier("FAQ") and _identifier("NODE_ENV") and _identifier("server.port")
    assert prose_ask("Results", "With just that Python type declaration, it will:") is None
    assert prose_ask("Query Parameters", "Query parameters.") is None

    facts = extract_facts(TUTORIAL, "tutorial/query.md")
    splits = {f.id: "trained" for f in facts}
    qs = natural_questions(facts, splits, seed=0, phrasings=phrasing_split(0, 0.0), per_fact=1)
    asked = {(q.fact.subject, q.direction) for q in qs if q.fact.kind == "heading"}
    assert asked == {("Query Parameters", "about"), ("Create an Enum class", "how"),
                     ("Why use Pydantic?", "ask"), ("Step 2: create your data model", "how"),
                     ("Pydantic", "about")}
    by = {q.fact.subject: q for q in qs if q.fact.kind == "heading"}
    assert by["Create an Enum class"].answer.startswith("Import `Enum` and create a sub-class")
    assert by["Create an Enum class"].question in [
        t.format(task="create an Enum class") for t in PHRASINGS["heading", "how"]]
    # a capitalised word is a title, not an identifier: never "What is `Results` for?"
    assert not [q for q in qs if "`Results`" in q.question or "`Pydantic`" in q.question]
    # two sections of one title (in two pages) are not asked: the question would be ambiguous
    twice = facts + extract_facts(TUTORIAL.replace("# Query Parameters", "# Path Parameters"),
                                  "tutorial/path.md")
    again = natural_questions(twice, {f.id: "trained" for f in twice}, seed=0,
                              phrasings=phrasing_split(0, 0.0), per_fact=1)
    assert not [q for q in again if q.fact.subject == "Create an Enum class"]
    assert [q for q in again if q.fact.subject == "Path Parameters"]
