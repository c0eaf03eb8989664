"""The end-of-run report: one self-contained ``report.html`` (plots inlined as base64 PNG)
plus the PNG plots under ``plots/``, built only from what the run folder holds.

Read from the run folder, each optional: ``metrics.jsonl``, ``samples.jsonl`` (or
``samples.md``), ``config.yaml``, ``data_summary.json`` and ``run.json``. From ``run.json``
the report shows ``val_loss_before``/``val_ppl_before`` and ``val_loss_after``/``val_ppl_after``
(taken from the first and last evaluation in ``metrics.jsonl`` when absent), ``steps``,
``total_steps``, ``tokens_seen`` and ``train_time_s`` (or ``duration_s``) in the summary
cards, and every other plain value in a table.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from pathlib import Path
from typing import Any

from doctune.errors import CheckpointError
from doctune.monitor.loggers import read_jsonl
from doctune.monitor.plots import write_plots
from doctune.monitor.progress import format_duration, format_mb
from doctune.rundir import RunDir

_CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --accent:#2563eb; --good:#15803d; --bad:#b91c1c; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif; color:var(--fg); background:var(--bg); }
main { max-width:1120px; margin:0 auto; padding:32px 24px 64px; }
h1 { font-size:26px; margin:0 0 4px; } h2 { font-size:19px; margin:40px 0 12px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:20px 0 8px; } .sub { color:var(--muted); margin:0 0 24px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(200px,1fr)); gap:12px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:14px 16px; }
.card.wide { grid-column:span 2; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:24px; font-weight:600; margin-top:2px; font-variant-numeric:tabular-nums; }
.card .n { color:var(--muted); font-size:13px; } .good { color:var(--good); } .bad { color:var(--bad); }
.plots { display:grid; grid-template-columns:repeat(auto-fit,minmax(440px,1fr)); gap:14px; }
.plots figure { margin:0; background:#fff; border:1px solid var(--line); border-radius:10px; padding:8px; }
.plots img { width:100%; height:auto; display:block; }
table { border-collapse:collapse; background:#fff; font-size:14px; font-variant-numeric:tabular-nums; }
td, th { border:1px solid var(--line); padding:5px 10px; text-align:left; vertical-align:top; }
th { background:#f3f4f6; font-weight:600; }
.sample { background:#fff; border:1px solid var(--line); border-radius:10px; margin:0 0 16px; overflow:hidden; }
.sample .prompt { background:#eff6ff; padding:8px 12px; border-bottom:1px solid var(--line); }
.sample .row { display:grid; grid-template-columns:84px 1fr; border-top:1px solid var(--line); }
.sample .row:first-of-type { border-top:0; }
.sample .step { padding:8px 12px; font-size:13px; color:var(--muted); background:#f9fafb; border-right:1px solid var(--line); }
.sample pre { margin:0; padding:8px 12px; white-space:pre-wrap; word-wrap:break-word; font:13px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
.sample .prompt pre { padding:0; font-weight:600; }
pre.block { background:#fff; border:1px solid var(--line); border-radius:10px; padding:12px 14px; overflow:auto; font:13px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
details summary { cursor:pointer; color:var(--accent); margin:6px 0; }
"""


def _num(value: float, digits: int = 4) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3e}"
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _before_after(run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float | None]:
    evals = [r for r in rows if isinstance(r.get("val_loss"), int | float) and "train_loss" not in r]
    first = evals[0] if evals else {}
    last = evals[-1] if len(evals) > 1 else {}
    out: dict[str, float | None] = {}
    for when, row in (("before", first), ("after", last)):
        for key in ("val_loss", "val_ppl"):
            value = run.get(f"{key}_{when}", row.get(key))
            out[f"{key}_{when}"] = float(value) if isinstance(value, int | float) else None
    return out


