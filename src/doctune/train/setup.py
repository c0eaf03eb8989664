"""Everything a run needs before its first step, in named steps that each read top to bottom:
device, run folder, data, model, optimizer, monitor.

Kept apart from the loop so that ``loop.py`` reads as the training itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.config import Config, Schedule, cache_dir, is_scratch, resolve, schedule
from doctune.errors import ConfigError, DataError
from doctune.paths import free_bytes, save_failed
from doctune.rundir import RunDir, RunFacts
from doctune.train import dist
from doctune.train.dist import DistEnv
from doctune.train.knowledge import KnowledgeSetup, load_knowledge, mix_training_set

if TYPE_CHECKING:
    import torch

    from doctune.data.store import WindowSet
    from doctune.device import Precision
    from doctune.knowledge.mix import MixedWindows
    from doctune.monitor import RunMonitor
    from doctune.quantize import BaseFormat


@dataclass
class RunSetup:
    """The live objects of one run, built by :func:`build_run`."""

    cfg: Config
    """The resolved configuration (what ``config.yaml`` holds)."""
    rundir: RunDir
    device: torch.device
    precision: Precision
    tokenizer: Any
    model: Any
    train: WindowSet | MixedWindows
    val: WindowSet | None
    pad_id: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    monitor: RunMonitor
    total_steps: int
    prompts: list[str]
    t0: float
    data_fingerprint: str
    facts: RunFacts
    memory_budget_mb: float
    """``memory.budget``, or the planner's safe share of the device's memory."""
    dist: DistEnv = field(default_factory=DistEnv)
    """This process's rank among the run's processes, and ``ddp``/``fsdp`` when several."""
    module: Any = None
    """What the loop trains: the model and its loss as one module, wrapped by DDP or FSDP
    when several processes train (see :mod:`doctune.train.dist`)."""
    knowledge: KnowledgeSetup | None = None
    """The knowledge mix (``knowledge:`` in the config), or None when nothing is mixed in."""

    def save_final(self) -> Path:
        """Write ``final/``: a transformers model folder, or a PEFT adapter, with the tokenizer.

        Every rank calls it (a sharded model is gathered first); rank 0 writes."""
        # the whole state dict, gathered, when sharded (FSDP); the model holds it otherwise
        state = dist.full_state(self.model, trainable_only=False) if self.dist.parallel == "fsdp" else None
        dist.main_first(self.dist, lambda: self._write_final(state))
        return self.rundir.final_dir

    def _write_final(self, state: dict[str, Any] | None) -> None:
        final, tmp = self.rundir.final_dir, self.rundir.final_staging
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            # PEFT saves the adapter; transformers the whole model
            self.model.save_pretrained(tmp, **({"state_dict": state} if state is not None else {}))
            self.tokenizer.save_pretrained(tmp)
            if self.cfg.lora.enabled and self.facts.base_model:
                _point_adapter_at_base(tmp, self.facts.base_model)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise save_failed(e, what="the final model", folder=self.rundir.path,
                              needed_bytes=final_bytes(self.model, lora=self.cfg.lora.enabled),
                              run=self.rundir) from None

    def write_facts(self) -> None:
        """``run.json``: what the run was and how it ended (rank 0 writes it)."""
        if self.dist.is_main:
            self.rundir.write_facts(self.facts)

    def write_report(self) -> Path | None:
        """The HTML report with plots (None if it could not be written; the run is still fine)."""
        from doctune.monitor.report import write_report

        if not self.cfg.log.report or not self.dist.is_main:
            return None
        try:
            if self.knowledge is not None and self.knowledge.trains_qa:
                from doctune.knowledge.evaluate import evaluate_run

                self.rundir.write_knowledge_eval(evaluate_run(self.rundir.path, device=self.device.type))
            return write_report(self.rundir)
        except Exception as e:  # a report failure must never lose a finished run
            self.monitor.warn(f"could not write the report: {e}")
            return None


def build_run(cfg: Config, *, resume: bool, quiet: bool, overwrite: bool = False,
              env: DistEnv | None = None, device: torch.device | None = None) -> RunSetup:
    """Resolve and build everything for ``cfg``; see :class:`RunSetup`. ``overwrite`` lets a new
    run replace the files of an earlier run in the same folder.

    Under several processes (``env``, ``device``: this rank's, see :mod:`doctune.train.dist`)
    rank 0 alone writes the run folder, tokenizer and data while the others wait, then read
    them; every decision (memory fitting, DDP or FSDP) is rank 0's."""
    from transformers.utils import logging as hf_logging

    from doctune.modeling import count_parameters, pad_token_id
    from doctune.plan import default_budget_mb
    from doctune.quantize import base_format

    t0 = time.perf_counter()
    env = env or DistEnv()
    if cfg.data.path is None:
        raise ConfigError("No docs folder given: pass it as `doctune train DOCS` or set `data.path`.")
    device, precision, attn, notes = _device(cfg, device)
    fitted = dist.broadcast(env, dist.main_first(env, lambda: _fit_memory(cfg, device)))
    assert fitted is not None
    cfg, fit_notes = fitted
    env, par_notes = _parallel(cfg, env, device)
    cfg = resolve(cfg)  # after fitting: a LoRA the budget forced gets the LoRA learning rate
    cfg = _resume_accum(cfg, env, resume, par_notes)
    run = dist.main_first(env, lambda: _run_folder(cfg, resume, overwrite))
    if run is None:  # the other ranks open the folder rank 0 checked and wrote
        run = RunDir.open(cfg.train.output_dir) if resume else RunDir(cfg.train.output_dir)

    seed_everything(cfg.train.seed)
    knowledge = dist.main_first(env, lambda: load_knowledge(cfg, run))
    if not env.is_main:  # the synth data rank 0 made (or found)
        knowledge = load_knowledge(cfg, run, make=False)
    exclude = knowledge.exclude if knowledge else []  # control docs are kept out of the store
    prepared = dist.main_first(env, lambda: _prepare_data(cfg, run, resume, exclude))
    if prepared is None:  # the other ranks read the tokenizer and windows rank 0 made
        prepared = _read_prepared(cfg, run)
    tokenizer, docs, val, fingerprint = prepared
    train = mix_training_set(cfg, knowledge, tokenizer, docs) if knowledge else docs

    seed_everything(cfg.train.seed)  # model init does not depend on how much data prep drew
    fmt = base_format(base_dtype=cfg.model.base_dtype, quantize=cfg.lora.quantize,
                      lora=cfg.lora.enabled, precision=precision.name)
    model, base = _build_model(cfg, run, tokenizer, resume, attn, device, fmt, save_base=env.is_main)
    hf_logging.disable_progress_bar()  # after loading, so hub downloads kept their bars
    trainable, total = count_parameters(model)  # before sharding: whole sizes
    module = dist.wrap(env, model, fused=cfg.train.fused_loss, device=device)
    plan = schedule(cfg.train, len(train), env.world)
    optimizer, scheduler, scaler = _optimizer(cfg, model, device, precision, plan)

    facts = run.facts if resume else RunFacts()
    facts.update({"model_name": cfg.model.name, "base_model": base, "lora": cfg.lora.enabled,
                  "device": device.type, "precision": precision.name, "params_total": total,
                  "params_trainable": trainable, "total_steps": plan.total_steps,
                  "train_windows": len(train), "val_windows": len(val) if val else 0,
                  "processes": env.world, "parallel": env.parallel, "base_weights": fmt.describe(),
                  "knowledge": knowledge.summary if knowledge else None,
                  **_source_facts(cfg.model.name)})
    resume_step = run.latest_checkpoint().step if resume else 0
    monitor = (_monitor(cfg, run, device, plan.total_steps, resume_step, quiet)
               if env.is_main else dist.SilentMonitor())
    lora_note = (f", LoRA r={cfg.lora.r}" + (" (DoRA)" if cfg.lora.dora else "")
                 + f" on a {fmt.describe()}" if cfg.lora.enabled else "")
    if facts.gguf_file_type:
        lora_note += f"; from GGUF {facts.gguf_file_type}, dequantised to {fmt.dtype}"
    space = _space_warning(cfg, run, model) if env.is_main else []
    t = cfg.train
    each = f" on each of {env.world} processes" if env.active else ""
    monitor.header([
        *notes, *fit_notes, *par_notes, *plan.notes, *space,
        f"run folder: {run.path}",
        *([knowledge.header()] if knowledge else []),
        f"device: {device.type}; precision: {precision.reason}",
        f"model: {cfg.model.name} ({total / 1e6:.1f}M parameters; training {trainable:,} = "
        f"{100 * trainable / total:.2f}%{lora_note})",
        f"data: {len(train)} training windows, {len(val) if val else 0} validation windows of "
        f"{cfg.data.block_size} tokens; {plan.total_steps} steps of "
        f"{t.micro_batch_size}x{t.grad_accum} windows{each}",
    ])
    prompts = t.sample_prompts if t.sample_prompts is not None else _default_prompts(val or train, tokenizer)
    return RunSetup(cfg=cfg, rundir=run, device=device, precision=precision, tokenizer=tokenizer,
                    model=model, train=train, val=val, pad_id=pad_token_id(tokenizer),
                    optimizer=optimizer, scheduler=scheduler, scaler=scaler, monitor=monitor,
                    total_steps=plan.total_steps, prompts=prompts, t0=t0,
                    data_fingerprint=fingerprint, facts=facts,
                    memory_budget_mb=default_budget_mb(cfg, device.type), dist=env, module=module,
                    knowledge=knowledge)


# ---- processes ---------------------------------------------------------------------------


def _parallel(cfg: Config, env: DistEnv, device: torch.device) -> tuple[DistEnv, list[str]]:
    """``train.parallel`` decided (by rank 0, for all), with the line saying so."""
    if not env.active:
        return env, []

    def fits() -> bool:
        from doctune.plan import estimate_memory

        return estimate_memory(cfg, device=device.type).fits

    mode = dist.broadcast(env, dist.main_first(
        env, lambda: dist.choose_parallel(cfg.train.parallel, fits_one_device=fits)))
    assert mode is not None
    why = "as configured" if cfg.train.parallel != "auto" else (
        "the model fits one device" if mode == "ddp" else "the model does not fit one device")
    return replace(env, parallel=mode), [f"{env.world} processes, {mode.upper()} ({why})"]


def _resume_accum(cfg: Config, env: DistEnv, resume: bool, notes: list[str]) -> Config:
    """On a resume by another number of processes, the accumulation that keeps the
    checkpoint's global batch (``micro_batch_size x grad_accum x world``)."""
    if not resume or not RunDir.is_run(cfg.train.output_dir):
        return cfg
    saved = _saved_counters(RunDir(cfg.train.output_dir))
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


def _saved_counters(run: RunDir) -> Any:
    from doctune.train.checkpoint import TrainState

    ckpts = run.checkpoints()
    if not ckpts:
        return None
    try:
        return TrainState(**json.loads(ckpts[-1].state.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None  # load_checkpoint says what is wrong with it


# ---- device ------------------------------------------------------------------------------


def _device(cfg: Config, device: torch.device | None = None,
            ) -> tuple[torch.device, Precision, str | None, list[str]]:
    """Device (``device`` when the caller resolved it), precision, attention kernel and the
    notes to print (CPU contention)."""
    import torch

    from doctune.device import resolve_device, resolve_precision

    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = device or resolve_device(t.device)
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
    return device, precision, attn, notes


def _fit_memory(cfg: Config, device: torch.device) -> tuple[Config, list[str]]:
    """``memory.auto_fit``: settings changed to fit the budget, and what was changed."""
    if not cfg.memory.auto_fit:
        return cfg, []
    from doctune.plan import fit_to_budget

    return fit_to_budget(cfg, device=device.type)


# ---- run folder --------------------------------------------------------------------------


def _run_folder(cfg: Config, resume: bool, overwrite: bool) -> RunDir:
    """The run folder, checked (apart from the docs; a new run never mixes with other files),
    with ``config.yaml``."""
    from doctune.paths import check_apart

    assert cfg.data.path is not None
    run = RunDir(cfg.train.output_dir)
    check_apart(Path(cfg.data.path), run.path, what="The run folder",
                fix="Choose a folder outside it, e.g. `--out runs/mydocs`.")
    if cfg.data.cache_dir is not None:
        check_apart(Path(cfg.data.path), Path(cfg.data.cache_dir), what="`data.cache_dir`",
                    fix="Choose a folder outside it, or leave `data.cache_dir` unset.")
    if resume:
        run = RunDir.open(run.path)
        run.recover_interrupted_save()
        run.latest_checkpoint()  # fail before any slow work when there is nothing to resume
    else:
        run.check_new(overwrite=overwrite)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg)  # on resume too: it holds what this run now uses
    return run


# ---- data --------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare_data(cfg: Config, run: RunDir, resume: bool, exclude: list[str]
                  ) -> tuple[Any, WindowSet, WindowSet | None, str]:
    """The tokenizer, the train and validation windows (prepared once, cached) and the store's
    fingerprint. A from-scratch preset trains its tokenizer on the cleaned docs on the way
    (kept in the run folder, and read back on resume). ``exclude`` adds globs to
    ``data.exclude`` (the knowledge step's control documents)."""
    from doctune.data.prepare import prepare
    from doctune.data.tokenize import load_tokenizer
    from doctune.modeling import preset, train_tokenizer

    d, m = cfg.data, cfg.model
    assert d.path is not None
    made: list[Any] = []

    def make_tokenizer(texts: list[str]) -> Any:
        made.append(train_tokenizer(texts, preset(m.name).vocab_size))
        made[0].save_pretrained(run.tokenizer_dir)
        return made[0]

    tokenizer = None
    if not is_scratch(m.name) or m.tokenizer:
        tokenizer = load_tokenizer(m.tokenizer or m.name)
    elif resume and run.tokenizer_dir.is_dir():
        tokenizer = load_tokenizer(str(run.tokenizer_dir))
    cache = cache_dir(cfg)
    summary = prepare(Path(d.path), cache, tokenizer=tokenizer,
                      make_tokenizer=make_tokenizer if tokenizer is None else None,
                      block_size=d.block_size, overlap=d.overlap, val_fraction=d.val_fraction,
                      seed=d.seed, include=tuple(d.include), exclude=(*d.exclude, *exclude),
                      dialect=d.dialect, title_heading=d.title_heading)
    run.write_data_summary(summary.to_dict())
    return (tokenizer or made[0], *_open_data(cfg))


def _read_prepared(cfg: Config, run: RunDir) -> tuple[Any, WindowSet, WindowSet | None, str]:
    """What rank 0's :func:`_prepare_data` made, read back by the other processes: the
    tokenizer (a scratch preset's from the run folder) and the windows."""
    from doctune.data.tokenize import load_tokenizer

    m = cfg.model
    own = not is_scratch(m.name) or m.tokenizer
    return (load_tokenizer((m.tokenizer or m.name) if own else str(run.tokenizer_dir)),
            *_open_data(cfg))


def _open_data(cfg: Config) -> tuple[WindowSet, WindowSet | None, str]:
    """Train and validation windows of the prepared store and the store's fingerprint."""
    from doctune.data.store import TokenStore

    d = cfg.data
    store = TokenStore.open(cache_dir(cfg))
    train, val = store.split("train"), store.split("val")
    if len(train) == 0:
        raise DataError(f"The docs under {d.path} gave no training windows. Add documents, or "
                        "lower `data.val_fraction` so that some go to training.")
    return train, (val if len(val) else None), str(store.manifest.get("fingerprint", ""))


# ---- model -------------------------------------------------------------------------------


def _build_model(cfg: Config, run: RunDir, tokenizer: Any, resume: bool, attn: str | None,
                 device: torch.device, fmt: BaseFormat, save_base: bool = True) -> tuple[Any, str]:
    """The model to train, on ``device`` (base stored as ``fmt`` says, checkpointing and LoRA
    applied), and the name of its base (hub id or absolute folder). ``save_base``: this
    process writes a scratch LoRA base."""
    from doctune.knowledge.chat import added_chat_tokens
    from doctune.modeling import (
        apply_lora,
        build_scratch_model,
        enable_grad_checkpointing,
        load_pretrained,
    )
    from doctune.quantize import prepare_base
    from doctune.train.dropout import use_fast_dropout

    m = cfg.model
    model: Any
    if is_scratch(m.name):
        if resume and run.base_dir.is_dir():
            model = load_pretrained(str(run.base_dir), attn_implementation=attn)
        else:
            model = build_scratch_model(m.name, tokenizer, block_size=cfg.data.block_size,
                                        attn_implementation=attn)
            if cfg.lora.enabled and save_base:  # the adapter needs its (random) base saved beside it
                model.save_pretrained(run.base_dir)
        base = str(run.base_dir.resolve()) if cfg.lora.enabled else m.name
    else:
        model = load_pretrained(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code,
                                attn_implementation=attn, dtype=fmt.load_dtype)
        local = Path(m.name).expanduser()
        base = str(local.resolve()) if local.exists() else m.name
    n_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if n_pos is not None and cfg.data.block_size > n_pos:
        raise ConfigError(f"`data.block_size` is {cfg.data.block_size}, but {m.name} reads at "
                          f"most {n_pos} tokens. Use `--set data.block_size={n_pos}` or less.")
    n_vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_vocab and added_chat_tokens(tokenizer, n_vocab):
        model.resize_token_embeddings(len(tokenizer))  # ChatML added for trained questions
        n_vocab = len(tokenizer)
    if len(tokenizer) > n_vocab:
        raise ConfigError(f"The tokenizer has {len(tokenizer):,} tokens but {m.name} has "
                          f"embeddings for {n_vocab:,}. Use the model's own tokenizer "
                          "(leave `model.tokenizer` unset) or one made for it.")
    prepare_base(model, fmt, device)  # bf16 or quantised frozen weights, moved to the device
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model)
    if cfg.lora.enabled:
        lo = cfg.lora
        model = apply_lora(model, r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                           target_modules=lo.target_modules, dora=lo.dora)
    if device.type == "cpu":  # the CPU's dropout masks are drawn serially: a faster draw
        use_fast_dropout(model)
    return model, base


