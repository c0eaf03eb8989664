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