def _cards(run: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    ba = _before_after(run, rows)
    train = [r for r in rows if "train_loss" in r]
    cards: list[tuple[str, str, str]] = []
    before, after = ba["val_ppl_before"], ba["val_ppl_after"]
    if before is not None and after is not None:
        if 0 < after <= before / 2:
            ratio = before / after
            change, cls = f"{ratio:,.0f}x lower" if ratio >= 10 else f"{ratio:.1f}x lower", "good"
        else:
            pct = (after - before) / before * 100 if before else 0.0
            change, cls = f"{pct:+.1f}%", "good" if pct < 0 else "bad"
        cards.append(("validation perplexity", f"{_num(before)} → {_num(after)}",
                      f'<span class="{cls}">{change}</span> before → after training'))
    elif before is not None:
        cards.append(("validation perplexity", _num(before), "before training"))
    if train:
        last = train[-1]
        cards.append(("final train loss", _num(float(last["train_loss"])), f"at step {last['step']}"))
    steps = run.get("steps", train[-1]["step"] if train else None)
    if steps is not None:
        total = run.get("total_steps")
        cards.append(("steps", f"{steps:,}" if isinstance(steps, int) else _esc(steps),
                      f"of {total:,}" if isinstance(total, int) else "optimizer updates"))
    tokens = run.get("tokens_seen", train[-1].get("tokens_seen") if train else None)
    if isinstance(tokens, int | float):
        cards.append(("tokens seen", f"{int(tokens):,}", "training tokens"))
    tps = [float(r["tokens_per_sec"]) for r in train if isinstance(r.get("tokens_per_sec"), int | float)]
    if tps:
        cards.append(("throughput", f"{statistics.median(tps):,.0f} tok/s", "median over logged steps"))
    peak = max((float(r[k]) for r in rows for k in ("mem_peak_rss_mb", "mem_rss_mb")
                if isinstance(r.get(k), int | float)), default=None)
    if peak is not None:
        dev = max((float(r[k]) for r in rows for k in ("mem_device_peak_mb", "mem_device_driver_mb")
                   if isinstance(r.get(k), int | float)), default=None)
        cards.append(("peak memory", format_mb(peak),
                      "process RSS" + (f"; device {format_mb(dev)}" if dev is not None else "")))
    duration = run.get("duration_s", run.get("train_time_s"))
    if isinstance(duration, int | float):
        cards.append(("time", format_duration(float(duration)), "wall clock"))
    return "".join(f'<div class="card{" wide" if len(v) > 14 else ""}"><div class="k">{_esc(k)}</div>'
                   f'<div class="v">{v}</div><div class="n">{n}</div></div>' for k, v, n in cards)


def _table(data: Any, depth: int = 0) -> str:
    """A nested dict/list as HTML tables; long lists are cut to their first 25 items."""
    if isinstance(data, dict):
        if not data:
            return "<i>none</i>"
        body = "".join(f"<tr><th>{_esc(k)}</th><td>{_table(v, depth + 1)}</td></tr>" for k, v in data.items())
        return f"<table>{body}</table>"
    if isinstance(data, list):
        if not data:
            return "<i>none</i>"
        more = f"<br><i>… and {len(data) - 25} more</i>" if len(data) > 25 else ""
        if all(isinstance(x, dict) for x in data):
            cols = list(dict.fromkeys(k for x in data[:25] for k in x))
            head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{_table(x.get(c, ''), depth + 1)}</td>" for c in cols)
                           + "</tr>" for x in data[:25])
            return f"<table><tr>{head}</tr>{body}</table>{more}"
        return ", ".join(_table(x, depth + 1) for x in data[:25]) + more
    if isinstance(data, float):
        return _num(data)
    if isinstance(data, int) and not isinstance(data, bool):
        return f"{data:,}"
    return _esc(data)


def _samples_html(run: RunDir) -> str:
    rows = read_jsonl(run.samples_file)
    if not rows:
        md = run.samples_md
        return f'<pre class="block">{_esc(md.read_text(encoding="utf-8"))}</pre>' if md.is_file() else ""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_prompt.setdefault(str(row["prompt"]), []).append(row)
    parts = ['<p class="sub">The same prompts with the same seed at every point, so what changes '
             "is the model. Each completion continues its prompt.</p>"]
    for prompt, items in by_prompt.items():
        rows_html = "".join(f'<div class="row"><div class="step">step {_esc(r["step"])}</div>'
                            f'<pre>{_esc(r["completion"])}</pre></div>' for r in items)
        parts.append(f'<div class="sample"><div class="prompt"><pre>{_esc(prompt)}</pre></div>'
                     f"{rows_html}</div>")
    return "".join(parts)


