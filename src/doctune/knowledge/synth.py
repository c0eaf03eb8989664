"""A docs folder to knowledge training and evaluation data: the library side of
``doctune synth``.

:func:`synthesize` reads and cleans the docs with the data layer, extracts facts per
document (:mod:`~doctune.knowledge.facts`), splits them (:mod:`~doctune.knowledge.split`),
makes template questions, rephrasings and multiple-choice items
(:mod:`~doctune.knowledge.templates`) and, with a teacher, the teacher's checked pairs and
rephrasings per section (:mod:`~doctune.knowledge.teacher`). It writes into ``out_dir``:

- ``facts.jsonl``: one fact per line (fields: :mod:`doctune.knowledge.facts`) plus
  ``split``;
- ``qa.jsonl``, ``rephrasings.jsonl``, ``mc.jsonl`` (fields:
  :mod:`doctune.knowledge.templates`; natural questions, ``source`` ``"natural"``, add
  ``kind``, ``direction`` and ``phrasing_split``: :mod:`doctune.knowledge.natural`);
- ``sections.jsonl``: ``doc``, ``section`` (heading path) and ``text`` of every section of
  the docs read (:mod:`~doctune.knowledge.sections`), the context of open-book questions;
- ``amplified.jsonl`` (with ``amplify`` > 0): restatements of the trained facts to a token
  budget, each with its generator and facts (:mod:`~doctune.knowledge.amplify`), or a
  teacher's study notes of the trained documents' sections (:mod:`~doctune.knowledge.notes`);
- ``manifest.json``: ``version``, ``seed``, ``heldout_fraction``, ``control_fraction``,
  ``docs`` (documents read), ``control_docs`` (documents the lead's training must leave
  out), ``counts`` (lines per file, and facts per split and per kind), ``phrasings``
  (``heldout_fraction`` and the ``heldout`` phrasing names), ``teacher``
  (``null``, or ``{"model", "sections", "asked", "cached", "failed", "dropped_qa",
  "dropped_rephrasings"}`` —
  never a key or a URL), ``amplification`` (``null``, or what :func:`~doctune.knowledge.amplify.amplify`
  made: tokens asked and achieved, per generator);
- ``cache/notes/``: the teacher's study notes, one file per section, strategy and round;
- ``cache/teacher/``: the teacher's answers per section (see
  :mod:`~doctune.knowledge.teacher`), so a re-run after a docs change asks only about
  sections whose text changed. Sections under 20 words are not sent to the teacher. Template synthesis takes milliseconds per document and is
  simply done again.

A question whose text came out with two different answers (two facts phrased alike) is
dropped from ``qa.jsonl`` and ``mc.jsonl``: it cannot be scored. The docs folder is never
written to.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from doctune.atomic import atomic_open, write_json
from doctune.config import default_of
from doctune.data.cleantree import format_issues
from doctune.data.corpus import Skipped
from doctune.errors import ConfigError, DataError
from doctune.knowledge.facts import Fact, extract_facts
from doctune.knowledge.metrics import normalize_answer
from doctune.knowledge.natural import (
    NaturalQuestion,
    mc_rows,
    natural_questions,
    phrasing_split,
    qa_row,
)
from doctune.knowledge.sections import split_sections
from doctune.knowledge.split import split_facts, unit_hash
from doctune.knowledge.teacher import SectionResult, Teacher, TeacherConfig
from doctune.knowledge.templates import (
    MCItem,
    QAPair,
    Rephrasing,
    mc_items,
    questions_for,
    rephrasings_for,
)

MANIFEST_VERSION = 1
AMPLIFY_WITH = ("templates", "teacher", "both")
"""What writes the amplified study data: the offline templates, the teacher's notes, or half
each."""


@dataclass
class SynthSummary:
    """What one :func:`synthesize` run read and wrote; ``to_dict()`` is ``manifest.json``
    plus the paths and timings. ``teacher_errors``: the requests the teacher gave nothing
    for (also among the ``warnings``)."""

    docs_dir: str
    out_dir: str
    seed: int
    heldout_fraction: float
    control_fraction: float
    docs: list[str] = field(default_factory=list)
    control_docs: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] | None = None
    phrasings: dict[str, Any] = field(default_factory=dict)
    amplification: dict[str, Any] | None = None
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    teacher_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def teacher_failed(self, errors: Sequence[str]) -> None:
        """Record what the teacher gave nothing for (a teacher error and a warning each)."""
        self.teacher_errors.extend(errors)
        self.warnings.extend(errors)

    def manifest(self) -> dict[str, Any]:
        """The ``manifest.json`` content."""
        return {"version": MANIFEST_VERSION, "seed": self.seed,
                "heldout_fraction": self.heldout_fraction,
                "control_fraction": self.control_fraction, "docs": self.docs,
                "control_docs": self.control_docs, "counts": self.counts,
                "phrasings": self.phrasings, "teacher": self.teacher,
                "amplification": self.amplification}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the CLI's ``--json``)."""
        return {**self.manifest(), "docs_dir": self.docs_dir, "out_dir": self.out_dir,
                "skipped": [asdict(s) for s in self.skipped], "warnings": self.warnings,
                "seconds": round(self.seconds, 3)}


