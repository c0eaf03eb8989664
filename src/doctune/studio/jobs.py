"""CLI commands the studio runs as separate processes: training, evaluation, export.

Each job is ``python -m doctune COMMAND ...``, the very command a user would type, in its
own process group (so that closing the page, or stopping the studio, never stops it), its
output in a log file. Stopping a job sends SIGTERM, on which ``doctune train`` saves a
checkpoint and exits.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ids = itertools.count(1)


@dataclass
class Job:
    """One CLI command running (or done) in its own process."""

    id: int
    kind: str
    """``train``, ``resume``, ``eval``, ``answers``, ``export``, ``merge``."""
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes]
    target: str | None = None
    """The folder the job is about (a run, an export), absolute."""

    @property
    def command(self) -> str:
        """The command as one would type it (``doctune ...``)."""
        if self.argv[2] == "doctune":
            return shlex.join(["doctune", *self.argv[3:]])
        return shlex.join(["python", *self.argv[1:]])

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def running(self) -> bool:
        return self.returncode is None

    def output(self, limit: int = 4000) -> str:
        """The last ``limit`` characters the command printed."""
        try:
            text = self.log.read_bytes()[-limit:]
        except OSError:
            return ""
        return text.decode("utf-8", errors="replace")

    def stop(self) -> bool:
        """Ask the command to stop (SIGTERM: a training run saves a checkpoint first)."""
        if not self.running:
            return False
        self.proc.send_signal(signal.SIGTERM)
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "command": self.command,
                "running": self.running, "returncode": self.returncode,
                "target": self.target, "output": self.output()}


class Jobs:
    """The jobs this studio started, with their logs in a folder of their own."""

    def __init__(self, cwd: Path, log_dir: Path | None = None) -> None:
        self.cwd = cwd
        self._log_dir = log_dir
        self.jobs: dict[int, Job] = {}

    @property
    def log_dir(self) -> Path:
        """Where the jobs' output goes (a temporary folder, made at the first job)."""
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="doctune-studio-logs-"))
        return self._log_dir

    def start(self, kind: str, args: list[str], *, target: Path | None = None,
              module: str = "doctune") -> Job:
        """Run ``doctune ARGS`` (``python -m MODULE ARGS``) in a new process (same Python,
        same environment)."""
        job_id = next(_ids)
        argv = [sys.executable, "-m", module, *args]
        log = self.log_dir / f"{job_id}-{kind}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:  # the child keeps its own copy of the file
            proc = subprocess.Popen(argv, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        job = Job(job_id, kind, argv, log, proc, str(target) if target else None)
        self.jobs[job_id] = job
        return job

    def get(self, job_id: int) -> Job | None:
        return self.jobs.get(job_id)

    def for_target(self, target: Path, kinds: tuple[str, ...] | None = None) -> Job | None:
        """The newest job about ``target`` (of one of ``kinds``), if any."""
        found = [j for j in self.jobs.values() if j.target == str(target)
                 and (kinds is None or j.kind in kinds)]
        return found[-1] if found else None

