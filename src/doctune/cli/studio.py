"""``doctune studio``: the local web page over the same commands (imported only when run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from doctune.cli.app import app
from doctune.errors import ConfigError


@app.command()
def studio(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to serve on (0: a free one).", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to bind. Anything but 127.0.0.1/localhost opens the studio to your network (the token still guards it).")] = "127.0.0.1",
    root: Annotated[list[Path] | None, typer.Option("--root", help="A folder the studio may read and write (repeatable). [default: the current folder]")] = None,
    runs: Annotated[Path | None, typer.Option("--runs", help="Folder whose run folders the studio lists. [default: runs/]")] = None,
) -> None:
    """Open the whole path in a local web page: docs, plan, train, knowledge, chat, ship.

    Example: `doctune studio --port 8765`, then open the URL it prints (it carries a token).

    Needs the studio extra: `pip install "doctune[studio]"`.
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError('doctune studio needs its web libraries: pip install "doctune[studio]"') from None
    from doctune.studio.server import serve

    try:
        serve(host=host, port=port, roots=root, runs=runs)
    except OSError as e:
        raise ConfigError(f"cannot serve on {host}:{port} ({e.strerror or e}); "
                          "pick another port with `--port N` (0: any free one).") from None
