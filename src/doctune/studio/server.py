"""The studio's web app (Starlette) and how it is served (uvicorn, 127.0.0.1 by default).

Routes: ``/`` the page, ``/static/*`` its script, styles and the vendored uPlot chart
library, ``/api/*`` JSON and server-sent events. Every request passes the token gate
(:mod:`doctune.studio.security`).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from doctune.errors import DoctuneError
from doctune.studio import api_docs, api_runs, api_use
from doctune.studio.jobs import Jobs
from doctune.studio.security import LOCAL_HOSTS, TokenGate, new_token
from doctune.studio.state import Studio, ok, studio
from doctune.studio.workspace import PathRefused, Workspace

STATIC = Path(__file__).parent / "static"


async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def info(request: Request) -> JSONResponse:
    """GET: the studio's folders and choices, for the page to start from."""
    from doctune import __version__

    s = studio(request)
    return ok({"version": __version__, "cwd": str(s.workspace.cwd),
               "roots": [str(r) for r in s.workspace.roots], "runs": str(s.workspace.runs),
               "quants": list(api_use.QUANTS)})


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=403)


async def _doctune_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


ROUTES = [
    Route("/", index),
    Route("/api/info", info),
    Route("/api/docs", api_docs.docs_summary, methods=["POST"]),
    Route("/api/docs/file", api_docs.docs_file),
    Route("/api/plan", api_docs.plan, methods=["POST"]),
    Route("/api/runs", api_runs.runs),
    Route("/api/run", api_runs.run),
    Route("/api/run/events", api_runs.events),
    Route("/api/train", api_runs.train, methods=["POST"]),
    Route("/api/run/stop", api_runs.stop, methods=["POST"]),
    Route("/api/run/resume", api_runs.resume, methods=["POST"]),
    Route("/api/run/eval", api_runs.evaluate, methods=["POST"]),
    Route("/api/run/knowledge", api_runs.knowledge),
    Route("/api/chat", api_use.chat),
    Route("/api/ship", api_use.ship, methods=["POST"]),
    Route("/api/shipped", api_use.shipped),
    Route("/api/job", api_use.job),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]


def create_app(state: Studio, *, token: str, port: int, local_only: bool = True) -> TokenGate:
    """The studio app behind its token gate (``local_only``: answer only to local host names)."""
    app = Starlette(routes=ROUTES, exception_handlers={
        PathRefused: _refused, DoctuneError: _doctune_error})
    app.state.studio = state
    return TokenGate(app, token=token, port=port, hosts=LOCAL_HOSTS if local_only else None)


def serve(*, host: str, port: int, roots: list[Path] | None, runs: Path | None) -> None:
    """Bind ``host:port`` (0: a free port), print the URL with its token on one line, serve
    until Ctrl-C. Runs started here go on after the studio stops."""
    import uvicorn

    workspace = Workspace.create(roots, runs)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # requests wait in the queue until the server takes them
    port = sock.getsockname()[1]
    token = new_token()
    state = Studio(workspace, Jobs(workspace.cwd))
    app = create_app(state, token=token, port=port, local_only=host in LOCAL_HOSTS)
    shown = f"[{host}]" if ":" in host else host
    print(f"doctune studio: http://{shown}:{port}/?token={token}", flush=True)
    print(f"  (folders it may use: {', '.join(map(str, workspace.roots))}; runs in "
          f"{workspace.runs}; Ctrl-C stops the studio, not the runs)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])
