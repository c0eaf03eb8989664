"""Everything a run needs before its first step: folder, device, data, model, optimizer.

Kept apart from the loop so that ``loop.py`` reads as the training itself.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.config import Config, save_config
from doctune.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    import torch

    from doctune.data.store import WindowSet
    from doctune.device import Precision
    from doctune.monitor import RunMonitor


@dataclass
class RunSetup:
    """The live objects of one run, built by :func:`build_run`."""

    cfg: Config
    run_dir: Path
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
    facts: dict[str, Any] = field(default_factory=dict)

    def save_final(self) -> Path:
        """Write ``final/``: a transformers model folder, or a PEFT adapter, with the tokenizer."""
        final = self.run_dir / "final"
        tmp = self.run_dir / ".tmp-final"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(tmp)  # PEFT saves the adapter; transformers the whole model
        self.tokenizer.save_pretrained(tmp)
        if self.cfg.lora.enabled:
            _point_adapter_at_base(tmp, self.facts["base_model"])
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final

    def write_facts(self) -> None:
        """``run.json``: what the run was and how it ended."""
        tmp = self.run_dir / "run.json.tmp"
        tmp.write_text(json.dumps(self.facts, indent=1), encoding="utf-8")
        tmp.replace(self.run_dir / "run.json")

    def write_report(self) -> Path | None:
        """The HTML report with plots (None if it could not be written; the run is still fine)."""
        from doctune.monitor.report import write_report

        if not self.cfg.log.report:
            return None
        try:
            return write_report(self.run_dir)
        except Exception as e:  # a report failure must never lose a finished run
            self.monitor.warn(f"could not write the report: {e}")
            return None


def read_facts(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run folder (empty when absent)."""
    p = run_dir / "run.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def _point_adapter_at_base(adapter_dir: Path, base: str) -> None:
    cfg_path = adapter_dir / "adapter_config.json"
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base
    cfg_path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    from doctune.train.checkpoint import list_checkpoints

    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"The run folder {run_dir} is a file. Choose another `train.output_dir` "
                          "(e.g. `--out runs/mydocs`).")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir} is not a doctune run folder (no config.yaml). "
                                  "Pass the folder a previous `doctune train` wrote.")
        return
    if list_checkpoints(run_dir / "checkpoints") or (run_dir / "final").exists():
        raise ConfigError(f"{run_dir} already holds a run. Continue it with `doctune train "
                          f"--resume {run_dir}`, or choose another `train.output_dir` "
                          "(e.g. `--out runs/new`).")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load_tokenizer(cfg: Config, run_dir: Path, resume: bool) -> Any:
    from doctune.data.tokenize import load_tokenizer
    from doctune.modeling import is_scratch, preset, train_tokenizer

    saved = run_dir / "tokenizer"
    if not is_scratch(cfg.model.name) or cfg.model.tokenizer:
        name = cfg.model.tokenizer or cfg.model.name
        return load_tokenizer(name)
    if resume and saved.is_dir():
        return load_tokenizer(str(saved))
    texts = _clean_texts(cfg)
    tok = train_tokenizer(texts, preset(cfg.model.name).vocab_size)
    tok.save_pretrained(saved)
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


def _prepare_data(cfg: Config, run_dir: Path, tokenizer: Any) -> tuple[WindowSet, WindowSet | None, str]:
    from doctune.data.prepare import prepare
    from doctune.data.store import TokenStore

    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "data"
    d = cfg.data
    assert d.path is not None
    summary = prepare(Path(d.path), cache, tokenizer=tokenizer, block_size=d.block_size,
                      overlap=d.overlap, val_fraction=d.val_fraction, seed=d.seed,
                      include=tuple(d.include), exclude=tuple(d.exclude), dialect=d.dialect,
                      title_heading=d.title_heading)
    summary_dict = summary.to_dict() if hasattr(summary, "to_dict") else dict(vars(summary))
    (run_dir / "data_summary.json").write_text(json.dumps(summary_dict, indent=1, default=str),
                                               encoding="utf-8")
    store = TokenStore.open(cache)
    train, val = store.split("train"), store.split("val")
    if len(train) == 0:
        raise DataError(f"The docs under {d.path} gave no training windows. Add documents, or "
                        "lower `data.val_fraction` so that some go to training.")
    return train, (val if len(val) else None), str(store.manifest.get("fingerprint", ""))