def check_out_dir(docs_dir: Path, out_dir: Path) -> Path:
    """``out_dir`` resolved; an error when it is, holds or lies inside the docs, or is a file."""
    from doctune.paths import check_apart

    check_apart(Path(docs_dir), Path(out_dir), what="--out",
                fix="Pass a folder outside them, e.g. `--out synth/`.")
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out `{out_dir}` is a file; pass a folder to write the data into.")
    return out


def cleaned_docs(docs_dir: Path, include: Sequence[str], exclude: Sequence[str],
                  dialect: str) -> tuple[list[tuple[str, str]], list[Skipped], list[str]]:
    """(rel, cleaned text) of each readable doc, the skipped files and cleaning warnings:
    the same reading and cleaning as training."""
    from doctune.data.cleantree import clean_docs

    cleaned = clean_docs(docs_dir, include=include, exclude=exclude, dialect=dialect)
    return [(d.rel, d.text) for d in cleaned], cleaned.skipped, cleaned.warnings


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _unambiguous_questions(qa: Sequence[QAPair | NaturalQuestion]) -> set[str]:
    answers: dict[str, set[str]] = {}
    for p in qa:
        answers.setdefault(p.question, set()).add(normalize_answer(p.answer))
    return {q for q, a in answers.items() if len(a) == 1}


def _teacher_rows(results: Sequence[SectionResult], controls: set[str], model: str, *,
                  seed: int, heldout_fraction: float) -> tuple[list[QAPair], list[Rephrasing]]:
    """The teacher's pairs and rephrasings with their splits: control for a control
    document; else a pair is held out by the same seeded hash rule as facts."""
    qa, reph = [], []
    for r in results:
        sec = r.section
        control = sec.doc in controls
        for p in r.qa:
            pair = QAPair(p["question"], p["answer"], "", "control" if control else "trained",
                          sec.doc, sec.path, "teacher", model)
            if not control and unit_hash("qa:" + pair.id, seed) < heldout_fraction:
                pair = replace(pair, split="heldout")  # the id does not depend on the split
            qa.append(pair)
        reph += [Rephrasing(t, "", "control" if control else "trained", sec.doc, sec.path,
                            "teacher", model) for t in r.rephrasings]
    return qa, reph


def _run_teacher(config: TeacherConfig, texts: Sequence[tuple[str, str]], cache: Path,
                 progress: Callable[[int, int], None] | None,
                 sleep: Callable[[float], None] | None,
                 ) -> tuple[list[SectionResult], dict[str, Any], list[str]]:
    sections = [s for rel, text in texts for s in split_sections(text, rel) if s.words >= 20]
    teacher = Teacher(config, cache, sleep=sleep) if sleep else Teacher(config, cache)
    results = teacher.run(sections, progress)
    failed = [r for r in results if r.error]
    info = {"model": config.model, "sections": len(sections),
            "asked": sum(1 for r in results if not r.cached), "cached": sum(r.cached for r in results),
            "failed": len(failed), "dropped_qa": sum(len(r.dropped) for r in results),
            "dropped_rephrasings": sum(len(r.dropped_rephrasings) for r in results)}
    errors = [f"teacher gave nothing for a section of {r.error}" for r in failed if r.error]
    return [r for r in results if not r.error], info, errors


