"""Pages 5 and 6: chat with the tuned model and its base; merge and export to ship it."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from doctune.errors import ConfigError, DoctuneError
from doctune.studio.state import Studio, body, ok, studio

QUANTS = ("f16", "q8_0", "f32")
"""What ``doctune export --quant`` writes."""


def _run(s: Studio, typed: str) -> Path:
    return s.workspace.inside(typed, what="The run folder")


async def chat(request: Request) -> StreamingResponse:
    """GET ?run=&side=tuned|base&q=: the answer, streamed as server-sent events
    (``text`` pieces, then ``done``, or ``error`` with the reason)."""
    s, q = studio(request), request.query_params
    run = _run(s, q.get("run", ""))
    side = q.get("side", "tuned")
    message = q.get("q", "")
    if side not in ("tuned", "base"):
        raise ConfigError(f"side must be tuned or base, got {side!r}.")
    if not message.strip():
        raise ConfigError("Type a question first.")
    return StreamingResponse(_answer(s, run, side, message), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})


def _answer(s: Studio, run: Path, side: str, message: str) -> Iterator[str]:
    try:
        for piece in s.chats.stream(run, side, message):
            yield f"event: text\ndata: {json.dumps(piece)}\n\n"
    except DoctuneError as e:
        yield f"event: error\ndata: {json.dumps(str(e))}\n\n"
        return
    except Exception as e:  # a model that cannot load or run: say so on the page
        yield f"event: error\ndata: {json.dumps(f'{type(e).__name__}: {e}')}\n\n"
        return
    yield "event: done\ndata: {}\n\n"


async def ship(request: Request) -> JSONResponse:
    """POST {run, format: gguf|hf, quant, out, force}: ``doctune export`` / ``doctune merge``."""
    s, data = studio(request), await body(request)
    run = _run(s, str(data.get("run", "")))
    fmt = str(data.get("format") or "gguf")
    quant = str(data.get("quant") or "f16")
    if fmt not in ("gguf", "hf"):
        raise ConfigError(f"format must be gguf or hf, got {fmt!r}.")
    if fmt == "gguf" and quant not in QUANTS:
        raise ConfigError(f"quantisation must be one of {', '.join(QUANTS)}, got {quant!r}.")
    out = s.workspace.output(str(data.get("out", "")), docs=_docs_of(run), what="The export folder")
    shown = s.workspace.shown
    if fmt == "gguf":
        args = ["export", shown(run), "--format", "gguf", "--quant", quant, "--out", shown(out)]
    else:
        args = ["merge", shown(run), "--out", shown(out)]
    if data.get("force"):
        args.append("--force")
    job = s.jobs.start("export" if fmt == "gguf" else "merge", [*args, "--json"], target=out)
    return ok(job.to_dict())


def _docs_of(run: Path) -> Path | None:
    """The docs folder the run was trained on (an export never goes among them)."""
    from doctune.rundir import RunDir

    try:
        path = RunDir.open(run).config().data.path
    except DoctuneError:
        return None
    return Path(path) if path else None


async def shipped(request: Request) -> JSONResponse:
    """GET ?out=: the files of an export, its Modelfile and the ``ollama create`` command."""
    s = studio(request)
    out = s.workspace.inside(request.query_params.get("out", ""), what="The export folder")
    files = sorted(p for p in out.iterdir() if p.is_file()) if out.is_dir() else []
    modelfile = out / "Modelfile"
    name = re.sub(r"[^a-z0-9._-]+", "-", out.name.lower()).strip("-") or "my-docs"
    return ok({"out": str(out),
               "files": [{"name": p.name, "bytes": p.stat().st_size} for p in files],
               "modelfile": modelfile.read_text("utf-8") if modelfile.is_file() else None,
               "ollama": (f"cd {shlex.quote(str(out))} && ollama create {name} -f Modelfile "
                          f"&& ollama run {name}") if modelfile.is_file() else None})


async def job(request: Request) -> JSONResponse:
    """GET ?id=: a job's command, whether it runs, its exit status and its last output."""
    s = studio(request)
    try:
        found = s.jobs.get(int(request.query_params.get("id", "0")))
    except ValueError:
        found = None
    if found is None:
        raise ConfigError("No such job.")
    return ok(found.to_dict())
