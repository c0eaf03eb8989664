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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.config import Config, Schedule, cache_dir, is_scratch, resolve, schedule
from doctune.errors import ConfigError, DataError
from doctune.rundir import RunDir, RunFacts, free_bytes, save_failed

if TYPE_CHECKING:
    import torch

    from doctune.data.store import WindowSet
    from doctune.device import Precision
    from doctune.monitor import RunMonitor


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
    train: WindowSet
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

    def save_final(self) -> Path:
        """Write ``final/``: a transformers model folder, or a PEFT adapter, with the tokenizer."""
        final, tmp = self.rundir.final_dir, self.rundir.final_staging
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            self.model.save_pretrained(tmp)  # PEFT saves the adapter; transformers the whole model
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
        return final

    def write_facts(self) -> None:
        """``run.json``: what the run was and how it ended."""
        self.rundir.write_facts(self.facts)

    def write_report(self) -> Path | None:
        """The HTML report with plots (None if it could not be written; the run is still fine)."""
        from doctune.monitor.report import write_report

        if not self.cfg.log.report:
            return None
        try:
            return write_report(self.rundir)
        except Exception as e:  # a report failure must never lose a finished run
            self.monitor.warn(f"could not write the report: {e}")
            return None


def build_run(cfg: Config, *, resume: bool, quiet: bool, overwrite: bool = False) -> RunSetup:
    """Resolve and build everything for ``cfg``; see :class:`RunSetup`. ``overwrite`` lets a new
    run replace the files of an earlier run in the same folder."""
    from transformers.utils import logging as hf_logging

    from doctune.modeling import count_parameters, pad_token_id

    t0 = time.perf_counter()
    if cfg.data.path is None:
        raise ConfigError("No docs folder given: pass it as `doctune train DOCS` or set `data.path`.")
    device, precision, attn, notes = _device(cfg)
    cfg, fit_notes = _fit_memory(cfg, device)
    cfg = resolve(cfg)  # after fitting: a LoRA the budget forced gets the LoRA learning rate
    run = _run_folder(cfg, resume, overwrite)

    seed_everything(cfg.train.seed)
    tokenizer = _load_tokenizer(cfg, run, resume)
    train, val, fingerprint = _prepare_data(cfg, run, tokenizer)

    seed_everything(cfg.train.seed)  # model init does not depend on how much data prep drew
    model, base = _build_model(cfg, run, tokenizer, resume, attn, device)
    hf_logging.disable_progress_bar()  # after loading, so hub downloads kept their bars
    plan = schedule(cfg.train, len(train))
    optimizer, scheduler, scaler = _optimizer(cfg, model, device, precision, plan)
    trainable, total = count_parameters(model)

    facts = run.facts if resume else RunFacts()
    facts.update({"model_name": cfg.model.name, "base_model": base, "lora": cfg.lora.enabled,
                  "device": device.type, "precision": precision.name, "params_total": total,
                  "params_trainable": trainable, "total_steps": plan.total_steps,
                  "train_windows": len(train), "val_windows": len(val) if val else 0})
    resume_step = run.latest_checkpoint().step if resume else 0
    monitor = _monitor(cfg, run, device, plan.total_steps, resume_step, quiet)
    lora_note = f", LoRA r={cfg.lora.r}" if cfg.lora.enabled else ""
    space = _space_warning(cfg, run, model)
    monitor.header([
        *notes, *fit_notes, *plan.notes, *space,
        f"run folder: {run.path}",
        f"device: {device.type}; precision: {precision.reason}",
        f"model: {cfg.model.name} ({total / 1e6:.1f}M parameters; training {trainable:,} = "
        f"{100 * trainable / total:.2f}%{lora_note})",
        f"data: {len(train)} training windows, {len(val) if val else 0} validation windows of "
        f"{cfg.data.block_size} tokens; {plan.total_steps} steps of "
        f"{cfg.train.micro_batch_size}x{cfg.train.grad_accum} windows",
    ])
    t = cfg.train
    prompts = t.sample_prompts if t.sample_prompts is not None else _default_prompts(val or train, tokenizer)
    return RunSetup(cfg=cfg, rundir=run, device=device, precision=precision, tokenizer=tokenizer,
                    model=model, train=train, val=val, pad_id=pad_token_id(tokenizer),
                    optimizer=optimizer, scheduler=scheduler, scaler=scaler, monitor=monitor,
                    total_steps=plan.total_steps, prompts=prompts, t0=t0,
                    data_fingerprint=fingerprint, facts=facts)


# ---- device ------------------------------------------------------------------------------


def _device(cfg: Config) -> tuple[torch.device, Precision, str | None, list[str]]:
    """Device, precision, attention kernel and the notes to print (CPU contention)."""
    import torch

    from doctune.device import resolve_device, resolve_precision

    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(t.device)
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


