"""Pages 1 and 2: what doctune reads in a docs folder, and whether a model's run fits."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from doctune.errors import ConfigError
from doctune.studio.recipe import Recipe, pass_estimate
from doctune.studio.runs import tail_jsonl
from doctune.studio.state import Studio, body, ok, run_cli, studio


def _cleaned(s: Studio, docs: Path, dialect: str = "auto") -> Any:
    """The docs at ``docs`` read and cleaned as ``doctune clean`` does (kept until asked again)."""
    from doctune.data.cleantree import clean_docs

    key = f"{docs}|{dialect}"
    if key not in s.docs_cache:
        s.docs_cache[key] = clean_docs(docs, dialect=dialect)
    return s.docs_cache[key]


async def docs_summary(request: Request) -> JSONResponse:
    """POST {path, dialect}: dialects found, files kept (with sizes) and skipped (with reasons)."""
    s, data = studio(request), await body(request)
    docs = s.workspace.docs(str(data.get("path", "")))
    dialect = str(data.get("dialect") or "auto")
    s.docs_cache.pop(f"{docs}|{dialect}", None)  # read afresh: the docs may have changed
    cleaned = await run_in_threadpool(_cleaned, s, docs, dialect)
    dialects: dict[str, int] = {}
    for d in cleaned.docs:
        dialects[d.dialect] = dialects.get(d.dialect, 0) + 1
    return ok({"path": str(docs), "found": cleaned.found, "dialects": dialects,
               "chars": sum(len(d.text) for d in cleaned.docs),
               "kept": [{"rel": d.rel, "dialect": d.dialect, "bytes_before": len(d.raw.encode()),
                         "bytes_after": len(d.text.encode()), "warnings": d.warnings}
                        for d in cleaned.docs],
               "skipped": [{"rel": k.rel, "reason": k.reason} for k in cleaned.skipped]})


async def docs_file(request: Request) -> JSONResponse:
    """GET ?path=&rel=: one file before and after cleaning."""
    s, q = studio(request), request.query_params
    docs = s.workspace.docs(q.get("path", ""))
    cleaned = await run_in_threadpool(_cleaned, s, docs, q.get("dialect") or "auto")
    for d in cleaned.docs:
        if d.rel == q.get("rel"):
            return ok({"rel": d.rel, "dialect": d.dialect, "raw": d.raw, "text": d.text,
                       "dropped": d.dropped, "warnings": d.warnings})
    raise ConfigError(f"{q.get('rel')!r} is not one of the docs kept in {docs}.")


def _measured_rate(s: Studio, model: str) -> float | None:
    """Median tokens/s of the newest run of ``model`` under the runs folder, if any."""
    from doctune.rundir import RunDir

    for path in s.workspace.run_folders():
        run = RunDir(path)
        if run.facts.model_name != model:
            continue
        rates = sorted(r["tokens_per_sec"] for r in tail_jsonl(run.metrics_file, 0).rows
                       if "tokens_per_sec" in r)
        if rates:
            return float(rates[len(rates) // 2])
    return None


async def plan(request: Request) -> JSONResponse:
    """POST {docs, model, lora, knowledge, max_steps, sets, device}: ``doctune plan --json``
    for the run, the time one pass takes, and the ``doctune train`` command it would be."""
    s, data = studio(request), await body(request)
    recipe = Recipe.from_json(data)
    docs = s.workspace.docs(str(data.get("docs", "")))
    device = str(data.get("device") or "") or None
    shown = s.workspace.shown(docs)
    code, out, err = await run_cli(recipe.plan_args(shown, device), s.workspace.cwd)
    result: dict[str, Any] = {"train_command": shlex.join(["doctune", *recipe.train_args(
        shown, s.workspace.shown(s.workspace.runs / "NAME"))]), "sets": list(recipe.sets)}
    if code != 0:
        result["error"] = (err.strip() or out.strip()).removeprefix("error: ")
        return ok(result)
    memory = json.loads(out)
    params = memory.get("breakdown", {}).get("weights", 0) * 1024 * 1024 / 4 or None
    cleaned = await run_in_threadpool(_cleaned, s, docs)
    result["memory"] = memory
    result["pass"] = pass_estimate(sum(len(d.text) for d in cleaned.docs), params=params,
                                   knowledge=recipe.knowledge, cores=os.cpu_count() or 1,
                                   measured_tps=_measured_rate(s, recipe.model))
    if memory.get("device") != "cpu" and not str(result["pass"]["how"]).startswith("measured"):
        result["pass"]["note"] = "On a GPU it is much faster; the Train page shows the real rate."
    return ok(result)
