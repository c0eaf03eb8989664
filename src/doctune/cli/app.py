"""The typer app, the options several commands share, and the one place where doctune's
errors become a message and an exit status.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from doctune import __version__
from doctune.errors import DoctuneError


class _Group(typer.core.TyperGroup):
    """Turns doctune's own errors into a message and the error's exit status, no traceback."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except DoctuneError as e:
            if not (e.every_rank and os.environ.get("RANK", "0") != "0"):  # rank 0 says it once
                typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(
    cls=_Group,
    name="doctune",
    help="Fine-tune small language models on a folder of Markdown/MDX documentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (see `doctune init`).",
                 exists=True, dir_okay=False, readable=True),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: `--set train.lr=3e-4` (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"doctune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Fine-tune small language models on a folder of Markdown/MDX documentation."""


def main() -> None:
    """Console entry point: run the app (its group turns doctune's errors into messages).

    A process that torchrun started leaves without the interpreter's teardown, once its
    output is flushed: there, with the process group already left, torch's gloo threads can
    still be torn down in the wrong order and abort the process ("terminate called without an
    active exception", SIGABRT) after a run that ended well or with a clear error, which
    torchrun then reports as a crash of that rank."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        _leave(SystemExit(130))
    except SystemExit as e:
        _leave(e)


def _leave(how: SystemExit) -> None:
    """Raise ``how``; under torchrun, ``os._exit`` with its status after flushing the output."""
    if int(os.environ.get("WORLD_SIZE", "1") or "1") <= 1:
        raise how
    import contextlib
    import logging

    code = how.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # what sys.exit("message") prints
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