def synthesize(
    docs_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    teacher: TeacherConfig | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    dialect: str = "auto",
    heldout_fraction: float = default_of("knowledge.heldout_fraction"),
    control_fraction: float = default_of("knowledge.control_fraction"),
    questions_per_fact: int = 2,
    rephrasings_per_fact: int = 2,
    heldout_phrasing_fraction: float = default_of("knowledge.heldout_phrasing_fraction"),
    natural_per_fact: int = default_of("knowledge.natural_per_fact"),
    amplify: float = default_of("knowledge.amplify"),
    amplify_with: str = "templates",
    teacher_pairs: bool = True,
    progress: Callable[[int, int], None] | None = None,
    teacher_sleep: Callable[[float], None] | None = None,
) -> SynthSummary:
    """Write facts, questions, rephrasings and multiple-choice items for ``docs_dir`` into
    ``out_dir`` (see the module docstring for the files).

    Natural questions (:mod:`~doctune.knowledge.natural`) come beside the template ones:
    ``natural_per_fact`` per trained fact and direction, in phrasings of which a share
    ``heldout_phrasing_fraction`` is never trained. ``amplify`` > 0 writes amplified study
    data of about that many times the trained documents' tokens, written by
    ``amplify_with``: ``"templates"`` (offline, :mod:`~doctune.knowledge.amplify`),
    ``"teacher"`` (the teacher's study notes, :mod:`~doctune.knowledge.notes`) or ``"both"``
    (half each).
    ``teacher`` adds a teacher model's pairs and rephrasings per section unless
    ``teacher_pairs`` is false (``progress(done, total)`` follows its sections, then the
    notes' tokens; ``teacher_sleep`` replaces the wait between retries).
    Raises :class:`DataError` for missing docs or an ``out_dir`` that is, holds or lies
    inside ``docs_dir``.
    """
    started = time.perf_counter()
    docs_dir = Path(docs_dir)
    out = _check_inputs(docs_dir, Path(out_dir), amplify_with, teacher)
    texts, skipped, warnings = cleaned_docs(docs_dir, include, exclude, dialect)
    facts = [f for rel, text in texts for f in extract_facts(text, rel)]
    plan = split_facts(facts, seed=seed, heldout_fraction=heldout_fraction,
                       control_fraction=control_fraction, docs=[rel for rel, _ in texts])
    controls = set(plan.control_docs)
    qa = [q for f in facts
          for q in questions_for(f, plan.splits[f.id], seed=seed, per_fact=questions_per_fact)]
    reph = [r for f in facts for r in rephrasings_for(f, plan.splits[f.id], seed=seed,
                                                       per_fact=rephrasings_per_fact)]
    summary = SynthSummary(str(docs_dir), str(out_dir), seed, heldout_fraction,
                           control_fraction, docs=[rel for rel, _ in texts],
                           control_docs=sorted(controls), skipped=skipped, warnings=warnings)
    if teacher is not None and teacher_pairs:
        results, summary.teacher, errors = _run_teacher(
            teacher, texts, out / "cache" / "teacher", progress, teacher_sleep)
        summary.teacher_failed(errors)
        t_qa, t_reph = _teacher_rows(results, controls, teacher.model, seed=seed,
                                     heldout_fraction=heldout_fraction)
        qa, reph = qa + t_qa, reph + t_reph
    # one sentence holding two facts (two identifiers, say) restates as the same text twice:
    # trained once (the first, by fact order), not weighted double
    reph = _first_of_each_text(reph)
    phrasings = phrasing_split(seed, heldout_phrasing_fraction)
    summary.phrasings = {"heldout_fraction": heldout_phrasing_fraction,
                         "heldout": sorted(n for n, s in phrasings.items() if s == "heldout")}
    qa_rows, mc_lines = _question_rows(facts, plan.splits, qa, seed=seed, phrasings=phrasings,
                                       natural_per_fact=natural_per_fact)
    summary.counts = _write_all(out, facts, plan.splits, qa_rows, reph, mc_lines,
                                _section_rows(texts))
    if amplify > 0:
        summary.amplification, errors = _amplify(
            out, texts, facts, plan.splits, controls, seed=seed, factor=amplify,
            phrasings=phrasings, using=amplify_with, teacher=teacher, progress=progress,
            sleep=teacher_sleep)
        summary.teacher_failed(errors)
        summary.counts["amplified"] = summary.amplification["examples"]
    summary.seconds = time.perf_counter() - started
    write_json(out / "manifest.json", summary.manifest())
    return summary