def _build_model(cfg: Config, run_dir: Path, tokenizer: Any, resume: bool,
                 attn: str | None) -> tuple[Any, str]:
    """The model to train and the name of its base (hub id or absolute folder)."""
    from doctune.modeling import build_scratch_model, is_scratch, load_pretrained

    m = cfg.model
    if is_scratch(m.name):
        base_dir = run_dir / "base"
        if resume and base_dir.is_dir():
            model = load_pretrained(str(base_dir), attn_implementation=attn)
        else:
            model = build_scratch_model(m.name, tokenizer, block_size=cfg.data.block_size,
                                        attn_implementation=attn)
            if cfg.lora.enabled:  # the adapter needs its (random) base saved beside it
                model.save_pretrained(base_dir)
        base = str(base_dir.resolve()) if cfg.lora.enabled else m.name
    else:
        model = load_pretrained(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code,
                                attn_implementation=attn)
        local = Path(m.name).expanduser()
        base = str(local.resolve()) if local.exists() else m.name
    n_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if n_pos is not None and cfg.data.block_size > n_pos:
        raise ConfigError(f"`data.block_size` is {cfg.data.block_size}, but {m.name} reads at "
                          f"most {n_pos} tokens. Use `--set data.block_size={n_pos}` or less.")
    return model, base


def _resolve_defaults(cfg: Config) -> Config:
    """Fill the defaults that depend on other keys, so that config.yaml shows real values."""
    from doctune.modeling import is_scratch

    cfg = cfg.model_copy(deep=True)
    if cfg.train.lr is None:
        cfg.train.lr = 1e-3 if (cfg.lora.enabled or is_scratch(cfg.model.name)) else 1e-4
    # absolute paths, so that `--resume` works from any working directory
    if cfg.data.path is not None:
        cfg.data.path = Path(cfg.data.path).expanduser().resolve()
    if cfg.data.cache_dir is not None:
        cfg.data.cache_dir = Path(cfg.data.cache_dir).expanduser().resolve()
    cfg.train.output_dir = Path(cfg.train.output_dir).expanduser().resolve()
    local = Path(cfg.model.name).expanduser()
    if not is_scratch(cfg.model.name) and local.is_dir():
        cfg.model.name = str(local.resolve())
    return cfg


