"""What a person watching the terminal sees: a rich progress bar on a terminal, plain log
lines anywhere else (a file, CI, a notebook cell), and nothing but warnings when quiet.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


def format_mb(mb: float) -> str:
    """``950.2`` -> ``"950 MB"``, ``2150.0`` -> ``"2.10 GB"``."""
    return f"{mb / 1024:.2f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def step_stats(metrics: dict[str, float]) -> str:
    """The short line of numbers shown beside the bar: loss, lr, tokens/s, memory."""
    parts = []
    if (loss := metrics.get("train_loss")) is not None:
        parts.append(f"loss {loss:.4f}")
    if (lr := metrics.get("lr")) is not None:
        parts.append(f"lr {lr:.2e}")
    if (tps := metrics.get("tokens_per_sec")) is not None:
        parts.append(f"{tps:,.0f} tok/s")
    if (rss := metrics.get("mem_rss_mb")) is not None:
        mem = f"mem {format_mb(rss)}"
        if (dev := metrics.get("mem_device_mb")) is not None:
            mem += f" (device {format_mb(dev)})"
        parts.append(mem)
    return " | ".join(parts)


ETA_WINDOW = 20
"""Steps whose times the estimate of the time left is taken from."""


class ProgressDisplay:
    """Step progress for one run: bar, plain lines or quiet."""

    def __init__(self, total_steps: int, *, progress: bool = True, quiet: bool = False,
                 resume_step: int = 0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total_steps
        self.quiet = quiet
        self._stream = stream if stream is not None else sys.stdout
        self._clock = clock
        self._last: tuple[float, int] | None = None  # (time, step) of the last update
        self._step_s: deque[float] = deque(maxlen=ETA_WINDOW)
        console = Console(file=self._stream)
        self.live = progress and not quiet and console.is_terminal
        self._bar: Progress | None = None
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("{task.fields[stats]}"), TextColumn("eta {task.fields[eta]}"),
                console=console, transient=False,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=resume_step,
                                            stats="", eta="-")
            self._bar.start()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Show the numbers of optimizer step ``step``."""
        now = self._clock()
        if self._last is not None and step > self._last[1]:
            self._step_s.append((now - self._last[0]) / (step - self._last[1]))
        self._last = (now, step)
        eta = self.eta(step)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=step_stats(metrics),
                             eta=format_duration(eta) if eta is not None else "-")
        elif not self.quiet:
            line = f"step {step}/{self.total} | {step_stats(metrics)}"
            if eta is not None:
                line += f" | eta {format_duration(eta)}"
            self._print(line)

    def eta(self, step: int) -> float | None:
        """Seconds left: the mean time of the recent steps times the steps left, leaving out
        steps over 3x the median, so that one long gap (a laptop asleep) does not stretch the
        estimate. A mean, not the median: with short and long batches (questions grouped
        apart from whole windows) the median would be one kind's time or the other's."""
        if not self._step_s:
            return None
        cap = 3 * statistics.median(self._step_s)
        usual = [s for s in self._step_s if s <= cap]
        return statistics.fmean(usual) * (self.total - step)

    def message(self, text: str) -> None:
        """A line above the bar (dropped when quiet)."""
        if not self.quiet:
            self._print(text)

    def warn(self, text: str) -> None:
        """A warning, shown even when quiet."""
        if self._bar is not None:
            self._bar.console.print(f"[yellow]warning:[/yellow] {text}", markup=True, highlight=False)
        else:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def always(self, text: str) -> None:
        """A line shown even when quiet (the end-of-run summary)."""
        self._print(text)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        """Stop the bar (it stays on screen at its last state)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
