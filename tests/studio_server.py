"""A real `doctune studio` process for the studio tests, and its URL read from what it prints."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
EXAMPLE_DOCS = Path(__file__).resolve().parents[1] / "examples" / "docs"
URL_LINE = re.compile(r"^doctune studio: (http://127\.0\.0\.1:(\d+)/)\?token=([0-9a-f]+)$")


@dataclass(frozen=True)
class Studio:
    base: str
    """``http://127.0.0.1:PORT/``"""
    port: int
    token: str
    line: str
    """The line the studio printed."""

    @property
    def url(self) -> str:
        return f"{self.base}?token={self.token}"

    @property
    def cookie(self) -> str:
        return f"doctune-studio-{self.port}={self.token}"


@contextmanager
def running_studio(cwd: Path, *args: str, timeout: float = 60) -> Iterator[Studio]:
    """Start ``doctune studio --port 0 ARGS`` in ``cwd``; yield once its URL line is printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-m", "doctune", "studio", "--port", "0", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        assert ready, f"the studio printed no URL in {timeout} s"
        line = proc.stdout.readline().rstrip("\n")
        m = URL_LINE.match(line)
        assert m, f"unexpected first line: {line!r}"
        yield Studio(m.group(1), int(m.group(2)), m.group(3), line)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
