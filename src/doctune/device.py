"""Device and precision, resolved once per run.

``resolve_device("auto")`` picks cuda, then mps, then cpu. ``resolve_precision`` turns
``auto|bf16|fp16|fp32`` into what the loop needs: the autocast dtype (or none) and
whether a gradient scaler is used, with a sentence saying why.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from doctune.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``auto|cuda|mps|cpu``; a missing one is a clear error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("Device cuda was asked for, but PyTorch sees no CUDA GPU. Install a CUDA "
                          "build of PyTorch, or choose device auto (cpu here).")
    if name == "mps" and not mps_available():
        raise ConfigError("Device mps was asked for, but MPS is not available (it needs an Apple "
                          "Silicon Mac with macOS 12.3+ and a PyTorch build for it). Choose device auto.")
    if name not in {"cuda", "mps", "cpu"}:
        raise ConfigError(f"The device must be auto, cuda, mps or cpu, got {name!r}.")
    return torch.device(name)


def mps_available() -> bool:
    """True when this PyTorch can use Apple's Metal (MPS) backend."""
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16, AMX, Arm BF16)."""
    machine = platform.machine().lower()
    if machine in {"arm64", "aarch64"} and platform.system() == "Darwin":
        return True  # Apple M2 and later; M1 emulates, still no slower than fp32 for matmul
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@dataclass(frozen=True)
class Precision:
    """What the training loop needs to know about numeric precision."""

    name: str
    """bf16, fp16 or fp32: the autocast precision of matrix work (weights stay fp32)."""
    autocast_dtype: torch.dtype | None
    """dtype for ``torch.autocast``; None runs plain fp32."""
    use_scaler: bool
    """fp16 needs a gradient scaler so small gradients do not underflow."""
    reason: str
    """One sentence saying why this precision was chosen, printed at the start of a run."""

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        """The autocast context for a forward pass on ``device`` (a no-op in fp32)."""
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def _supports_bf16(device: torch.device) -> bool:
    import torch

    if device.type == "cuda":
        # native bf16 only (Ampere and newer): older GPUs emulate it slowly, fp16 is right there
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "mps":
        return bool(torch.backends.mps.is_macos_or_newer(14, 0))
    return cpu_has_bf16()


def resolve_precision(choice: str, device: torch.device) -> Precision:
    """Turn ``train.precision`` into a :class:`Precision` for ``device``.

    ``auto`` takes bf16 where the device runs it natively, fp16 with loss scaling on CUDA
    or MPS without bf16, and fp32 otherwise. An explicit bf16/fp16 the device cannot run
    is an error that says what to use instead.
    """
    import torch

    bf16_ok = _supports_bf16(device)
    if choice == "auto":
        if bf16_ok:
            return Precision("bf16", torch.bfloat16, False, f"bf16 autocast: {device.type} supports bf16")
        if device.type in {"cuda", "mps"}:
            return Precision("fp16", torch.float16, True,
                             f"fp16 autocast with loss scaling: {device.type} has no bf16")
        return Precision("fp32", None, False,
                         "fp32: this CPU has no native bf16 instructions, so bf16 would be slower")
    if choice == "bf16":
        if device.type == "mps" and not bf16_ok:
            raise ConfigError("Precision bf16 was asked for, but MPS needs macOS 14 or newer for "
                              "bf16. Choose precision fp16 or auto.")
        if device.type == "cuda" and not bf16_ok:
            raise ConfigError("Precision bf16 was asked for, but this GPU has no native bf16 (it "
                              "needs an Ampere or newer card). Choose precision fp16 or auto.")
        note = "" if bf16_ok else " (this CPU emulates bf16: expect it to be slower than fp32)"
        return Precision("bf16", torch.bfloat16, False, f"bf16 autocast, as configured{note}")
    if choice == "fp16":
        if device.type == "cpu":
            raise ConfigError("Precision fp16 was asked for on the CPU, where PyTorch has no fast "
                              "fp16 training. Choose precision bf16, fp32 or auto.")
        return Precision("fp16", torch.float16, True, "fp16 autocast with loss scaling, as configured")
    if choice == "fp32":
        return Precision("fp32", None, False, "fp32, as configured")
    raise ConfigError(f"The precision must be auto, bf16, fp16 or fp32, got {choice!r}.")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype products of ``x`` are computed in: the autocast dtype when autocast is on
    for its device, else its own."""
    import torch

    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def empty_cache(device: torch.device) -> None:
    """Give cached device memory back (after evaluation or sampling)."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that timings are real."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


MPS_RELEASE_SHARE = 0.9
"""Share of the memory budget above which the MPS allocator's cache is given back."""


def release_if_near_budget(device: torch.device, budget_mb: float) -> bool:
    """On MPS, empty the allocator's cache when Metal holds more than
    :data:`MPS_RELEASE_SHARE` of ``budget_mb``: PyTorch's MPS allocator keeps what it
    cached, and with varying shapes it grows until macOS swaps. True when it released."""
    import torch

    if device.type != "mps":
        return False
    if torch.mps.driver_allocated_memory() / 2**20 <= MPS_RELEASE_SHARE * budget_mb:
        return False
    torch.mps.empty_cache()
    return True
