"""The ``doctune`` command line: thin typer commands, each calling one library function.

``app.py`` holds the app, the shared options and the error handling; each other module
registers a group of commands on it. Heavy libraries (torch, transformers) are imported
inside the commands, so that ``doctune --help`` answers at once.
"""

from __future__ import annotations

from doctune.cli import knowledge, prep, studio, train, use
from doctune.cli.app import app, main

__all__ = ["app", "knowledge", "main", "prep", "studio", "train", "use"]