def _knowledge_html(run: RunDir) -> str:
    """Base vs tuned knowledge scores (``knowledge_eval.json``), when the run has them."""
    result = run.knowledge_eval()
    if not result:
        return ""
    from doctune.knowledge.exam_table import COLUMNS, comparison_rows

    head = "".join(f"<th>{h}</th>" for h in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>"
                   for row in comparison_rows(result))
    return ('<p class="sub">Greedy answers and option log-likelihoods, no judge model; '
            "accuracies with their 95% Wilson interval. Held-out questions were never trained; "
            "held-out documents are the control documents, never trained on. The open book is "
            "the base with each question's section in its prompt.</p>"
            f"<table><tr>{head}</tr>{body}</table>{_answers_html(run)}")


def _answers_html(run: RunDir, limit: int = 40) -> str:
    """The first ``limit`` questions of ``knowledge_answers.jsonl``: expected, base and tuned
    answers, right (the answer in the reply) or wrong."""
    rows = read_jsonl(run.knowledge_answers_file)[:limit] if run.knowledge_answers_file.is_file() else []
    if not rows:
        return ""
    cols = ("set", "question", "expected", "base answer", "tuned answer", "tuned right")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(str(c))}</td>" for c in (
            r.get("set", ""), r["question"], r["expected"], r.get("base_answer", "-"),
            r.get("tuned_answer", "-"),
            "-" if "tuned_right" not in r else "right" if r["tuned_right"] else "wrong"))
        + "</tr>"
        for r in rows)
    return (f"<h3>Questions and answers (the first {len(rows)}; all in "
            f"{run.knowledge_answers_file.name})</h3><table><tr>{head}</tr>{body}</table>")


def write_report(run: RunDir) -> Path:
    """Write ``report.html`` and ``plots/*.png`` into the run folder from the run's files."""
    rows = read_jsonl(run.metrics_file)
    facts = _facts(run)
    plots = write_plots(rows, run.plots_dir)
    titles = {"loss": "Training and validation loss", "lr": "Learning rate",
              "throughput": "Tokens per second", "memory": "Memory over time"}
    figures = "".join(
        f'<figure><img alt="{titles[name]}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}"></figure>' for name, path in plots.items())
    config = run.config_file
    data = run.data_summary()
    extra = {k: v for k, v in facts.items() if not isinstance(v, dict | list)}
    name = facts.get("name") or run.path.resolve().name
    sections = [
        f"<h1>doctune run: {_esc(name)}</h1>",
        f'<p class="sub">{_esc(run.path.resolve())}</p>',
        f'<div class="cards">{_cards(facts, rows)}</div>',
        f'<h2>Curves</h2><div class="plots">{figures}</div>' if figures else "",
    ]
    knowledge = _knowledge_html(run)
    if knowledge:
        sections.append(f"<h2>Does it know the docs?</h2>{knowledge}")
    samples = _samples_html(run)
    if samples:
        sections.append(f"<h2>Samples</h2>{samples}")
    if extra:
        sections.append(f"<h2>Run</h2>{_table(extra)}")
    if data:
        sections.append(f"<h2>Data</h2>{_table(data)}")
    if config.is_file():
        sections.append(f'<h2>Configuration</h2><pre class="block">{_esc(config.read_text(encoding="utf-8"))}</pre>')
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>doctune report: {_esc(name)}</title>'
            f"<style>{_CSS}</style></head><body><main>{''.join(sections)}</main></body></html>\n")
    run.report_file.write_text(page, encoding="utf-8")
    return run.report_file


def _facts(run: RunDir) -> dict[str, Any]:
    """The run's recorded facts for display (unreadable ones leave the report without them)."""
    try:
        facts = run.facts.to_json()
    except CheckpointError:
        return {}
    return {k: v for k, v in facts.items() if v is not None and k != "format"}
