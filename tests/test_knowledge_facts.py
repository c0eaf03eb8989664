"""Facts from cleaned docs: golden cases on real excerpts, spans, ids and the split."""

from __future__ import annotations

from pathlib import Path

import pytest

from doctune.data.clean import clean_markdown
from doctune.errors import ConfigError
from doctune.knowledge.facts import BLANK, Fact, extract_facts, fact_id, span_answer
from doctune.knowledge.split import control_documents, split_facts, unit_hash

GOLDEN = {
    ("vite-server-options.md", "markdown"): [
        ("heading", "Server Options", "first sentence",
         "Unless noted, the options in this section are only applied to dev."),
        ("config", "server.host", "default", "'localhost'"),
        ("heading", "server.host", "first sentence",
         "Specify which IP addresses the server should listen on."),
        ("flag", "server.host", "flag", "--host"),
        ("config", "server.port", "default", "5173"),
        ("heading", "server.strictPort", "first sentence",
         "Set to `true` to exit if port is already in use, instead of automatically trying "
         "the next available port."),
    ],
    ("fastapi-metadata.md", "markdown"): [
        ("heading", "Metadata and Docs URLs", "first sentence",
         "You can customize several metadata configurations in your **FastAPI** application."),
        ("heading", "Metadata for API", "first sentence",
         "You can set the following fields that are used in the OpenAPI specification and "
         "the automatic API docs UIs:"),
        ("table", "title", "Type", "str"),
        ("table", "title", "Description", "The title of the API."),
        ("table", "summary", "Type", "str"),
        ("table", "summary", "Description",
         "A short summary of the API. Available since OpenAPI 3.1.0, FastAPI 0.99.0."),
        ("table", "description", "Type", "str"),
        ("table", "description", "Description",
         "A short description of the API. It can use Markdown."),
        ("table", "version", "Type", "str"),
        ("table", "terms_of_service", "Type", "str"),
        ("table", "terms_of_service", "Description",
         "A URL to the Terms of Service for the API. If provided, this has to be a URL."),
    ],
    ("astro-config.mdx", "mdx"): [
        ("config", "trailingSlash", "default", "'ignore'"),
        ("heading", "trailingSlash", "first sentence",
         "Set the route matching behavior for trailing slashes in the dev server and "
         "on-demand rendered pages."),
        ("definition", 'Match URLs regardless of whether a trailing "/" exists.', "term",
         "'ignore'"),
        ("code", "trailingSlash", "identifier", "always"),
        ("definition", 'Only match URLs that include a trailing slash (e.g: "/about/").',
         "term", "'always'"),
        ("code", "trailingSlash", "identifier", "never"),
        ("definition", 'Only match URLs that do not include a trailing slash (e.g: "/about").',
         "term", "'never'"),
        ("config", "security.actionBodySizeLimit", "default", "1048576"),
        ("number", "security.actionBodySizeLimit", "quantity", "1 MB"),
        ("heading", "security.actionBodySizeLimit", "first sentence",
         "Sets the maximum size in bytes allowed for action request bodies."),
        ("number", "security.actionBodySizeLimit", "quantity", "1048576 bytes"),
    ],
}


def _cleaned(fixtures_dir: Path, name: str, dialect: str) -> str:
    raw = (fixtures_dir / "knowledge" / name).read_text(encoding="utf-8")
    return clean_markdown(raw, dialect=dialect).text


@pytest.mark.parametrize(("name", "dialect"), list(GOLDEN))
def test_golden_facts_of_real_excerpts(fixtures_dir: Path, name: str, dialect: str) -> None:
    text = _cleaned(fixtures_dir, name, dialect)
    facts = extract_facts(text, name)
    assert [(f.kind, f.subject, f.relation, f.answer) for f in facts] == GOLDEN[name, dialect]
    for f in facts:
        assert span_answer(text[f.start:f.end]) == f.answer
        assert f.doc == name
        assert f.id == fact_id(name, f.section, f.kind, f.subject, f.relation, f.answer)
        assert BLANK in f.cloze and f.answer in f.sentence


