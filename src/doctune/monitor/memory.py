"""Memory as the machine sees it, on every device.

``MemoryTracker(device).snapshot()`` returns flat ``mem_*`` numbers in MB (the keys that go
into ``metrics.jsonl``): the process RSS and its peak everywhere, what PyTorch holds on a
CUDA GPU or in Apple's unified memory (MPS), and what the system still has available.
``low_memory_warning`` turns a snapshot into a sentence before the system starts swapping.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    import torch

MB = 1024 * 1024

LOW_AVAILABLE_MB = 1536.0
"""Below this much available memory (or 10% of RAM, whichever is larger), macOS starts to
compress and then swap; training slows down many times over."""


def peak_rss_mb() -> float:
    """The highest RSS this process has had so far, in MB."""
    try:
        import resource
    except ImportError:  # Windows: the peak working set
        info = psutil.Process().memory_info()
        return float(getattr(info, "peak_wset", info.rss)) / MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return float(peak) / MB if sys.platform == "darwin" else float(peak) / 1024


class MemoryTracker:
    """Samples the memory of this process and of ``device`` (cpu, cuda or mps)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device_type = device if isinstance(device, str) else device.type
        self._process = psutil.Process()
        self._peak_rss = 0.0

    def snapshot(self) -> dict[str, float]:
        """Current numbers, all in MB, rounded to 0.1 MB.

        Always: ``mem_rss_mb``, ``mem_peak_rss_mb``, ``mem_system_available_mb``. On CUDA also
        ``mem_device_mb`` (allocated by tensors), ``mem_device_reserved_mb`` (held by the
        caching allocator) and ``mem_device_peak_mb``; on MPS ``mem_device_mb`` (tensors) and
        ``mem_device_driver_mb`` (all the Metal driver holds for this process).
        """
        rss = self._process.memory_info().rss / MB
        self._peak_rss = max(self._peak_rss, rss, peak_rss_mb())
        out = {"mem_rss_mb": rss, "mem_peak_rss_mb": self._peak_rss}
        out.update(self._device_snapshot())
        out["mem_system_available_mb"] = psutil.virtual_memory().available / MB
        return {k: round(v, 1) for k, v in out.items()}

    def _device_snapshot(self) -> dict[str, float]:
        if self.device_type == "cuda":
            import torch

            return {
                "mem_device_mb": torch.cuda.memory_allocated() / MB,
                "mem_device_reserved_mb": torch.cuda.memory_reserved() / MB,
                "mem_device_peak_mb": torch.cuda.max_memory_allocated() / MB,
            }
        if self.device_type == "mps":
            import torch

            return {
                "mem_device_mb": torch.mps.current_allocated_memory() / MB,
                "mem_device_driver_mb": torch.mps.driver_allocated_memory() / MB,
            }
        return {}


def low_memory_warning(snapshot: dict[str, float], *, total_mb: float | None = None,
                       threshold_mb: float = LOW_AVAILABLE_MB) -> str | None:
    """A warning when available memory is so low that the system is about to swap, else None.

    The limit is ``threshold_mb`` or 10% of ``total_mb`` (default: this machine's RAM),
    whichever is larger.
    """
    available = snapshot.get("mem_system_available_mb")
    if available is None:
        return None
    total = total_mb if total_mb is not None else psutil.virtual_memory().total / MB
    limit = max(threshold_mb, 0.10 * total)
    if available >= limit:
        return None
    return (f"only {available / 1024:.1f} GB of memory is left available (this run uses "
            f"{snapshot.get('mem_rss_mb', 0.0) / 1024:.1f} GB); the system will soon swap and "
            "training will slow down. Close other applications, or lower the memory use: "
            "`doctune plan --config F` suggests settings that fit.")