def _load_tokenizer(cfg: Config, run: RunDir, resume: bool) -> Any:
    """The model's tokenizer, or for a scratch preset one trained on the docs (kept in the run)."""
    from doctune.data.tokenize import load_tokenizer
    from doctune.modeling import preset, train_tokenizer

    if not is_scratch(cfg.model.name) or cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    if resume and run.tokenizer_dir.is_dir():
        return load_tokenizer(str(run.tokenizer_dir))
    texts = _clean_texts(cfg)
    tok = train_tokenizer(texts, preset(cfg.model.name).vocab_size)
    tok.save_pretrained(run.tokenizer_dir)
    return tok


def _clean_texts(cfg: Config) -> list[str]:
    """The cleaned documents (what a from-scratch tokenizer is trained on)."""
    from doctune.data.clean import clean_markdown
    from doctune.data.cleantree import tree_dialects
    from doctune.data.corpus import find_docs, read_doc

    assert cfg.data.path is not None
    src = Path(cfg.data.path)
    root = src if src.is_dir() else src.parent
    docs, _ = find_docs(src, cfg.data.include, cfg.data.exclude)
    read = [(d, t) for d in docs if isinstance(t := read_doc(d), str)]
    dialects = (tree_dialects([d for d, _ in read], [t for _, t in read], root)
                if cfg.data.dialect == "auto" else [cfg.data.dialect] * len(read))
    texts = [clean_markdown(raw, dialect=dialect, path=doc.rel, title_heading=cfg.data.title_heading).text
             for (doc, raw), dialect in zip(read, dialects, strict=True)]
    if not any(t.strip() for t in texts):
        raise DataError(f"No documentation text found under {root}: it needs .md, .mdx or "
                        ".markdown files with some prose in them.")
    return texts


def _prepare_data(cfg: Config, run: RunDir, tokenizer: Any) -> tuple[WindowSet, WindowSet | None, str]:
    """Train and validation windows (prepared once, cached) and the store's fingerprint."""
    from doctune.data.prepare import prepare
    from doctune.data.store import TokenStore

    d = cfg.data
    assert d.path is not None
    cache = cache_dir(cfg)
    summary = prepare(Path(d.path), cache, tokenizer=tokenizer, block_size=d.block_size,
                      overlap=d.overlap, val_fraction=d.val_fraction, seed=d.seed,
                      include=tuple(d.include), exclude=tuple(d.exclude), dialect=d.dialect,
                      title_heading=d.title_heading)
    run.write_data_summary(summary.to_dict())
    store = TokenStore.open(cache)
    train, val = store.split("train"), store.split("val")
    if len(train) == 0:
        raise DataError(f"The docs under {d.path} gave no training windows. Add documents, or "
                        "lower `data.val_fraction` so that some go to training.")
    return train, (val if len(val) else None), str(store.manifest.get("fingerprint", ""))


# ---- model -------------------------------------------------------------------------------


def _build_model(cfg: Config, run: RunDir, tokenizer: Any, resume: bool, attn: str | None,
                 device: torch.device) -> tuple[Any, str]:
    """The model to train, on ``device`` (checkpointing and LoRA applied), and the name of its
    base (hub id or absolute folder)."""
    from doctune.modeling import (
        apply_lora,
        build_scratch_model,
        enable_grad_checkpointing,
        load_pretrained,
    )

    m = cfg.model
    model: Any
    if is_scratch(m.name):
        if resume and run.base_dir.is_dir():
            model = load_pretrained(str(run.base_dir), attn_implementation=attn)
        else:
            model = build_scratch_model(m.name, tokenizer, block_size=cfg.data.block_size,
                                        attn_implementation=attn)
            if cfg.lora.enabled:  # the adapter needs its (random) base saved beside it
                model.save_pretrained(run.base_dir)
        base = str(run.base_dir.resolve()) if cfg.lora.enabled else m.name
    else:
        model = load_pretrained(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code,
                                attn_implementation=attn)
        local = Path(m.name).expanduser()
        base = str(local.resolve()) if local.exists() else m.name
    n_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if n_pos is not None and cfg.data.block_size > n_pos:
        raise ConfigError(f"`data.block_size` is {cfg.data.block_size}, but {m.name} reads at "
                          f"most {n_pos} tokens. Use `--set data.block_size={n_pos}` or less.")
    n_vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_vocab:
        raise ConfigError(f"The tokenizer has {len(tokenizer):,} tokens but {m.name} has "
                          f"embeddings for {n_vocab:,}. Use the model's own tokenizer "
                          "(leave `model.tokenizer` unset) or one made for it.")
    model.to(device)
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model)
    if cfg.lora.enabled:
        lo = cfg.lora
        model = apply_lora(model, r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                           target_modules=lo.target_modules)
    return model, base


# ---- optimizer ---------------------------------------------------------------------------


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


def _default_prompts(windows: WindowSet, tokenizer: Any, n: int = 3) -> list[str]:
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