def test_fact_details_sentence_section_cloze(fixtures_dir: Path) -> None:
    text = _cleaned(fixtures_dir, "vite-server-options.md", "markdown")
    flag = next(f for f in extract_facts(text, "config/server.md") if f.kind == "flag")
    assert flag.section == ("Server Options", "server.host")
    assert flag.sentence == "This can be set via the CLI using `--host 0.0.0.0` or `--host`."
    assert flag.cloze == "This can be set via the CLI using `____ 0.0.0.0` or `--host`."
    assert Fact.from_dict(flag.to_dict()) == flag


def test_code_blocks_html_and_links_are_not_mined() -> None:
    text = ("# Run\n\nStart it with `serve` and wait 5 seconds.\n\n"
            "```sh\nserve --port 80 # 10 MB\n```\n\n"
            "See [the page](https://x.dev/--hidden-3-MB) for more.\n")
    facts = extract_facts(text, "run.md")
    assert [(f.kind, f.answer) for f in facts] == [
        ("heading", "Start it with `serve` and wait 5 seconds."),
        ("code", "serve"),
        ("number", "5 seconds"),
    ]


def test_definition_list_and_defaults_sentence() -> None:
    text = ("# Terms\n\nWorker\n: A process that runs jobs in the background.\n\n"
            "The option `retries` defaults to `3` when unset.\n")
    facts = extract_facts(text, "t.md")
    got = {(f.kind, f.subject, f.answer) for f in facts}
    assert ("definition", "A process that runs jobs in the background.", "Worker") in got
    assert ("config", "retries", "3") in got
    for f in facts:
        assert span_answer(text[f.start:f.end]) == f.answer


def test_sentences_do_not_end_inside_code_or_after_eg() -> None:
    text = "# A\n\nUse `a.b. C` here, e.g. `main.py`. Then stop.\n"
    code = [f for f in extract_facts(text, "a.md") if f.kind == "code"]
    assert [f.sentence for f in code] == ["Use `a.b. C` here, e.g. `main.py`."]


def test_ids_stable_when_the_rest_of_the_doc_changes() -> None:
    base = "# Server\n\n## port\n\n- **Default:** `8080`\n"
    more = "# Server\n\nA new intro paragraph.\n\n## port\n\n- **Default:** `8080`\n"
    a = [f for f in extract_facts(base, "s.md") if f.kind == "config"]
    b = [f for f in extract_facts(more, "s.md") if f.kind == "config"]
    assert [f.id for f in a] == [f.id for f in b] and a[0].start != b[0].start


def _facts(docs: int, per_doc: int) -> list[Fact]:
    out = []
    for d in range(docs):
        for k in range(per_doc):
            doc = f"doc{d}.md"
            fid = fact_id(doc, (), "code", "s", "identifier", f"x{k}")
            out.append(Fact(fid, "code", "s", "identifier", f"x{k}", "", doc, (), 0, 2))
    return out


def test_split_is_stable_when_docs_are_added() -> None:
    small, big = _facts(20, 10), _facts(30, 10)
    a = split_facts(small, seed=7, heldout_fraction=0.25, control_fraction=0.1)
    b = split_facts(big, seed=7, heldout_fraction=0.25, control_fraction=0.1)
    assert all(b.splits[k] == v for k, v in a.splits.items())
    assert set(a.control_docs) <= set(b.control_docs)
    counts = b.counts()
    assert sum(counts.values()) == 300 and counts["control"] > 0 and counts["heldout"] > 0
    for f in big:  # the rule, computed again by hand
        want = ("control" if f.doc in b.control_docs else
                "heldout" if unit_hash("fact:" + f.id, 7) < 0.25 else "trained")
        assert b.splits[f.id] == want
    assert split_facts(big, seed=8, heldout_fraction=0.25, control_fraction=0.1).splits != b.splits


def test_split_keeps_a_document_to_train_on_and_checks_fractions() -> None:
    assert control_documents(["only.md"], seed=0, fraction=0.99) == ()
    few = [f"config/{k}.md" for k in range(8)]
    by_hash = sorted(few, key=lambda d: unit_hash("doc:" + d, 0))
    assert all(unit_hash("doc:" + d, 0) >= 0.05 for d in few)  # the threshold picks none...
    assert control_documents(few, seed=0, fraction=0.05) == (by_hash[0],)  # ...so one is taken
    assert control_documents(few, seed=0, fraction=0.0) == ()
    with pytest.raises(ConfigError, match="heldout_fraction"):
        split_facts([], seed=0, heldout_fraction=1.5, control_fraction=0.1)
    assert 0.0 <= unit_hash("x", 1) < 1.0 and unit_hash("x", 1) == unit_hash("x", 1)


