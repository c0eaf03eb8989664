"""What the training loop talks to about what it is doing: the :class:`Monitor` protocol.

``RunMonitor`` (rank 0) fans each call out to the display (bar or plain lines), ``metrics.jsonl``,
TensorBoard and W&B, adds the memory numbers to every logged step, and warns once when the
machine is about to run out of memory. It holds no training logic.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

from doctune.monitor.loggers import JsonlLogger, MetricsLogger, TensorBoardLogger, WandbLogger
from doctune.monitor.memory import MemoryTracker, low_memory_warning
from doctune.monitor.progress import ProgressDisplay
from doctune.monitor.samples import samples_markdown
from doctune.rundir import RunDir

if TYPE_CHECKING:
    import torch


class Monitor(Protocol):
    """What the loop reports to; :class:`RunMonitor` and :class:`NullMonitor` implement it."""

    def header(self, lines: list[str]) -> None: ...
    def log_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_eval(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None: ...
    def message(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def summary(self, text: str) -> None: ...
    def close(self) -> None: ...


class NullMonitor:
    """A monitor that records nothing: the processes other than rank 0, which alone prints
    and writes metrics."""

    def header(self, lines: list[str]) -> None:
        pass

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass

    def summary(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class RunMonitor:
    """Progress, loggers and memory tracking of one training run in the folder ``run``.

    ``resume_step`` > 0 continues a run: logged lines after that step are dropped first,
    since the resumed run logs those steps again. 0 starts the files anew.
    ``device`` is where the model trains (for the device-memory numbers).
    """

    def __init__(
        self,
        run: RunDir,
        *,
        total_steps: int,
        config: dict[str, Any],
        tensorboard: bool,
        wandb: bool,
        wandb_project: str,
        wandb_mode: str,
        progress: bool,
        quiet: bool = False,
        resume_step: int = 0,
        device: torch.device | str = "cpu",
        low_memory_mb: float | None = None,
    ) -> None:
        self.run = run
        run.path.mkdir(parents=True, exist_ok=True)
        self.memory = MemoryTracker(device)
        self._low_memory_mb = low_memory_mb
        self._warned_memory = False
        self._jsonl = JsonlLogger(run.metrics_file, run.samples_file, resume_step=resume_step)
        self._loggers: list[MetricsLogger] = [self._jsonl]
        try:
            if tensorboard:
                self._loggers.append(TensorBoardLogger(run.tensorboard_dir,
                                                       resume_step=resume_step))
            if wandb:
                self._loggers.append(WandbLogger(run.path, project=wandb_project,
                                                 mode=wandb_mode, config=config))
        except BaseException:
            for logger in self._loggers:
                logger.close()
            raise
        self._rewrite_samples_md()
        self.display = ProgressDisplay(total_steps, progress=progress, quiet=quiet,
                                       resume_step=resume_step)

    def header(self, lines: list[str]) -> None:
        """Lines printed once at the start (device, precision, parameters, data)."""
        for line in lines:
            self.display.message(line)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Record a training step: ``metrics`` plus the ``mem_*`` numbers of this moment.

        Keys the caller already gives (e.g. its own ``mem_device_peak_mb``) are kept.
        """
        row = dict(metrics)
        for key, value in self.memory.snapshot().items():
            row.setdefault(key, value)
        for logger in self._loggers:
            logger.log_metrics(step, row)
        self.display.update(step, row)
        self._check_memory(row)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Record a validation result (``val_loss``, ``val_ppl``) as its own line."""
        for logger in self._loggers:
            logger.log_metrics(step, metrics)
        parts = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)]
        self.display.message(f"eval at step {step}: " + ", ".join(parts))

    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        """Record generation samples: ``samples.md``, ``samples.jsonl`` and the loggers."""
        markdown = samples_markdown(step, samples)
        for logger in self._loggers:
            logger.log_samples(step, samples, markdown)
        with self.run.samples_md.open("a", encoding="utf-8") as f:
            f.write(markdown)

    def message(self, text: str) -> None:
        """A line printed above the bar (not when quiet)."""
        self.display.message(text)

    def warn(self, text: str) -> None:
        """A warning, printed even when quiet."""
        self.display.warn(text)

    def summary(self, text: str) -> None:
        """The end-of-run lines, printed even when quiet."""
        self.display.always(text)

    def close(self) -> None:
        """Stop the bar and close every logger."""
        self.display.close()
        for logger in self._loggers:
            logger.close()

    def __enter__(self) -> RunMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_memory(self, row: dict[str, float]) -> None:
        if self._warned_memory:
            return
        kw = {} if self._low_memory_mb is None else {"threshold_mb": self._low_memory_mb}
        warning = low_memory_warning(row, **kw)
        if warning:
            self._warned_memory = True
            self.display.warn(warning)

    def _rewrite_samples_md(self) -> None:
        """Rebuild ``samples.md`` from ``samples.jsonl`` (already cut back on resume)."""
        from doctune.monitor.loggers import read_jsonl

        by_step: dict[int, list[tuple[str, str]]] = {}
        for row in read_jsonl(self._jsonl.samples_path):
            by_step.setdefault(int(row["step"]), []).append((row["prompt"], row["completion"]))
        text = "# Generation samples\n\n" + "".join(samples_markdown(s, by_step[s]) for s in sorted(by_step))
        self.run.samples_md.write_text(text, encoding="utf-8")
