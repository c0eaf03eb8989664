"""The set-up phases of a run that are not data or model: hardware, the fitted
configuration, the run folder, the optimizer, the monitor, the header and the facts.

Each phase takes plain parts and returns a typed one (:mod:`doctune.train.parts`);
:func:`doctune.train.loop.train` calls them in order. Under several processes rank 0
decides (memory fit, DDP or FSDP) and writes (the run folder) while the others wait.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from doctune.config import Config, resolve, schedule
from doctune.errors import ConfigError
from doctune.rundir import RunDir, RunFacts
from doctune.train import dist
from doctune.train.checkpoint import latest_state, space_warning
from doctune.train.dist import DistEnv
from doctune.train.parts import Fitted, Hardware, Inputs, ModelParts, Optim

if TYPE_CHECKING:
    import torch

    from doctune.monitor.run import Monitor


# ---- 1. hardware -------------------------------------------------------------------------


def hardware(cfg: Config, device: torch.device) -> Hardware:
    """Precision and attention kernel for ``device`` (resolved by the caller: this rank's),
    and a note when other programs crowd the CPU."""
    import torch

    from doctune.device import resolve_precision

    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    precision = resolve_precision(t.precision, device)
    notes: list[str] = []
    attn = cfg.model.attn_implementation
    if device.type == "cpu":
        from doctune.machine import busy_cores, cpu_contention_warning
        from doctune.train.attention import register_attention
        from doctune.train.speed import tune_cpu_allocator

        tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it back
        threads = torch.get_num_threads()
        if not t.num_threads and threads > 1:  # sample only when the warning could be given
            crowded = cpu_contention_warning(threads, os.cpu_count() or 1, busy_cores())
            if crowded:
                notes.append(f"warning: {crowded}")
        if attn == "sdpa":
            attn = register_attention()  # the same attention, without (B, H, T, T) dropout tensors
    return Hardware(device, precision, attn, tuple(notes))


# ---- 2. the configuration this run trains with -------------------------------------------


def fit(cfg: Config, env: DistEnv, hw: Hardware, folder: RunDir | None) -> Fitted:
    """``memory.auto_fit``, DDP or FSDP, defaults resolved, and (``folder``: a resume) the
    accumulation that keeps the checkpoint's global batch on this number of processes."""
    from doctune.plan import default_budget_mb, fit_to_budget

    if cfg.data.path is None:
        raise ConfigError("No docs folder given: pass it as `doctune train DOCS` or set `data.path`.")
    device = hw.device.type
    fitted = dist.broadcast(env, dist.main_first(
        env, lambda: fit_to_budget(cfg, device=device) if cfg.memory.auto_fit else (cfg, [])))
    assert fitted is not None
    cfg, notes = fitted
    env, par_notes = _parallel(cfg, env, hw)
    cfg = resolve(cfg)  # after fitting: a LoRA the budget forced gets the LoRA learning rate
    if folder is not None:
        cfg = _resume_accum(cfg, env, folder, par_notes)
    return Fitted(cfg, env, default_budget_mb(cfg, device), (*notes, *par_notes))


def _parallel(cfg: Config, env: DistEnv, hw: Hardware) -> tuple[DistEnv, list[str]]:
    """``train.parallel`` decided (by rank 0, for all), with the line saying so."""
    if not env.active:
        return env, []

    def fits() -> bool:
        from doctune.plan import estimate_memory

        return estimate_memory(cfg, device=hw.device.type).fits

    mode = dist.broadcast(env, dist.main_first(
        env, lambda: dist.choose_parallel(cfg.train.parallel, fits_one_device=fits)))
    assert mode is not None
    why = "as configured" if cfg.train.parallel != "auto" else (
        "the model fits one device" if mode == "ddp" else "the model does not fit one device")
    return replace(env, parallel=mode), [f"{env.world} processes, {mode.upper()} ({why})"]


def _resume_accum(cfg: Config, env: DistEnv, folder: RunDir, notes: list[str]) -> Config:
    """On a resume by another number of processes, the accumulation that keeps the
    checkpoint's global batch (``micro_batch_size x grad_accum x world``)."""
    saved = latest_state(folder)
    if saved is None or saved.world_size == env.world or saved.grad_accum == 0:
        return cfg
    if saved.grad_accum % env.world:
        raise ConfigError(f"The checkpoint took {saved.grad_accum} micro-batches per step over "
                          f"{saved.world_size} process(es); {env.world} processes cannot share "
                          "them evenly. Resume with a number of processes that divides "
                          f"{saved.grad_accum}.")
    accum = saved.grad_accum // env.world
    if accum != cfg.train.grad_accum:
        notes.append(f"train.grad_accum {cfg.train.grad_accum} -> {accum}: the checkpoint's "
                     f"global batch over {env.world} process(es) instead of {saved.world_size}")
        cfg = cfg.model_copy(deep=True)
        cfg.train.grad_accum = accum
    return cfg


# ---- 3. the run folder -------------------------------------------------------------------


def open_run_folder(folder: RunDir, cfg: Config, env: DistEnv, *, resume: bool,
                    overwrite: bool) -> None:
    """Check the run folder (apart from the docs; a new run never mixes with other files;
    a resume has a checkpoint) and write ``config.yaml``: rank 0 does, the others wait."""
    from doctune.paths import check_apart

    def check_and_write() -> None:
        assert cfg.data.path is not None
        check_apart(Path(cfg.data.path), folder.path, what="The run folder",
                    fix="Choose a folder outside it, e.g. `--out runs/mydocs`.")
        if cfg.data.cache_dir is not None:
            check_apart(Path(cfg.data.path), Path(cfg.data.cache_dir), what="`data.cache_dir`",
                        fix="Choose a folder outside it, or leave `data.cache_dir` unset.")
        if resume:
            folder.require_run()
            folder.recover_interrupted_save()
            folder.latest_checkpoint()  # fail before any slow work when there is nothing to resume
        else:
            folder.check_new(overwrite=overwrite)
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_config(cfg)  # on resume too: it holds what this run now uses

    dist.main_first(env, check_and_write)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- 6. optimizer and schedule -----------------------------------------------------------


def make_optimizer(cfg: Config, model: torch.nn.Module, hw: Hardware, *, train_windows: int,
                   world: int) -> Optim:
    """AdamW, its warm-up + decay schedule over the run's steps, and a gradient scaler for fp16."""
    import torch

    from doctune.train.optim import build_optimizer, lr_lambda

    t = cfg.train
    assert t.lr is not None  # filled by config.resolve
    plan = schedule(t, train_windows, world)
    optimizer = build_optimizer(model, lr=t.lr, weight_decay=t.weight_decay, device=hw.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        t.schedule, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps,
        min_lr_ratio=t.min_lr_ratio))
    scaler = torch.amp.GradScaler(hw.device.type) if hw.precision.use_scaler else None
    return Optim(optimizer, scheduler, scaler, plan)


