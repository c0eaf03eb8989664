"""Speed levers of the training loop that are not the loss: allocator, optimizer, compilation.

Each is a small function the loop (or ``setup.py``) calls once; none changes the numbers
a step computes.

* :func:`tune_cpu_allocator` keeps freed tensor memory inside the process on Linux, so
  the tensors a step allocates again and again are not page-faulted in from the kernel
  each time (the kernel's page-fault handler was 20-30% of CPU time in eager training);
* :func:`adamw_kwargs` picks the single-kernel (fused) AdamW where PyTorch has it: the
  multi-tensor (foreach) version allocates temporaries as large as the parameters;
* :func:`should_compile` decides ``train.compile: auto``: compile only when the time it
  saves over the remaining steps is well above what compiling costs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20
"""glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2)."""


@lru_cache(maxsize=1)
def tune_cpu_allocator(trim_threshold: int = 512 * 2**20) -> bool:
    """Serve tensors up to 32 MB from the heap and keep up to ``trim_threshold`` of it freed.

    By default glibc maps each large allocation afresh and unmaps it when freed, and gives
    the top of the heap back to the kernel as soon as 128 KB are free; a training step then
    page-faults in the same activations every micro-step. With these settings the second
    and later steps reuse memory already mapped. Returns False (and changes nothing) where
    the C library is not glibc. Call it once, before the model is built.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return ok and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1


def adamw_kwargs(device: torch.device) -> dict[str, bool]:
    """``torch.optim.AdamW`` keyword arguments for the fastest, leanest kernel on ``device``.

    Fused AdamW (one kernel per parameter, updated in place) exists on CUDA and, since
    PyTorch 2.4, on CPU; there it is ~3x faster than foreach and needs no temporaries
    (foreach held ~0.3 GB more for an 82M-parameter model). MPS keeps foreach.
    """
    if device.type in {"cuda", "cpu"}:
        return {"fused": True}
    return {"foreach": True}


@dataclass(frozen=True)
class CompileEstimate:
    """What compiling is expected to cost and give on one kind of device."""

    compile_s: float
    """Seconds to compile the model's blocks (first step minus an eager step)."""
    speedup: float
    """Eager step time over compiled step time."""


# GPT-2-shaped models, regional compilation of the transformer blocks (torch 2.13):
# * cpu/fp32, 2-core AVX2 EPYC, distilgpt2 LoRA 4 x 512: no gain in CPU time per step
#   (17.5 s compiled vs 16.5 s eager per micro-step), ~120 s of compiling;
# * cpu/bf16, 2-core Zen 4 with AVX512-BF16: 1.3x after ~41 s (issue 6);
# * cuda: the usual 1.2-1.4x for ~40 s.
COMPILE_ESTIMATES: dict[tuple[str, str], CompileEstimate] = {
    ("cpu", "fp32"): CompileEstimate(compile_s=120.0, speedup=1.0),
    ("cpu", "bf16"): CompileEstimate(compile_s=45.0, speedup=1.3),
    ("cuda", "bf16"): CompileEstimate(compile_s=40.0, speedup=1.3),
    ("cuda", "fp16"): CompileEstimate(compile_s=40.0, speedup=1.3),
    ("cuda", "fp32"): CompileEstimate(compile_s=40.0, speedup=1.2),
}


def should_compile(setting: str, *, device_type: str, precision: str, remaining_steps: int,
                   step_s: float | None, margin: float = 2.0,
                   estimate: CompileEstimate | None = None) -> tuple[bool, str]:
    """Decide ``train.compile`` (``on|off|auto``); returns the decision and the reason.

    ``auto`` compiles when ``remaining_steps * step_s * (1 - 1/speedup)``, the time saved,
    is at least ``margin`` times the compile time. ``step_s`` is a measured eager step (the
    loop times its first steps, then decides); without it ``auto`` stays eager. The
    expected gain depends on ``device_type`` and ``precision`` (:data:`COMPILE_ESTIMATES`):
    none on a CPU in fp32, so ``auto`` never compiles there; MPS never compiles under
    ``auto`` (inductor's Metal backend is not mature enough).
    """
    if setting == "off":
        return False, "compile off, as configured"
    if setting == "on":
        return True, "compile on, as configured"
    est = estimate or COMPILE_ESTIMATES.get((device_type, precision))
    if est is None or est.speedup <= 1.0:
        return False, f"no compile: no measured gain on {device_type} in {precision}"
    if step_s is None:
        return False, "no compile: no measured step time yet"
    saved = remaining_steps * step_s * (1.0 - 1.0 / est.speedup)
    if saved >= margin * est.compile_s:
        return True, (f"compiling: ~{saved:.0f}s saved over {remaining_steps} steps for "
                      f"~{est.compile_s:.0f}s of compiling")
    return False, (f"no compile: it would save ~{saved:.0f}s over {remaining_steps} steps and "
                   f"cost ~{est.compile_s:.0f}s")