def test_no_fact_without_context_or_with_ragged_white_space() -> None:
    text = ("# A\n\n`ONLY_NAME`\n\nCall `run_all` to start it.\n\n"
            "## B\n\nThe  first   sentence has runs of spaces.\n")
    facts = extract_facts(text, "a.md")
    assert [(f.kind, f.answer) for f in facts] == [("code", "run_all")]
    assert facts[0].cloze == "Call `____` to start it."


def test_a_sentence_wrapped_over_lines_is_one_answer() -> None:
    text = ("# Caching\n\nThe dev server caches every dependency it pre-bundles\n"
            "in `node_modules/.vite` until the lockfile changes.\n\n"
            "## Quotes\n\n> A quoted sentence that wraps\n> is left alone.\n\n"
            "## Lists\n\n- `strict`: Refuses to serve files that lie\n"
            "  outside the workspace root.\n\n"
            "## Quiz\n\nA page\nUI component\nall of the above, since components are so "
            "useful to everyone.\n\n"
            "## Learn more\n\n[Deploy from the UI](https://example.com/docs/deployments/ui)\n"
            "[Deploy from the command line](https://example.com/docs/cli/hosting/deploy)\n\n"
            "## `headers`\n\n  **Type:** `boolean`\n  **Default:** `false`\n\n"
            "Sends the headers of prerendered pages with each response.\n\n"
            "## WebSockets\n\nYou can use\n"
            "[WebSockets](https://developer.mozilla.org/en-US/docs/Web/API/WebSockets_API)\n"
            "with **FastAPI** and its test client.\n\n"
            "## Bindings\n\n**[reduxjs/react-redux](https://github.com/reduxjs/react-redux)**\n"
            "Official React bindings for Redux, kept by the Redux team.\n")
    facts = extract_facts(text, "c.md")
    heading = [f for f in facts if f.kind == "heading"]
    assert [(f.subject, f.answer) for f in heading] == [
        ("Caching", "The dev server caches every dependency it pre-bundles in "
                    "`node_modules/.vite` until the lockfile changes."),
        ("headers", "Sends the headers of prerendered pages with each response."),
        ("WebSockets", "You can use [WebSockets](https://developer.mozilla.org/en-US/docs/Web/"
                       "API/WebSockets_API) with **FastAPI** and its test client.")]
    assert "\n" in text[heading[0].start:heading[0].end]
    definition = next(f for f in facts if f.kind == "definition")
    assert definition.subject == "Refuses to serve files that lie outside the workspace root."
    for f in facts:
        assert span_answer(text[f.start:f.end]) == f.answer


def test_a_number_and_its_unit_on_two_lines_is_one_fact() -> None:
    text = ("# Timeouts\n\nThe server waits for 30\nseconds before it closes an idle "
            "connection, and\n5 MB is the largest body it reads.\n")
    facts = [f for f in extract_facts(text, "t.md") if f.kind == "number"]
    assert [f.answer for f in facts] == ["30 seconds", "5 MB"]
    assert text[facts[0].start:facts[0].end] == "30\nseconds"
    assert facts[0].cloze == ("The server waits for ____ before it closes an idle connection, "
                              "and 5 MB is the largest body it reads.")


def test_span_answer_reads_a_wrap_as_a_space_and_nothing_else() -> None:
    assert span_answer("runs on\n  port 5173") == "runs on port 5173"
    assert span_answer("a hard  \nbreak") == "a hard break"
    assert span_answer("a backslash\\\nbreak") == "a backslash break"
    assert span_answer("two\n\nparagraphs") == ""
    assert span_answer("a quote\n> goes on") == ""
    assert span_answer("runs  of spaces") == ""
    assert span_answer(" padded") == "" and span_answer("\n") == ""
