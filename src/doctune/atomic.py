"""The one way doctune writes a file that a user or a resume relies on: whole, or not at all.

The bytes go to a temporary name beside the target (``.NAME.tmp-PID-N``: two processes or
two threads never share one), are flushed to the disk (``fsync``), renamed over the target
(atomic on POSIX and on Windows), and the folder's entry is flushed too where the platform
allows it (POSIX; Windows cannot open a folder). A crash at any moment leaves the old file
or the new one, never a torn one; a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_counter = itertools.count()

TMP_GLOB = ".*.tmp-*"
"""What a temporary file of :func:`atomic_open` looks like (to list or clean leftovers)."""


def temp_name(path: Path) -> Path:
    """A fresh temporary path beside ``path``, in the :data:`TMP_GLOB` pattern."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_counter)}")


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; a no-op where the platform
    cannot open a folder (Windows) or the file system refuses (some network mounts)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file that another library wrote (safetensors, ``torch.save``) to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path for a writer that takes a file name (``torch.save``, numpy): what it
    wrote there replaces ``path`` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``open(path, mode)`` whose content appears at ``path`` only once the block has ended
    without an error, flushed to the disk. ``mode`` is ``"w"`` (UTF-8 text, ``\\n`` line
    ends on every platform) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        f: IO[Any]
        with (open(tmp, "w", encoding="utf-8", newline="\n") if mode == "w"
              else open(tmp, "wb")) as f:
            yield f


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON (UTF-8, non-ASCII kept, ``str()`` of what JSON cannot hold)."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str))