# ---- optimizer ---------------------------------------------------------------------------


def _source_facts(name: str) -> dict[str, Any]:
    """Where the weights came from, for a GGUF starting model (file, architecture, quantisation)."""
    from doctune.modeling import resolve_model_source
    from doctune.sources import gguf_facts

    src = resolve_model_source(name)
    return gguf_facts(src.gguf_file) if src.gguf_file is not None else {}


def _optimizer(cfg: Config, model: Any, device: torch.device, precision: Precision,
               plan: Schedule) -> tuple[torch.optim.Optimizer, Any, Any]:
    """AdamW, its warm-up + decay schedule, and a gradient scaler for fp16."""
    import torch

    from doctune.train.optim import build_optimizer, lr_lambda

    t = cfg.train
    assert t.lr is not None  # filled by config.resolve
    optimizer = build_optimizer(model, lr=t.lr, weight_decay=t.weight_decay, device=device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        t.schedule, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps,
        min_lr_ratio=t.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    return optimizer, scheduler, scaler


# ---- monitor -----------------------------------------------------------------------------


def _monitor(cfg: Config, run: RunDir, device: torch.device, total_steps: int,
             resume_step: int, quiet: bool) -> RunMonitor:
    from doctune.monitor import RunMonitor

    log = cfg.log
    return RunMonitor(run, total_steps=total_steps, config=cfg.model_dump(mode="json"),
                      tensorboard=log.tensorboard, wandb=log.wandb, wandb_project=log.wandb_project,
                      wandb_mode=log.wandb_mode, progress=log.progress, quiet=quiet,
                      resume_step=resume_step, device=device)


def final_bytes(model: Any, *, lora: bool) -> int:
    """The size of ``final/``: the adapter for LoRA, else every weight."""
    params = [p for p in model.parameters() if p.requires_grad or not lora]
    return sum(p.numel() * p.element_size() for p in params) + 16 * 2**20  # + tokenizer files


def _space_warning(cfg: Config, run: RunDir, model: Any) -> list[str]:
    """A warning when the disk cannot hold the checkpoints kept at once plus the final model."""
    from doctune.train.checkpoint import checkpoint_bytes

    ckpt = checkpoint_bytes({n: p for n, p in model.named_parameters() if p.requires_grad}, None)
    # one more checkpoint than kept: the newest is written before the oldest is removed
    needed = ckpt * (cfg.train.keep_checkpoints + 1) + final_bytes(model, lora=cfg.lora.enabled)
    free = free_bytes(run.path)
    if free >= needed:
        return []
    return [f"warning: {run.path} is on a disk with {free / 1e6:,.0f} MB free, but this run "
            f"needs ~{needed / 1e6:,.0f} MB ({cfg.train.keep_checkpoints} checkpoints kept + 1 "
            f"being written, {ckpt / 1e6:,.0f} MB each, and the final model). Free some space, "
            "lower `train.keep_checkpoints`, or choose another `train.output_dir`."]


def _default_prompts(windows: WindowSet | MixedWindows, tokenizer: Any, n: int = 3) -> list[str]:
    """The first words of a few documents (first windows of distinct documents)."""
    from doctune.monitor.samples import default_prompts

    texts, seen = [], set()
    for i in range(len(windows)):
        w = windows[i]
        if w.loss_start == 0 and w.doc not in seen:
            seen.add(w.doc)
            texts.append(tokenizer.decode(w.ids[:48].tolist(), skip_special_tokens=True))
        if len(texts) >= n:
            break
    return default_prompts(texts, n=n)


def _point_adapter_at_base(adapter_dir: Path, base: str) -> None:
    cfg_path = adapter_dir / "adapter_config.json"
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base
    cfg_path.write_text(json.dumps(data, indent=2), encoding="utf-8")
