"""GGUF for Llama-family models: ``llama`` (SmolLM/SmolLM2, Llama 3), ``qwen2`` (Qwen2, Qwen2.5),
``qwen3``, ``gemma3`` (Gemma 3 text: ``Gemma3ForCausalLM``) and ``phi3`` (Phi-3, Phi-4-mini).

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` (classes ``TextModel``,
``LlamaModel``, ``Qwen2Model``, ``Qwen3Model``, ``Gemma3Model`` and ``Phi3MiniModel``):

* llama.cpp's ``llama`` graph rotates adjacent pairs of each head (GGML's "normal" RoPE),
  while transformers rotates the two halves of a head against each other; so the rows of
  ``q_proj`` and ``k_proj`` (weights and biases) are permuted head by head
  (:func:`permute`), ``k_proj`` with the key/value head count (GQA). ``qwen2`` uses the
  "neox" RoPE, which is transformers' own, so its weights go in unchanged.
* Tied input/output embeddings are written once, as ``token_embd.weight``; llama.cpp uses
  it for the output when no ``output.weight`` is present. Untied models get ``output.weight``.
* Llama 3.x RoPE scaling (``rope_type: llama3``) becomes the ``rope_freqs`` tensor of
  per-frequency divisors; linear scaling becomes ``rope.scaling.*`` metadata.
* ``qwen3`` adds per-head RMS norms of queries and keys (``attn_q_norm``, ``attn_k_norm``).
* ``gemma3``: transformers' Gemma3RMSNorm multiplies by ``1 + weight``, llama.cpp by
  ``weight``, so every norm weight is written plus one. llama.cpp scales the embeddings by
  sqrt(hidden) itself, hard-codes five sliding-window layers then one global one, a local
  RoPE base of 10000 and (but for the 62-layer 27B) a query scale of 1/sqrt(head_dim): a
  config that differs is an :class:`ExportError`.
* ``phi3`` keeps its fused ``qkv_proj`` (``attn_qkv``) and ``gate_up_proj`` (``ffn_up``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from doctune.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3", "phi3": "phi3"}
"""llama.cpp's architecture name for each transformers ``model_type`` written here."""
ARCHES = tuple(GGUF_ARCH)
_ROPE_TYPES = {"llama": ("default", "llama3", "linear"), "qwen2": ("default",), "qwen3": ("default",),
               "gemma3_text": ("default", "linear"), "phi3": ("default",)}
_ACT = {"gemma3_text": ("hidden_activation", "gelu_pytorch_tanh", "the tanh GELU")}
GEMMA3_SWA_PATTERN = 6
"""llama.cpp's gemma3: every 6th layer attends globally, the others to a sliding window."""


def rope_parameters(cfg: Any) -> dict[str, Any]:
    """RoPE type, theta and scaling of ``cfg``, across transformers versions.

    transformers 5 keeps them in ``rope_parameters``; 4.x in ``rope_theta`` + ``rope_scaling``.
    """
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if isinstance(params.get("full_attention"), dict):  # Gemma 3: global layers' RoPE
        params = dict(params["full_attention"])
    params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.get("type")) or "default"
    return params


def head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def gguf_arch(cfg: Any) -> str:
    """llama.cpp's name for the architecture of ``cfg`` (``gemma3_text`` -> ``gemma3``)."""
    return GGUF_ARCH[cfg.model_type]


def check_config(cfg: Any) -> None:
    """Raise :class:`ExportError` unless llama.cpp computes the model of ``cfg`` exactly."""
    arch = cfg.model_type
    problems = []
    act_key, act, act_name = _ACT.get(arch, ("hidden_act", "silu", "SiLU"))
    if getattr(cfg, act_key, act) != act:
        problems.append(f"{act_key}={getattr(cfg, act_key)!r} (llama.cpp uses {act_name})")
    rope = rope_parameters(cfg)
    if rope["rope_type"] not in _ROPE_TYPES[arch]:
        problems.append(f"RoPE scaling {rope['rope_type']!r} (supported for {arch}: "
                        f"{', '.join(_ROPE_TYPES[arch])})")
    if getattr(cfg, "use_sliding_window", False):
        problems.append("sliding-window attention")
    if arch == "gemma3_text":
        problems += _gemma3_problems(cfg)
    if arch == "phi3" and float(getattr(cfg, "partial_rotary_factor", 1.0) or 1.0) != 1.0 \
            and int(cfg.hidden_size * cfg.partial_rotary_factor) % cfg.num_attention_heads:
        problems.append("a partial rotary factor that does not split evenly over the heads")
    if problems:
        raise ExportError(f"This {arch} model cannot be exported to GGUF faithfully: "
                          f"{'; '.join(problems)}. Use `--format hf` and llama.cpp's "
                          "convert_hf_to_gguf.py instead.")


