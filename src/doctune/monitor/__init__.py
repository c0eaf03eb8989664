"""Watching a run: progress, metrics.jsonl, TensorBoard, W&B, memory, samples, report.

The training loop talks to :class:`RunMonitor` only; the parts below it take plain
arguments and can be used (and tested) on their own. Importing this package does not
import torch.
"""

from __future__ import annotations

from doctune.monitor.memory import MemoryTracker, low_memory_warning
from doctune.monitor.report import write_report
from doctune.monitor.run import RunMonitor
from doctune.monitor.samples import default_prompts, generate_samples

__all__ = [
    "MemoryTracker",
    "RunMonitor",
    "default_prompts",
    "generate_samples",
    "low_memory_warning",
    "write_report",
]
