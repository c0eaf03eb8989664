"""Question sets for the knowledge exam: the generated one of a synth folder and question
files written by hand, as plain items to score; and the open-book prompt.

A question file (``doctune eval RUN --knowledge --questions FILE``) is JSONL, one question
a line: ``question`` and ``answer`` (required), ``aliases`` (other right answers),
``distractors`` (wrong answers, for multiple choice), ``doc`` (the page, relative to the docs
folder), ``section`` (its heading path), ``evidence`` and ``id`` (optional). Such questions
are never trained on. Each is sorted by its page: ``trained`` (a page the run read),
``control`` (a control page), or left out (a page this synth folder did not read).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doctune.errors import DataError
from doctune.knowledge.split import unit_hash

OPEN_BOOK = "Here is a part of the docs:\n\n{context}\n\nAnswer from it, briefly: {question}"
"""The prompt of an open-book question: the section, then the question."""


@dataclass(frozen=True)
class Item:
    """One question to score: greedy answer against ``golds``; multiple choice over
    ``options`` when it has some."""

    id: str
    question: str
    golds: tuple[str, ...]
    split: str
    doc: str = ""
    section: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    answer_index: int = -1
    meta: dict[str, Any] = field(default_factory=dict)


def _fail(path: Path, line: int, what: str) -> DataError:
    return DataError(f"{path}:{line}: {what}. Each line of a question file is a JSON object "
                     'with "question" and "answer" (and optionally "aliases", "distractors", '
                     '"doc", "section", "evidence", "id").')


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


def load_question_file(path: Path) -> list[dict[str, Any]]:
    """The rows of a question file, checked; :class:`DataError` names the line and field."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read the question file `{path}` ({e.strerror}).") from None
    rows, ids = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise _fail(path, n, f"not JSON ({e})") from None
        if not isinstance(row, dict):
            raise _fail(path, n, "not a JSON object")
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise _fail(path, n, f'"{key}" must be a non-empty string, got {row.get(key)!r}')
        for key in ("aliases", "distractors", "section"):
            if key in row and not _strings(row[key]):
                raise _fail(path, n, f'"{key}" must be a list of non-empty strings')
        row.setdefault("id", f"line-{n}")
        if row["id"] in ids:
            raise _fail(path, n, f'"id" {row["id"]!r} repeats an earlier line')
        ids.add(row["id"])
        rows.append(row)
    if not rows:
        raise DataError(f"the question file `{path}` holds no questions.")
    return rows


def file_items(rows: Sequence[dict[str, Any]], *, docs: Sequence[str],
               control_docs: Sequence[str], seed: int = 0) -> list[Item]:
    """Items of a question file for a synth folder that read ``docs``: ``control`` on a
    control page, ``trained`` on another page read (or with no page given), left out on a
    page not read. The right option's place among the distractors is seeded by the id."""
    read, controls = set(docs), set(control_docs)
    out = []
    for r in rows:
        doc = r.get("doc", "")
        if doc and doc not in read:
            continue
        options: list[str] = list(r.get("distractors", []))
        at = -1
        if options:
            at = int(unit_hash("hand-mc:" + r["id"], seed) * (len(options) + 1))
            options.insert(at, r["answer"])
        out.append(Item(r["id"], r["question"], (r["answer"], *r.get("aliases", [])),
                        "control" if doc in controls else "trained", doc,
                        tuple(r.get("section", ())), tuple(options), at))
    return out


def generated_items(qa: Sequence[dict[str, Any]], mc: Sequence[dict[str, Any]], *,
                    source: str | None) -> tuple[list[Item], list[Item]]:
    """(questions, multiple-choice items) of a synth folder's ``qa.jsonl`` and ``mc.jsonl``
    lines, of one ``source`` (``"natural"``; ``"template"`` also takes lines without one,
    and teacher questions) or all for None."""
    def keep(row: dict[str, Any]) -> bool:
        got = row.get("source", "template")
        return source is None or got == source or (source == "template" and got == "teacher")

    def item(r: dict[str, Any], **kw: Any) -> Item:
        return Item(r["id"], r["question"], kw.pop("golds", ()), r["split"], r.get("doc", ""),
                    tuple(r.get("section", ())), **kw,
                    meta={k: r[k] for k in ("kind", "direction", "template") if k in r})

    questions = [item(r, golds=(r["answer"],)) for r in qa if keep(r)]
    choices = [item(r, options=tuple(r["options"]), answer_index=r["answer_index"])
               for r in mc if keep(r)]
    return questions, choices


def section_texts(folder: Path) -> dict[tuple[str, tuple[str, ...]], str]:
    """(doc, heading path) -> the section's text (its parts joined) from a synth folder's
    ``sections.jsonl``; empty when the folder has none (made before sections were written)."""
    path = Path(folder) / "sections.jsonl"
    if not path.is_file():
        return {}
    out: dict[tuple[str, tuple[str, ...]], str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            key = (r["doc"], tuple(r["section"]))
            out[key] = out[key] + "\n\n" + r["text"] if key in out else r["text"]
    return out


def open_book(item: Item, sections: dict[tuple[str, tuple[str, ...]], str]) -> str | None:
    """``item``'s question with its section before it (:data:`OPEN_BOOK`); None when the
    section is not known."""
    context = sections.get((item.doc, item.section))
    return None if context is None else OPEN_BOOK.format(context=context.strip(),
                                                         question=item.question)
