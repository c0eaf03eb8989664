"""What one running studio holds: its workspace, its jobs, loaded chat models, docs read."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from doctune.studio.chat import Chats
from doctune.studio.jobs import Jobs
from doctune.studio.workspace import Workspace


@dataclass
class Studio:
    workspace: Workspace
    jobs: Jobs
    chats: Chats = field(default_factory=Chats)
    docs_cache: dict[str, Any] = field(default_factory=dict)
    """Docs folder (absolute) -> its :class:`~doctune.data.cleantree.CleanedDocs`."""


def studio(request: Request) -> Studio:
    s: Studio = request.app.state.studio
    return s


async def body(request: Request) -> dict[str, Any]:
    """The JSON object a POST carries (empty when there is none)."""
    try:
        data = await request.json()
    except (ValueError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def ok(data: Any) -> JSONResponse:
    return JSONResponse(data)


async def run_cli(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run ``doctune ARGS`` to the end (a short command such as ``plan``): exit code, stdout,
    stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "doctune", *args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
