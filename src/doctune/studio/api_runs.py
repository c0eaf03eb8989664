"""Pages 3 and 4: start, watch, stop and resume a run; what it knows of its docs.

Training is ``doctune train`` in its own process; the page watches the run folder (its
``metrics.jsonl`` and ``samples.jsonl``) through server-sent events, so a run started from a
terminal is watched the same way, and closing the page stops nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from doctune.errors import CheckpointError, ConfigError
from doctune.studio.recipe import Recipe
from doctune.studio.runs import run_state, tail_jsonl, training_processes
from doctune.studio.state import Studio, body, ok, studio

TRAIN_KINDS = ("train", "resume")


def _run_path(s: Studio, typed: str) -> Path:
    return s.workspace.inside(typed, what="The run folder")


def _training(s: Studio, path: Path) -> bool:
    """Whether a ``doctune train`` runs in ``path``: started here, or anywhere on this machine."""
    job = s.jobs.for_target(path, TRAIN_KINDS)
    return bool(job and job.running) or path in training_processes()


def state_of(s: Studio, path: Path) -> dict[str, Any]:
    """:func:`run_state` with the studio's job (its command and output) when it has one."""
    job = s.jobs.for_target(path, TRAIN_KINDS)
    state = run_state(path, running=_training(s, path),
                      failed=bool(job and job.returncode not in (None, 0, 130)))
    state["job"] = job.to_dict() if job else None
    return state


async def runs(request: Request) -> JSONResponse:
    """GET: every run folder under the runs folder, and those this studio started."""
    s = studio(request)
    paths = list(s.workspace.run_folders())
    paths += [Path(j.target) for j in s.jobs.jobs.values()
              if j.kind in TRAIN_KINDS and j.target and Path(j.target) not in paths]
    return ok({"runs_folder": str(s.workspace.runs), "runs": [state_of(s, p) for p in paths]})


async def run(request: Request) -> JSONResponse:
    """GET ?path=: one run's state."""
    s = studio(request)
    return ok(state_of(s, _run_path(s, request.query_params.get("path", ""))))


async def train(request: Request) -> JSONResponse:
    """POST {docs, out, model, lora, knowledge, max_steps, sets, overwrite}: start ``doctune train``."""
    s, data = studio(request), await body(request)
    recipe = Recipe.from_json(data)
    docs = s.workspace.docs(str(data.get("docs", "")))
    out = s.workspace.output(str(data.get("out", "")), docs=docs, what="The run folder")
    if _training(s, out):
        raise ConfigError(f"A run is already training in {out}; stop it first.")
    args = recipe.train_args(s.workspace.shown(docs), s.workspace.shown(out))
    if data.get("overwrite"):
        args.append("--overwrite")
    s.jobs.start("train", args, target=out)
    return ok(state_of(s, out))


async def stop(request: Request) -> JSONResponse:
    """POST {path}: SIGTERM to the run's ``doctune train`` (it saves a checkpoint and exits)."""
    s, data = studio(request), await body(request)
    path = _run_path(s, str(data.get("path", "")))
    job = s.jobs.for_target(path, TRAIN_KINDS)
    if job is not None and job.stop():
        return ok(state_of(s, path))
    pid = training_processes().get(path)
    if pid is None:
        raise CheckpointError(f"No training is running in {path}.")
    os.kill(pid, signal.SIGTERM)  # a run started from a terminal: the same signal
    return ok(state_of(s, path))


async def resume(request: Request) -> JSONResponse:
    """POST {path, max_steps}: ``doctune train --resume PATH`` (to ``max_steps`` if given)."""
    s, data = studio(request), await body(request)
    path = _run_path(s, str(data.get("path", "")))
    state = state_of(s, path)
    if state["status"] == "running":
        raise ConfigError(f"{path} is still training.")
    if not state["checkpoints"]:
        raise CheckpointError(f"{path} has no checkpoint to resume from.")
    args = ["train", "--resume", s.workspace.shown(path)]
    if data.get("max_steps"):
        args += ["--set", f"train.max_steps={int(data['max_steps'])}"]
    s.jobs.start("resume", args, target=path)
    return ok(state_of(s, path))


async def events(request: Request) -> StreamingResponse:
    """GET ?path=: server-sent events: ``metrics`` and ``samples`` rows as the run writes
    them (``reset`` when a resume cut the files back), and its ``state`` every second."""
    s = studio(request)
    path = _run_path(s, request.query_params.get("path", ""))
    return StreamingResponse(_watch(s, path, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})


async def _watch(s: Studio, path: Path, request: Request) -> AsyncIterator[str]:
    offsets = {"metrics": 0, "samples": 0}
    files = {"metrics": path / "metrics.jsonl", "samples": path / "samples.jsonl"}
    while not await request.is_disconnected():
        for name, file in files.items():
            t = tail_jsonl(file, offsets[name])
            offsets[name] = t.offset
            if t.rows or t.reset:
                yield _event(name, {"rows": t.rows, "reset": t.reset})
        yield _event("state", state_of(s, path))
        await asyncio.sleep(0.5)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(_finite(data), default=str)}\n\n"


async def evaluate(request: Request) -> JSONResponse:
    """POST {path, max_questions}: ``doctune eval PATH --knowledge`` (it writes
    knowledge_eval.json); the answers question by question follow (:func:`knowledge`)."""
    s, data = studio(request), await body(request)
    path = _run_path(s, str(data.get("path", "")))
    args = ["eval", s.workspace.shown(path), "--knowledge", "--json"]
    if data.get("max_questions"):
        args += ["--max-questions", str(int(data["max_questions"]))]
    job = s.jobs.start("eval", args, target=path)
    return ok(job.to_dict())


def answers_file(path: Path) -> Path:
    """Where the studio keeps a run's answers, question by question (outside the run folder,
    which holds only what ``doctune train`` writes): the user's cache folder."""
    import hashlib

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "doctune" / "studio" / f"answers-{hashlib.sha1(str(path).encode()).hexdigest()[:16]}.json"


async def knowledge(request: Request) -> JSONResponse:
    """GET ?path=: the run's ``knowledge_eval.json`` (None before ``doctune eval --knowledge``)
    and the answers question by question, started once the evaluation has succeeded."""
    from doctune.rundir import RunDir

    s = studio(request)
    path = _run_path(s, request.query_params.get("path", ""))
    job = s.jobs.for_target(path, ("eval", "answers"))
    out = answers_file(path)
    if job is not None and job.kind == "eval" and job.returncode == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        job = s.jobs.start("answers", [s.workspace.shown(path), "--out", str(out)], target=path,
                           module="doctune.studio.answers")
    done = job is None or not job.running
    rows = json.loads(out.read_text("utf-8")) if done and out.is_file() else None
    return ok({"result": RunDir(path).knowledge_eval(), "answers": rows,
               "job": job.to_dict() if job else None})
