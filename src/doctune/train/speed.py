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

import contextlib
import ctypes
import ctypes.util
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

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
# * cpu/fp32, 2-core AVX2 EPYC, distilgpt2 LoRA 4 x 512: slower than eager (316 tok/s
#   compiled vs 321 eager before the eager path got its faster dropout masks, ~370 after;
#   2.41 vs 2.17 GB peak), so never under auto;
# * cpu/bf16, 2-core Zen 4 with AVX512-BF16: 1.3x after ~41 s (issue 6); on SmolLM2-135M's
#   study mix (steps of 64 to 256 tokens a row) 1.24-1.27x, and 32-41 s of compiling plus
#   ~22 s more at the first new length (automatic dynamic shapes): the README quickstart took
#   411 s of steps compiled, 410 s eager, and `auto` compiled 2 of 5 times on one day, when
#   its timed steps came out slow. Counted whole (65 s, 1.25x) it compiles from ~650 s of
#   eager steps on, where it saves at least as much again;
# * cuda: the usual 1.2-1.4x for ~40 s.
COMPILE_ESTIMATES: dict[tuple[str, str], CompileEstimate] = {
    ("cpu", "fp32"): CompileEstimate(compile_s=120.0, speedup=1.0),
    ("cpu", "bf16"): CompileEstimate(compile_s=65.0, speedup=1.25),
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


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile each repeated transformer block in place (regional compilation); returns how many.

    The blocks are the modules transformers never splits across devices
    (``_no_split_modules``, e.g. ``GPT2Block``): compiling one block's code serves all of
    them, so compiling takes seconds per block type instead of minutes for the whole model,
    and the state dict keeps its names. A model that names no block type is compiled whole.
    Inductor compiles in this process (no pool of worker processes) except on CUDA: on a
    laptop the workers' memory would count against the run.
    """
    from doctune.modeling import transformer_blocks

    if next(model.parameters()).device.type != "cuda":
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1
    blocks = transformer_blocks(model)
    for block in blocks or [model]:
        block.compile()
    return max(len(blocks), 1)


def eager(compiled: bool) -> contextlib.AbstractContextManager[Any]:
    """Run compiled code eagerly inside (evaluation, sampling): no second compile for them."""
    import torch

    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    if not compiled or stance is None:
        return contextlib.nullcontext()
    return stance("force_eager")


@dataclass
class CompileTracker:
    """Applies ``train.compile`` during a run and measures whether compiling paid off.

    ``on`` compiles before the first step. ``auto`` times eager steps first (the first
    step, which warms allocators and caches, is not used), then asks
    :func:`should_compile` with the measured step time. The first compiled step's time
    over an eager step's is the compile cost; :meth:`summary` sets it against the time the
    compiled steps saved.

    A step's time goes with its tokens: a knowledge mix has steps of 4 short questions
    beside steps of 4 whole windows, 4x the tokens and time. Given each step's input tokens
    (padding included) and the run's mean (``after_step``), every time is compared per token
    and reported for a step of the mean size, so the decision no longer depends on which
    steps happened to be timed (the README quickstart once compiled because its timed step
    was a long one, "~141s saved"; compiled and eager, its steps took the same 410 s).
    Without tokens, each step counts as the mean step.
    """

    setting: str
    device_type: str
    precision: str
    compiled: bool = False
    blocks: int = 0
    eager_s: list[float] = field(default_factory=list)
    """Eager step times, each scaled to a step of the mean size."""
    compiled_s: list[float] = field(default_factory=list)
    """Compiled step times after the one that compiled, each scaled to a step of the mean size."""
    first_compiled_s: float | None = None
    """The time of the step that compiled."""
    first_size: float = 1.0
    """The mean step's tokens over those of the step that compiled."""
    reason: str = ""

    def start(self, model: torch.nn.Module) -> str | None:
        """Compile now when the setting is ``on``; returns a line to print, if any."""
        if self.setting != "on":
            return None
        self.reason = "compile on, as configured"
        return self._compile(model)

    def after_step(self, model: torch.nn.Module, step_s: float, remaining: int, *,
                   tokens: int | None = None, mean_tokens: float | None = None) -> str | None:
        """Record a finished step (``tokens``: its input tokens; ``mean_tokens``: those of
        the run's mean step); under ``auto`` decide after the second eager step and return
        the decision's reason (compiling or not) to print."""
        size = mean_tokens / tokens if tokens and mean_tokens else 1.0  # the mean step's size
        if not self.compiled:
            self.eager_s.append(step_s * size)
        elif self.first_compiled_s is None:
            self.first_compiled_s, self.first_size = step_s, size
        else:
            self.compiled_s.append(step_s * size)
        if self.setting != "auto" or self.compiled or len(self.eager_s) != 2 or remaining <= 0:
            return None
        go, self.reason = should_compile("auto", device_type=self.device_type,
                                         precision=self.precision, remaining_steps=remaining,
                                         step_s=self.eager_s[-1])
        return self._compile(model) if go else self.reason

    def _compile(self, model: torch.nn.Module) -> str:
        self.blocks = compile_blocks(model)
        self.compiled = True
        return f"{self.reason}; compiling {self.blocks} block(s) during the next step"

    @property
    def compiled_step_s(self) -> float | None:
        """Median time of the compiled steps after the one that compiled."""
        steps = sorted(self.compiled_s)
        return steps[len(steps) // 2] if steps else None

    @property
    def compile_s(self) -> float | None:
        """The first compiled step's time over an eager step of its size (estimated from the
        last eager step; compiled from the start, from the fastest later step)."""
        if self.first_compiled_s is None:
            return None
        ref = self.eager_s[-1] if self.eager_s else (min(self.compiled_s) if self.compiled_s else None)
        return None if ref is None else max(0.0, self.first_compiled_s - ref / self.first_size)

    def facts(self) -> dict[str, Any]:
        """What to keep in the run's facts (``compile_s`` and friends)."""
        out: dict[str, Any] = {"compile": self.setting, "compiled": self.compiled,
                               "compile_reason": self.reason or None}
        if self.compiled:
            out["compile_s"] = None if self.compile_s is None else round(self.compile_s, 2)
            if (step := self.compiled_step_s) is not None:
                out["compiled_step_s"] = round(step, 3)
            if len(self.eager_s) >= 2:
                out["eager_step_s"] = round(self.eager_s[-1], 3)
        return out

    def summary(self) -> str | None:
        """One line: what compiling cost and what it saved in this run (None if not compiled)."""
        if not self.compiled or self.compile_s is None:
            return None
        line = f"torch.compile: {self.compile_s:.0f}s compiling"
        step = self.compiled_step_s
        if step is not None and len(self.eager_s) >= 2:
            saved = (self.eager_s[-1] - step) * (len(self.compiled_s) + 1)
            verdict = "paid for itself" if saved > self.compile_s else "did not pay for itself"
            line += (f"; steps {step:.2f}s compiled vs {self.eager_s[-1]:.2f}s eager, "
                     f"{saved:.0f}s saved: it {verdict}")
        return line
