"""The knowledge exam as a table: base, open book, tuned, change and the share of the
open-book gap closed, one row per score (the CLI's table and the report's section)."""

from __future__ import annotations

from typing import Any

ROWS = (
    ("held-out questions, exact match", "heldout_em", "acc"),
    ("held-out questions, answer in reply", "heldout_contains", "acc"),
    ("held-out questions, token F1", "heldout_f1", "acc"),
    ("held-out multiple choice", "heldout_mc_acc", "acc"),
    ("control-doc multiple choice", "control_mc_acc", "acc"),
    ("your questions, exact match", "hand_em", "acc"),
    ("your questions, answer in reply", "hand_contains", "acc"),
    ("your questions, token F1", "hand_f1", "acc"),
    ("your questions, multiple choice", "hand_mc_acc", "acc"),
    ("your questions on control docs, MC", "hand_control_mc_acc", "acc"),
    ("trained questions, exact match", "trained_em", "acc"),
    ("trained questions, token F1", "trained_f1", "acc"),
    ("held-out fill-the-blank questions, exact", "heldout_template_em", "acc"),
    ("held-out fill-the-blank multiple choice", "heldout_template_mc_acc", "acc"),
    ("answers that stop (end of turn)", "stop_rate", "acc"),
    ("held-out document perplexity", "heldout_doc_ppl", "ppl"),
    ("general English perplexity", "general_ppl", "ppl"),
)
"""(label, key, kind) of each line of the comparison, in order."""
COLUMNS = ("", "base", "open book", "tuned", "change", "gap closed")
"""The columns of :func:`comparison_rows`."""


def _cell(scores: dict[str, Any], key: str, kind: str) -> str:
    value = scores.get(key)
    if value is None:
        return "-"
    if kind == "ppl":
        return f"{value:,.2f}"
    ci = scores.get(f"{key}_ci")
    n = scores.get(f"{key}_n")
    return f"{100 * value:.1f}%" + (f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}] n={n}" if ci else "")


def comparison_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per line of :data:`ROWS` (columns :data:`COLUMNS`): accuracies with their 95%
    Wilson interval; the open book (the base with the section in its prompt) and the share
    of its gap over the base that training closed, where measured."""
    rows: list[tuple[str, ...]] = []
    base, tuned = result["base"], result["tuned"]
    open_book, gap = result.get("open_book") or {}, result.get("gap_closed") or {}
    for label, key, kind in ROWS:
        b, t = base.get(key), tuned.get(key)
        if b is None and t is None:
            continue
        if b is None or t is None:
            change = "-"
        elif kind == "ppl":
            change = f"{100 * (t / b - 1):+.1f}%"
        else:
            change = f"{100 * (t - b):+.1f} pts"
        chance = base.get(key.replace("_acc", "_chance")) if key.endswith("mc_acc") else None
        if chance:
            label += f" (chance {100 * chance:.0f}%)"
        share = gap.get(key)
        rows.append((label, _cell(base, key, kind), _cell(open_book, key, kind),
                     _cell(tuned, key, kind), change,
                     "-" if share is None else f"{100 * share:.0f}%"))
    return rows


def knowledge_table(result: dict[str, Any]) -> Any:
    """A rich table of :func:`comparison_rows`."""
    from rich.table import Table

    table = Table(title=f"knowledge: {result['run']}")
    for col in COLUMNS:
        table.add_column(col, justify="left" if not col else "right")
    for row in comparison_rows(result):
        table.add_row(*row)
    return table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def headline(result: dict[str, Any]) -> list[str]:
    """The end of a run in a few lines: what it answers now that it did not before, on the
    questions training never saw (the user's own questions too, when scored), and one
    question answered before and after (the first the tuned model got right and the base
    did not, else the first)."""
    base, tuned = result["base"], result["tuned"]
    open_book = result.get("open_book") or {}
    lines = []
    for prefix, what in (("heldout", "held-out questions (never trained)"),
                         ("hand", "your questions")):
        if tuned.get(f"{prefix}_contains") is None:
            continue
        n = tuned.get(f"{prefix}_contains_n")
        part = (f"{what}{f', {n}' if n else ''}: right answer in the reply "
                f"{_pct(base.get(f'{prefix}_contains'))} -> {_pct(tuned.get(f'{prefix}_contains'))}")
        if open_book.get(f"{prefix}_contains") is not None:
            part += f" (with the page in the prompt: {_pct(open_book[f'{prefix}_contains'])})"
        if tuned.get(f"{prefix}_mc_acc") is not None:
            chance = base.get(f"{prefix}_mc_chance")
            part += (f"; multiple choice {_pct(base.get(f'{prefix}_mc_acc'))} -> "
                     f"{_pct(tuned.get(f'{prefix}_mc_acc'))}"
                     + (f" (chance {_pct(chance)})" if chance else ""))
        lines.append(part)
    b, t = base.get("general_ppl"), tuned.get("general_ppl")
    if b and t:
        lines.append(f"general English perplexity {b:.1f} -> {t:.1f} ({100 * (t / b - 1):+.1f}%)")
    answers = [a for a in result.get("answers", []) if a.get("split") == "heldout"
               and a.get("set") != "template" and "tuned_answer" in a]
    if answers:
        pick = next((a for a in answers if a.get("tuned_right") and not a.get("base_right")),
                    answers[0])
        lines += [f"asked: {pick['question']}  (expected: {pick['expected']})",
                  f"  before: {_one_line(pick['base_answer'])}",
                  f"  after:  {_one_line(pick['tuned_answer'])}"]
    return lines


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()) or "(nothing)"
    return text if len(text) <= limit else text[:limit - 3] + "..."