def _check_inputs(docs_dir: Path, out_dir: Path, amplify_with: str,
                  teacher: TeacherConfig | None) -> Path:
    """The output folder, once the docs folder exists, the output folder can hold no
    document and ``amplify_with`` can be done."""
    if not docs_dir.exists():
        raise DataError(f"docs folder `{docs_dir}` does not exist; pass the folder of "
                        "Markdown/MDX docs to synthesize from.")
    if amplify_with not in AMPLIFY_WITH:
        raise ConfigError(f"amplify_with must be one of {', '.join(AMPLIFY_WITH)}, got "
                          f"{amplify_with!r}.")
    if amplify_with != "templates" and teacher is None:
        raise ConfigError(f"amplifying with {amplify_with!r} needs a teacher: pass "
                          "--teacher-url and --teacher-model (or --amplify-with templates).")
    return check_out_dir(docs_dir, out_dir)


def _question_rows(facts: Sequence[Fact], splits: dict[str, str], qa: Sequence[Any], *,
                   seed: int, phrasings: dict[str, str], natural_per_fact: int,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``qa.jsonl`` and ``mc.jsonl`` lines: the template (and teacher) questions ``qa``
    and the natural ones, each kept only where its question has one answer."""
    natural = natural_questions(facts, splits, seed=seed, phrasings=phrasings,
                                per_fact=natural_per_fact)
    keep = _unambiguous_questions([*qa, *natural])
    natural = [q for q in natural if q.question in keep]
    qa_rows = [*(q.to_dict() for q in qa if q.question in keep),
               *(qa_row(q, splits[q.fact.id]) for q in natural)]
    mc: list[MCItem] = [m for m in mc_items(facts, splits, seed=seed) if m.question in keep]
    return qa_rows, [*(m.to_dict() for m in mc), *mc_rows(natural, facts, splits, seed=seed)]


def _amplify(out: Path, texts: Sequence[tuple[str, str]], facts: Sequence[Fact],
             splits: dict[str, str], controls: set[str], *, seed: int, factor: float,
             phrasings: dict[str, str], using: str, teacher: TeacherConfig | None,
             progress: Callable[[int, int], None] | None,
             sleep: Callable[[float], None] | None) -> tuple[dict[str, Any], list[str]]:
    """Write ``amplified.jsonl``: ``factor`` x the tokens of the documents trained on, from
    the templates, the teacher's notes or half each (``using``)."""
    from doctune.knowledge.amplify import amplify, count_tokens
    from doctune.knowledge.notes import teacher_notes

    source = sum(count_tokens(text) for rel, text in texts if rel not in controls)
    share = {"templates": 0.0, "teacher": 1.0, "both": 0.5}[using]
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    errors: list[str] = []
    if share > 0 and teacher is not None:
        sections = [s for rel, text in texts if rel not in controls
                    for s in split_sections(text, rel)]
        rows, info, errors = teacher_notes(teacher, sections, facts, splits,
                                           source_tokens=source, factor=factor * share,
                                           cache_dir=out / "cache" / "notes", seed=seed,
                                           sleep=sleep,
                                           progress=progress)
    if share < 1:
        t_rows, t_info = amplify(facts, splits, source_tokens=source,
                                 factor=factor * (1 - share), seed=seed, phrasings=phrasings)
        rows += t_rows
        info = _joined(info, t_info) if info else t_info
    info["asked"] = factor
    try:
        _write_jsonl(out / "amplified.jsonl", rows)
    except OSError as e:
        raise DataError(f"cannot write into `{out}` ({e.strerror}); pass a folder you can "
                        "write to with --out.") from e
    return info, errors


def _joined(notes: dict[str, Any], templates: dict[str, Any]) -> dict[str, Any]:
    """One amplification summary of the teacher's notes and the templates' examples."""
    tokens = notes["tokens"] + templates["tokens"]
    source = templates["source_tokens"]
    return {**templates, "tokens": tokens, "examples": notes["examples"] + templates["examples"],
            "achieved": round(tokens / source, 3) if source else 0.0,
            "exhausted": notes["exhausted"] or templates["exhausted"],
            "dropped_leaks": notes["dropped_leaks"] + templates["dropped_leaks"],
            "generators": {**notes["generators"], **templates["generators"]},
            "teacher": notes["teacher"]}


def _section_rows(texts: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One ``sections.jsonl`` line per section of each document (a long one in parts)."""
    return [{"doc": s.doc, "section": list(s.path), "text": s.text}
            for rel, text in texts for s in split_sections(text, rel)]


def _write_all(out: Path, facts: Sequence[Fact], splits: dict[str, str],
               qa: Sequence[dict[str, Any]], reph: Sequence[Rephrasing],
               mc: Sequence[dict[str, Any]], sections: Sequence[dict[str, Any]]
               ) -> dict[str, Any]:
    """Write the five JSONL files; return the counts for the manifest."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        counts: dict[str, Any] = {
            "facts": _write_jsonl(out / "facts.jsonl",
                                  ({**f.to_dict(), "split": splits[f.id]} for f in facts)),
            "qa": _write_jsonl(out / "qa.jsonl", qa),
            "rephrasings": _write_jsonl(out / "rephrasings.jsonl", (r.to_dict() for r in reph)),
            "mc": _write_jsonl(out / "mc.jsonl", mc),
            "sections": _write_jsonl(out / "sections.jsonl", sections),
        }
    except OSError as e:
        raise DataError(f"cannot write into `{out}` ({e.strerror}); pass a folder you can "
                        "write to with --out.") from e
    counts["facts_by_split"] = dict(sorted(Counter(splits[f.id] for f in facts).items()))
    counts["facts_by_kind"] = dict(sorted(Counter(f.kind for f in facts).items()))
    counts["qa_by_split"] = dict(sorted(Counter(q["split"] for q in qa).items()))
    counts["qa_by_source"] = dict(sorted(Counter(q["source"] for q in qa).items()))
    return counts


def _first_of_each_text(reph: Sequence[Rephrasing]) -> list[Rephrasing]:
    """``reph`` without the rephrasings whose text came before, in order."""
    seen: set[str] = set()
    out = []
    for r in reph:
        if r.text not in seen:
            seen.add(r.text)
            out.append(r)
    return out


def format_summary(summary: SynthSummary, max_lines: int = 10) -> str:
    """The human summary printed by ``doctune synth``."""
    c = summary.counts
    lines = [f"synthesized from {len(summary.docs)} docs into {summary.out_dir} in "
             f"{summary.seconds:.1f} s: {c.get('facts', 0):,} facts, {c.get('qa', 0):,} "
             f"questions, {c.get('mc', 0):,} multiple-choice items, "
             f"{c.get('rephrasings', 0):,} rephrasings"]
    if c.get("facts_by_kind"):
        lines.append("facts: " + ", ".join(f"{k} {v}" for k, v in c["facts_by_kind"].items()))
    if c.get("facts_by_split"):
        lines.append("split: " + ", ".join(f"{k} {v}" for k, v in c["facts_by_split"].items()))
    if summary.control_docs:
        shown = ", ".join(summary.control_docs[:max_lines])
        more = len(summary.control_docs) - max_lines
        lines.append(f"control docs (leave out of training): {shown}"
                     + (f" and {more} more" if more > 0 else ""))
    if (a := summary.amplification) is not None:
        made = ", ".join(f"{n} {g['tokens']:,}" for n, g in a["generators"].items())
        lines.append(f"amplified {a['achieved']:g}x of {a['asked']:g}x asked: {a['tokens']:,} "
                     f"tokens over {a['source_tokens']:,} in the trained docs, "
                     f"{a['examples']:,} examples ({made})"
                     + ("; the generators ran out" if a["exhausted"] else ""))
        if (n := a.get("teacher")) is not None:
            lines.append(f"teacher notes ({n['model']}): {n['sections_studied']} of "
                         f"{n['sections']} sections studied, "
                         f"{n['asked']} notes asked, {n['cached']} from cache, {n['failed']} "
                         f"failed, {n['dropped_leaks']} dropped (held a held-out fact), "
                         f"{n['dropped_unsupported']} dropped (too short, or names not in "
                         f"the section), {n.get('dropped_wrong_default', 0)} dropped (a "
                         "default not the section's)")
    t = summary.teacher
    if t:
        lines.append(f"teacher {t['model']}: {t['sections']} sections, {t['asked']} asked, "
                     f"{t['cached']} from cache, {t['failed']} failed, {t['dropped_qa']} "
                     "answers dropped (not in the section), "
                     f"{t.get('dropped_rephrasings', 0)} rephrasings dropped (not about it)")
    lines += format_issues(summary.skipped, summary.warnings, max_lines=max_lines)
    return "\n".join(lines)