# ---- 7. monitor, facts and header --------------------------------------------------------


def open_monitor(cfg: Config, env: DistEnv, folder: RunDir, hw: Hardware, *, total_steps: int,
                 resume: bool, quiet: bool) -> Monitor:
    """Rank 0's display and loggers; a monitor that records nothing on the other ranks."""
    from doctune.monitor.run import NullMonitor, RunMonitor

    if not env.is_main:
        return NullMonitor()
    log = cfg.log
    return RunMonitor(folder, total_steps=total_steps, config=cfg.model_dump(mode="json"),
                      tensorboard=log.tensorboard, wandb=log.wandb, wandb_project=log.wandb_project,
                      wandb_mode=log.wandb_mode, progress=log.progress, quiet=quiet,
                      resume_step=folder.latest_checkpoint().step if resume else 0,
                      device=hw.device)


def run_facts(cfg: Config, env: DistEnv, folder: RunDir, hw: Hardware, inputs: Inputs,
              model: ModelParts, optim: Optim, *, resume: bool) -> RunFacts:
    """``run.json`` as the run starts: what it trains, where, on how much (a resume keeps
    what the run recorded before, its starting perplexity among them)."""
    from doctune.train.model import source_facts

    facts = folder.facts if resume else RunFacts()
    facts.update({"model_name": cfg.model.name, "base_model": model.base, "lora": cfg.lora.enabled,
                  "device": hw.device.type, "precision": hw.precision.name,
                  "params_total": model.total, "params_trainable": model.trainable,
                  "total_steps": optim.schedule.total_steps, "train_windows": len(inputs.train),
                  "val_windows": len(inputs.val) if inputs.val else 0, "processes": env.world,
                  "parallel": env.parallel, "base_weights": model.base_format.describe(),
                  "knowledge": inputs.knowledge.summary if inputs.knowledge else None,
                  **source_facts(cfg.model.name)})
    return facts


def header(cfg: Config, env: DistEnv, folder: RunDir, hw: Hardware, fitted: Fitted,
           inputs: Inputs, model: ModelParts, optim: Optim, facts: RunFacts) -> list[str]:
    """The lines printed before the first step."""
    t, n_train, n_val = cfg.train, len(inputs.train), len(inputs.val) if inputs.val else 0
    fmt = model.base_format
    lora = (f", LoRA r={cfg.lora.r}" + (" (DoRA)" if cfg.lora.dora else "")
            + f" on a {fmt.describe()}" if cfg.lora.enabled else "")
    if facts.gguf_file_type:
        lora += f"; from GGUF {facts.gguf_file_type}, dequantised to {fmt.dtype}"
    each = f" on each of {env.world} processes" if env.active else ""
    return [
        *hw.notes, *fitted.notes, *optim.schedule.notes,
        *(space_warning(cfg, folder, model.model) if env.is_main else []),
        f"run folder: {folder.path}",
        *([inputs.knowledge.header()] if inputs.knowledge else []),
        f"device: {hw.device.type}; precision: {hw.precision.reason}",
        f"model: {cfg.model.name} ({model.total / 1e6:.1f}M parameters; training "
        f"{model.trainable:,} = {100 * model.trainable / model.total:.2f}%{lora})",
        f"data: {n_train} training windows, {n_val} validation windows of "
        f"{cfg.data.block_size} tokens; {optim.schedule.total_steps} steps of "
        f"{t.micro_batch_size}x{t.grad_accum} windows{each}",
    ]