def build_run(cfg: Config, *, resume: bool, quiet: bool) -> RunSetup:
    """Resolve and build everything for ``cfg``; see :class:`RunSetup`."""
    import torch
    from transformers.utils import logging as hf_logging

    from doctune.device import resolve_device, resolve_precision
    from doctune.modeling import (
        apply_lora,
        count_parameters,
        enable_grad_checkpointing,
        pad_token_id,
    )
    from doctune.monitor import RunMonitor
    from doctune.train.optim import build_optimizer, lr_lambda

    t0 = time.perf_counter()
    if cfg.data.path is None:
        raise ConfigError("No docs folder given: pass it as `doctune train DOCS` or set `data.path`.")
    cfg = _resolve_defaults(cfg)
    run_dir = Path(cfg.train.output_dir)
    _check_run_dir(run_dir, resume)
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    notes: list[str] = []
    if device.type == "cpu":
        from doctune.machine import busy_cores, cpu_contention_warning
        from doctune.train.speed import tune_cpu_allocator

        tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it back
        threads = torch.get_num_threads()
        if not t.num_threads and threads > 1:  # sample only when the warning could be given
            crowded = cpu_contention_warning(threads, os.cpu_count() or 1, busy_cores())
            if crowded:
                notes.append(f"warning: {crowded}")
    attn = cfg.model.attn_implementation
    if device.type == "cpu" and attn == "sdpa":
        from doctune.train.attention import register_attention

        attn = register_attention()  # the same attention, without (B, H, T, T) dropout tensors
    if cfg.memory.auto_fit:
        from doctune.plan import fit_to_budget

        cfg, notes = fit_to_budget(cfg, device=device.type)
    t = cfg.train
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")  # on resume too: it holds what this run now uses

    seed_everything(t.seed)
    tokenizer = _load_tokenizer(cfg, run_dir, resume)
    train, val, fingerprint = _prepare_data(cfg, run_dir, tokenizer)
    pad_id = pad_token_id(tokenizer)

    seed_everything(t.seed)  # model init does not depend on how much data prep drew
    model, base = _build_model(cfg, run_dir, tokenizer, resume, attn)
    n_vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_vocab:
        raise ConfigError(f"The tokenizer has {len(tokenizer):,} tokens but {cfg.model.name} has "
                          f"embeddings for {n_vocab:,}. Use the model's own tokenizer "
                          "(leave `model.tokenizer` unset) or one made for it.")
    hf_logging.disable_progress_bar()  # after loading, so hub downloads kept their bars
    model.to(device)
    if t.grad_checkpointing:
        enable_grad_checkpointing(model)
    if cfg.lora.enabled:
        lo = cfg.lora
        model = apply_lora(model, r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                           target_modules=lo.target_modules)
    trainable, total = count_parameters(model)

    batch = t.micro_batch_size * t.grad_accum
    steps_per_epoch = math.ceil(len(train) / batch)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    if batch > len(train):
        notes.append(f"warning: one step takes {batch} windows but the docs give only "
                     f"{len(train)}: each step repeats windows. Lower train.micro_batch_size "
                     "x train.grad_accum, or add docs.")
    warmup = t.warmup_steps
    if warmup > total_steps // 10 and warmup > 0:
        warmup = total_steps // 10
        notes.append(f"warm-up shortened from {t.warmup_steps} to {warmup} steps (a tenth of "
                     f"this {total_steps}-step run), so that the learning rate peaks and decays")
    assert t.lr is not None  # resolved above
    optimizer = build_optimizer(model, lr=t.lr, weight_decay=t.weight_decay, device=device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        t.schedule, warmup_steps=warmup, total_steps=total_steps, min_lr_ratio=t.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None

    resume_step = 0
    if resume:
        from doctune.train.checkpoint import latest_checkpoint

        resume_step = int(latest_checkpoint(run_dir).name.removeprefix("step-"))
    log = cfg.log
    monitor = RunMonitor(run_dir, total_steps=total_steps, config=cfg.model_dump(mode="json"),
                         tensorboard=log.tensorboard, wandb=log.wandb, wandb_project=log.wandb_project,
                         wandb_mode=log.wandb_mode, progress=log.progress, quiet=quiet,
                         resume_step=resume_step, device=device)
    lora_note = f", LoRA r={cfg.lora.r}" if cfg.lora.enabled else ""
    monitor.header([
        *notes,
        f"run folder: {run_dir}",
        f"device: {device.type}; precision: {precision.reason}",
        f"model: {cfg.model.name} ({total / 1e6:.1f}M parameters; training {trainable:,} = "
        f"{100 * trainable / total:.2f}%{lora_note})",
        f"data: {len(train)} training windows, {len(val) if val else 0} validation windows of "
        f"{cfg.data.block_size} tokens; {total_steps} steps of "
        f"{t.micro_batch_size}x{t.grad_accum} windows",
    ])
    facts: dict[str, Any] = {"model_name": cfg.model.name, "base_model": base,
                             "lora": cfg.lora.enabled, "device": device.type,
                             "precision": precision.name, "params_total": total,
                             "params_trainable": trainable, "total_steps": total_steps,
                             "train_windows": len(train), "val_windows": len(val) if val else 0}
    if resume:
        facts = {**read_facts(run_dir), **facts}
    prompts = t.sample_prompts if t.sample_prompts is not None else _default_prompts(val or train, tokenizer)
    return RunSetup(cfg=cfg, run_dir=run_dir, device=device, precision=precision,
                    tokenizer=tokenizer, model=model, train=train, val=val, pad_id=pad_id,
                    optimizer=optimizer, scheduler=scheduler, scaler=scaler, monitor=monitor,
                    total_steps=total_steps, prompts=prompts, t0=t0, data_fingerprint=fingerprint,
                    facts=facts)


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