def _gemma3_problems(cfg: Any) -> list[str]:
    """What in a Gemma 3 config llama.cpp's fixed gemma3 graph would compute differently."""
    n = int(cfg.num_hidden_layers)
    problems = []
    want = ["sliding_attention" if (i + 1) % GEMMA3_SWA_PATTERN else "full_attention" for i in range(n)]
    if list(getattr(cfg, "layer_types", want)) != want:
        problems.append(f"layer types {cfg.layer_types} (llama.cpp: 5 sliding-window layers, then 1 global)")
    local = dict((getattr(cfg, "rope_parameters", None) or {}).get("sliding_attention") or {})
    if float(local.get("rope_theta", 10000.0)) != 10000.0 or local.get("rope_type", "default") != "default":
        problems.append(f"local RoPE {local} (llama.cpp: theta 10000, unscaled)")
    scale = cfg.hidden_size // cfg.num_attention_heads if n == 62 else head_dim(cfg)
    if getattr(cfg, "query_pre_attn_scalar", scale) != scale:
        problems.append(f"query_pre_attn_scalar={cfg.query_pre_attn_scalar} (llama.cpp: {scale})")
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        problems.append("attention logit soft-capping")
    if getattr(cfg, "use_bidirectional_attention", False):
        problems.append("bidirectional attention")
    return problems


def add_hparams(writer: Any, cfg: Any) -> None:
    """The model metadata convert_hf_to_gguf.py writes for ``cfg`` (TextModel + the arch's class)."""
    import gguf

    arch = cfg.model_type
    rope = rope_parameters(cfg)
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(int(cfg.num_attention_heads))
    writer.add_head_count_kv(int(cfg.num_key_value_heads or cfg.num_attention_heads))
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    if arch != "phi3":  # Phi3MiniModel writes neither (head_dim = hidden / heads there)
        writer.add_key_length(head_dim(cfg))
        writer.add_value_length(head_dim(cfg))
    if arch == "llama":
        writer.add_vocab_size(int(cfg.vocab_size))
        writer.add_rope_dimension_count(head_dim(cfg))
    elif arch == "gemma3_text":
        writer.add_sliding_window(int(cfg.sliding_window))
        if cfg.final_logit_softcapping:
            writer.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
    elif arch == "phi3":
        rotary = float(getattr(cfg, "partial_rotary_factor", 1.0) or 1.0)
        writer.add_rope_dimension_count(int(rotary * cfg.hidden_size) // int(cfg.num_attention_heads))
        writer.add_rope_scaling_orig_ctx_len(int(getattr(cfg, "original_max_position_embeddings", None)
                                                 or cfg.max_position_embeddings))
        writer.add_sliding_window(int(cfg.sliding_window or 0))  # 0: none (Phi-4-mini)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's ``LlamaModel.permute``: each head's rows from halves to pairs.

    ``w`` is ``(n_head * head_dim, ...)``; row ``i`` of the first half of a head and row
    ``i`` of its second half become rows ``2i`` and ``2i + 1``.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute` (what a GGUF reader does to get the HF rows back)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg: Any) -> np.ndarray:
    """``rope_freqs``: the divisor of each RoPE frequency under Llama 3.x scaling.

    As LlamaModel.generate_extra_tensors, with the original context length taken from the
    RoPE parameters, as transformers computes it.
    """
    import numpy as np

    rope = rope_parameters(cfg)
    dim, base = head_dim(cfg), float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def tensors(model: Any) -> Iterator[tuple[str, np.ndarray]]:
    """``(gguf name, fp32 array)`` for every tensor of ``model`` (any of :data:`ARCHES`), in GGUF layout."""
    import gguf

    cfg = model.config
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == gguf_arch(cfg))
    names = gguf.get_tensor_name_map(arch, int(cfg.num_hidden_layers))
    n_head = int(cfg.num_attention_heads)
    n_kv_head = int(cfg.num_key_value_heads or n_head)
    if rope_parameters(cfg)["rope_type"] == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(cfg)
    state = model.state_dict()
    embed = state["model.embed_tokens.weight"]
    for hf_name, tensor in state.items():
        if hf_name.endswith(".rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and tensor.data_ptr() == embed.data_ptr():
            continue  # tied: llama.cpp reads the output projection from token_embd
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ExportError(f"GGUF export does not know where the weight {hf_name!r} goes.")
        data = tensor.detach().to("cpu").float().numpy()
        if cfg.model_type == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, n_head)
        elif cfg.model_type == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, n_kv_head)
        elif cfg.model_type == "gemma3_text" and hf_name.endswith("norm.weight"):
            data = data + 1.0  # Gemma3RMSNorm: x * (1 + w); llama.cpp: x * w
        yield new_name, data
