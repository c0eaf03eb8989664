"""What a run folder says about its run, read as any reader of a run reads it: through
:class:`~doctune.rundir.RunDir` and its ``metrics.jsonl``, ``samples.jsonl`` and ``run.json``.

A run started from a terminal is found the same way, and its ``doctune train`` process by
its command line, so that the studio can show it as running and stop it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctune.rundir import RunDir


@dataclass
class Tail:
    """New complete lines of a JSONL file since ``offset`` (``reset``: the file was rewritten,
    e.g. cut back to the checkpoint on resume, so the reader starts over)."""

    rows: list[dict[str, Any]]
    offset: int
    reset: bool


def tail_jsonl(path: Path, offset: int) -> Tail:
    """The JSON objects written to ``path`` after byte ``offset`` (whole lines only)."""
    try:
        size = path.stat().st_size
    except OSError:
        return Tail([], 0, offset > 0)
    reset = size < offset
    start = 0 if reset else offset
    with path.open("rb") as f:
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    rows = []
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return Tail(rows, start + end, reset)


def _out_of(cmdline: list[str], cwd: str) -> Path | None:
    """The run folder a ``doctune train`` command line writes (``--out``/``--resume``)."""
    for flag in ("--out", "-o", "--resume"):
        if flag in cmdline[:-1]:
            return (Path(cwd) / cmdline[cmdline.index(flag) + 1]).resolve()
    for item in cmdline:
        if item.startswith("train.output_dir="):
            return (Path(cwd) / item.split("=", 1)[1]).resolve()
    return None


_procs: tuple[float, dict[Path, int]] = (0.0, {})


def training_processes() -> dict[Path, int]:
    """Run folder -> pid of every ``doctune train`` running on this machine (cached 1 s)."""
    global _procs
    if time.monotonic() - _procs[0] < 1.0:
        return _procs[1]
    import psutil

    found: dict[Path, int] = {}
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmd = p.info.get("cmdline") or []
        if "train" not in cmd or not any(c == "doctune" or c.endswith("/doctune") for c in cmd):
            continue
        out = _out_of(cmd, p.info.get("cwd") or "/")
        if out is not None:
            found[out] = p.info["pid"]
    _procs = (time.monotonic(), found)
    return found


def _eta_s(rows: list[dict[str, Any]], step: int, total: int | None) -> float | None:
    times = [r["step_time_s"] for r in rows[-20:] if "step_time_s" in r]
    if not total or not times:
        return None
    return max(0, total - step) * sum(times) / len(times)


def run_state(path: Path, *, running: bool, failed: bool = False) -> dict[str, Any]:
    """Where the run in ``path`` stands: status, step of total, ETA, checkpoints, model."""
    run = RunDir(path)
    facts = run.facts.to_json() if run.facts_file.is_file() else {}
    try:
        cfg = run.config() if run.config_file.is_file() else None
    except Exception:  # a config from another doctune version: show what the files say
        cfg = None
    rows = tail_jsonl(run.metrics_file, 0).rows
    steps = [r for r in rows if "train_loss" in r]
    step = steps[-1]["step"] if steps else 0
    total = facts.get("total_steps") or (cfg.train.max_steps if cfg else None)
    ckpts = [c.step for c in run.checkpoints()]
    if running:
        status = "running"
    elif run.has_final():
        status = "finished"
    elif failed and not ckpts:
        status = "failed"
    else:
        status = "stopped" if ckpts else "not started"
    return {"path": str(path), "name": path.name, "status": status, "step": step,
            "total_steps": total, "eta_s": _eta_s(steps, step, total) if running else None,
            "checkpoints": ckpts, "has_final": run.has_final(),
            "model": facts.get("model_name") or (cfg.model.name if cfg else None),
            "docs": str(cfg.data.path) if cfg and cfg.data.path else None,
            "lora": facts.get("lora", cfg.lora.enabled if cfg else None),
            "val_ppl_before": facts.get("val_ppl_before"),
            "val_ppl_after": facts.get("val_ppl_after"),
            "has_knowledge_eval": run.knowledge_eval_file.is_file()}
