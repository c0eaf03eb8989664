"""Phase 5 of a run: the model to train, on this rank's device, with gradient
checkpointing, LoRA and the CPU's faster dropout applied, wrapped with its loss for the
loop (and by DDP or FSDP when several processes train)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.config import Config, is_scratch
from doctune.errors import ConfigError
from doctune.rundir import RunDir
from doctune.train import dist
from doctune.train.dist import DistEnv
from doctune.train.parts import Hardware, ModelParts

if TYPE_CHECKING:
    import torch

    from doctune.quantize import BaseFormat


def build_model(cfg: Config, env: DistEnv, folder: RunDir, tokenizer: Any, hw: Hardware, *,
                resume: bool) -> ModelParts:
    """The model for ``tokenizer`` and what the loop trains of it (see :class:`ModelParts`).
    Rank 0 alone writes a from-scratch LoRA run's random base into the run folder."""
    from transformers.utils import logging as hf_logging

    from doctune.modeling import count_parameters
    from doctune.quantize import base_format

    fmt = base_format(base_dtype=cfg.model.base_dtype, quantize=cfg.lora.quantize,
                      lora=cfg.lora.enabled, precision=hw.precision.name)
    model, base = _load(cfg, folder, tokenizer, resume=resume, attention=hw.attention,
                        load_dtype=fmt.load_dtype, save_base=env.is_main)
    hf_logging.disable_progress_bar()  # after loading, so hub downloads kept their bars
    _fit_tokenizer(model, tokenizer, cfg)
    model = _prepare_for_training(model, cfg, hw.device, fmt)
    trainable, total = count_parameters(model)  # before sharding: whole sizes
    module = dist.wrap(env, model, fused=cfg.train.fused_loss, device=hw.device)
    return ModelParts(model=model, module=module, base=base, trainable=trainable, total=total,
                      base_format=fmt)


def _load(cfg: Config, folder: RunDir, tokenizer: Any, *, resume: bool, attention: str | None,
          load_dtype: Any, save_base: bool) -> tuple[Any, str]:
    """The starting weights (a from-scratch preset's built for ``tokenizer``) and the name of
    their base (hub id or absolute folder)."""
    from doctune.modeling import build_scratch_model, load_pretrained

    m = cfg.model
    if not is_scratch(m.name):
        model = load_pretrained(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code,
                                attn_implementation=attention, dtype=load_dtype)
        local = Path(m.name).expanduser()
        return model, (str(local.resolve()) if local.exists() else m.name)
    if resume and folder.base_dir.is_dir():
        model = load_pretrained(str(folder.base_dir), attn_implementation=attention)
    else:
        model = build_scratch_model(m.name, tokenizer, block_size=cfg.data.block_size,
                                    attn_implementation=attention)
        if cfg.lora.enabled and save_base:  # the adapter needs its (random) base saved beside it
            model.save_pretrained(folder.base_dir)
    return model, (str(folder.base_dir.resolve()) if cfg.lora.enabled else m.name)


def _fit_tokenizer(model: Any, tokenizer: Any, cfg: Config) -> None:
    """Check the model reads the run's windows and every token id; ChatML tokens added for
    trained questions get new embeddings."""
    from doctune.knowledge.chat import added_chat_tokens

    name, block = cfg.model.name, cfg.data.block_size
    n_pos = (getattr(model.config, "n_positions", None)
             or getattr(model.config, "max_position_embeddings", None))
    if n_pos is not None and block > n_pos:
        raise ConfigError(f"`data.block_size` is {block}, but {name} reads at most {n_pos} "
                          f"tokens. Use `--set data.block_size={n_pos}` or less.")
    n_vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_vocab and added_chat_tokens(tokenizer, n_vocab):
        model.resize_token_embeddings(len(tokenizer))  # ChatML added for trained questions
        n_vocab = len(tokenizer)
    if len(tokenizer) > n_vocab:
        raise ConfigError(f"The tokenizer has {len(tokenizer):,} tokens but {name} has "
                          f"embeddings for {n_vocab:,}. Use the model's own tokenizer "
                          "(leave `model.tokenizer` unset) or one made for it.")


def _prepare_for_training(model: Any, cfg: Config, device: torch.device, fmt: BaseFormat) -> Any:
    """On ``device``, the frozen base stored as ``fmt`` says (bf16 or quantised), with
    gradient checkpointing, LoRA (its side path fused), (CPU) the faster dropout, and the
    RMSNorms and SwiGLU MLPs that keep less for the backward pass."""
    from doctune.modeling import apply_lora, enable_grad_checkpointing
    from doctune.quantize import prepare_base
    from doctune.train.dropout import use_fast_dropout
    from doctune.train.fused_blocks import use_fused_blocks

    prepare_base(model, fmt, device)  # bf16 or quantised frozen weights, moved to the device
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model)
    if cfg.lora.enabled:
        lo = cfg.lora
        model = apply_lora(model, r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                           target_modules=lo.target_modules, dora=lo.dora)
    if cfg.lora.enabled:  # LoRA's side path in one function: fewer copies, less memory
        from doctune.train.lora_fused import use_fused_lora

        use_fused_lora(model)
    if device.type == "cpu":  # the CPU's dropout masks are drawn serially: a faster draw
        use_fast_dropout(model)
    use_fused_blocks(model)  # RMSNorm and SwiGLU keeping less for the backward pass
    return model


def source_facts(name: str) -> dict[str, Any]:
    """Where the weights came from, for a GGUF starting model (file, architecture, quantisation)."""
    from doctune.modeling import resolve_model_source
    from doctune.sources import gguf_facts

    src = resolve_model_source(name)
    return gguf_facts(src.gguf_file) if src.gguf_file is not None else {}
