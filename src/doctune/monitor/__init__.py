"""Watching a run: progress, metrics.jsonl, TensorBoard, W&B, memory, samples, report.

The training loop talks to a :class:`Monitor` only (:class:`RunMonitor` on rank 0); the parts below it take plain
arguments and can be used (and tested) on their own. Importing this package does not
import torch.
"""

from __future__ import annotations

from doctune.monitor.memory import MemoryTracker, low_memory_warning
from doctune.monitor.report import write_report
from doctune.monitor.run import Monitor, NullMonitor, RunMonitor
from doctune.monitor.samples import default_prompts, generate_samples

__all__ = [
    "MemoryTracker",
    "Monitor",
    "NullMonitor",
    "RunMonitor",
    "default_prompts",
    "generate_samples",
    "low_memory_warning",
    "write_report",
]
