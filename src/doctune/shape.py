"""What a model's memory depends on, read from its config: layers, widths, parameter counts.

Models are built on the ``meta`` device (no memory, no weights read), so an 8B model's
shape costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from doctune.config import Config, is_scratch
from doctune.errors import ModelError


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a model, read from its config."""

    n_layer: int
    width: int
    n_head: int
    vocab: int
    params: int
    """All parameters (tied weights once)."""
    matmul_params: int
    """Weights of the layers' matrix multiplications (cast to bf16 under autocast)."""
    lora_params: int
    """Trainable parameters of a LoRA adapter with ``lora.r`` on the default/given targets."""
    attn_dropout: bool
    embed_params: int = 0
    """Input embeddings and an untied output head (tied: counted once)."""
    quantizable_params: int = 0
    """Weights of the ``nn.Linear`` layers in the blocks (what ``lora.quantize`` stores in 4/8 bits)."""
    max_linear: int = 0
    """Weights of the largest of those layers."""
    lora_inputs: int = 0
    """Summed input widths of the layers LoRA adapts in one block (Llama: 6 x width + MLP
    size): each LoRA branch keeps its dropout mask for the backward."""
    lora_distinct_inputs: int = 0
    """The same with an input read by several of them counted once (Llama: 3 x width + MLP
    size): the copies LoRA's fused side path keeps (one for q, k and v; one for gate and up)."""


SHARED_INPUT = {"q_proj": "attention input", "k_proj": "attention input",
                "v_proj": "attention input", "gate_proj": "MLP input", "up_proj": "MLP input"}
"""Projections that read the same input in the families doctune knows (Llama, Qwen, Gemma,
Mistral): one copy of it serves all their adapters."""


def _model_config(cfg: Config) -> Any:
    from doctune.modeling import preset_config, resolve_model_source
    from doctune.sources import gguf_config

    name = cfg.model.name
    if is_scratch(name):
        return preset_config(name, n_positions=cfg.data.block_size)
    src = resolve_model_source(name)
    if src.gguf_file is not None:
        return gguf_config(src.gguf_file)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, revision=cfg.model.revision,
                                          trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"Could not read the config of model {name!r} (offline, or no cached "
                         "copy; a local folder needs a config.json). Point `model.name` at a local "
                         "model folder or use a preset such as `scratch:small`. "
                         f"(transformers said: {str(e).splitlines()[0]})") from None


def model_shape(cfg: Config) -> ModelShape:
    """Count the model's parameters on the meta device (no memory, no weights read)."""
    return shape_of(_model_config(cfg), r=cfg.lora.r, targets=cfg.lora.target_modules,
                    trust_remote_code=cfg.model.trust_remote_code)


def shape_of(mc: Any, *, r: int, targets: list[str] | None = None,
             trust_remote_code: bool = False) -> ModelShape:
    """The :class:`ModelShape` of a transformers config ``mc``, LoRA of rank ``r`` on
    ``targets`` (None: doctune's defaults)."""
    import torch
    from transformers import AutoModelForCausalLM

    from doctune.modeling import default_lora_targets, transformer_blocks

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mc, trust_remote_code=trust_remote_code)
    seen: set[int] = set()
    params = matmul = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params += p.numel()
    base = model.base_model
    for module in base.modules():  # matrices inside the blocks (not the embeddings)
        w = getattr(module, "weight", None)
        if w is not None and w.dim() == 2 and not isinstance(module, torch.nn.Embedding):
            matmul += w.numel()
    embeds = {id(m.weight): m.weight.numel() for m in model.modules()
              if isinstance(m, torch.nn.Embedding) or m is model.get_output_embeddings()}
    quantizable = [m.weight.numel() for b in transformer_blocks(model) for m in b.modules()
                   if type(m) is torch.nn.Linear and m.weight.numel() % 128 == 0]
    targets = targets or default_lora_targets(model)
    lora = inputs = 0
    read: dict[tuple[str, str], int] = {}  # (module path, what it reads) -> input width
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        parent, _, leaf = name.rpartition(".")
        if leaf in targets and w is not None and w.dim() == 2:
            lora += r * (w.shape[0] + w.shape[1])
            width = int(w.shape[0] if type(module).__name__ == "Conv1D" else w.shape[1])
            inputs += width
            read[(parent, SHARED_INPUT.get(leaf, leaf))] = width

    def get(*names: str, default: Any = None) -> Any:
        return next((getattr(mc, n) for n in names if getattr(mc, n, None) is not None), default)

    width = int(get("n_embd", "hidden_size", "d_model"))
    return ModelShape(
        n_layer=int(get("n_layer", "num_hidden_layers")), width=width,
        n_head=int(get("n_head", "num_attention_heads")), vocab=int(get("vocab_size")),
        params=params, matmul_params=matmul, lora_params=lora, embed_params=sum(embeds.values()),
        quantizable_params=sum(quantizable), max_linear=max(quantizable, default=0),
        lora_inputs=inputs // max(1, int(get("n_layer", "num_hidden_layers"))),
        lora_distinct_inputs=sum(read.values()) // max(1, int(get("n_layer", "num_hidden_layers"))),
        attn_dropout=float(get("attn_pdrop", "attention_dropout", default=0.0)) > 0)
