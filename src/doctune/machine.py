"""Defaults for `doctune init`, chosen from the machine it runs on."""

from __future__ import annotations

from doctune.config import Config


def total_memory_mb() -> float:
    """Physical RAM of this machine in MB."""
    import psutil

    return float(psutil.virtual_memory().total) / 2**20


def machine_defaults() -> tuple[Config, list[str]]:
    """A :class:`Config` suited to this machine, and comment lines saying what was seen.

    The model is distilgpt2 with a LoRA adapter (fits any laptop); micro-batch and
    gradient checkpointing follow the memory available to training.
    """
    import torch

    from doctune.device import resolve_device, resolve_precision

    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    ram = total_memory_mb()
    mem = ram
    if device.type == "cuda":
        mem = torch.cuda.get_device_properties(0).total_memory / 2**20
    cfg = Config()
    cfg.model.name = "distilgpt2"
    cfg.lora.enabled = True
    cfg.train.output_dir = cfg.train.output_dir.parent / "mydocs"
    if mem < 8_000:
        cfg.train.micro_batch_size, cfg.train.grad_accum = 1, 16
        cfg.train.grad_checkpointing = True
    elif mem < 16_000:
        cfg.train.micro_batch_size, cfg.train.grad_accum = 2, 8
    notes = [
        f"Written for this machine: {device.type}, {precision.name}, "
        f"{ram / 1024:.0f} GB RAM" + (f", GPU {mem / 1024:.0f} GB" if device.type == "cuda" else "") + ".",
        "Train: doctune train --config doctune.yaml --set data.path=docs/",
        "Offline (no model download): --set model.name=scratch:tiny --set lora.enabled=false",
    ]
    return cfg, notes


def busy_cores(sample_s: float = 0.3) -> float:
    """How many cores other programs keep busy, sampled over ``sample_s`` (this process's own
    threads left out)."""
    import psutil

    me = psutil.Process()
    me.cpu_percent(None)
    total = psutil.cpu_percent(interval=sample_s) / 100.0 * (psutil.cpu_count() or 1)
    return max(0.0, total - me.cpu_percent(None) / 100.0)


def cpu_contention_warning(threads: int, cores: int, busy: float) -> str | None:
    """A warning when other programs hold cores that PyTorch's ``threads`` need, else None.

    PyTorch's CPU threads meet at a barrier after every operation: when another program
    takes one of their cores, the others wait for a whole scheduler slice each time (a small
    model's step was measured 18x slower on 2 cores with one of them busy).
    """
    if threads <= 1 or busy < 0.5 or threads + busy <= cores + 0.25:
        return None
    free = max(1, min(threads, round(cores - busy)))
    return (f"other programs are keeping ~{busy:.1f} of this machine's {cores} cores busy, and "
            f"PyTorch's {threads} threads wait for each other on every operation, so training can "
            f"run several times slower than it should. Close them, or train on the free cores: "
            f"`--set train.num_threads={free}`.")
