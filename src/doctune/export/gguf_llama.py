"""GGUF for Llama-family models: ``llama`` (SmolLM/SmolLM2, Llama 3) and ``qwen2`` (Qwen2, Qwen2.5).

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` (classes ``TextModel``,
``LlamaModel`` and ``Qwen2Model``):

* llama.cpp's ``llama`` graph rotates adjacent pairs of each head (GGML's "normal" RoPE),
  while transformers rotates the two halves of a head against each other; so the rows of
  ``q_proj`` and ``k_proj`` (weights and biases) are permuted head by head
  (:func:`permute`), ``k_proj`` with the key/value head count (GQA). ``qwen2`` uses the
  "neox" RoPE, which is transformers' own, so its weights go in unchanged.
* Tied input/output embeddings are written once, as ``token_embd.weight``; llama.cpp uses
  it for the output when no ``output.weight`` is present. Untied models get ``output.weight``.
* Llama 3.x RoPE scaling (``rope_type: llama3``) becomes the ``rope_freqs`` tensor of
  per-frequency divisors; linear scaling becomes ``rope.scaling.*`` metadata.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from doctune.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

ARCHES = ("llama", "qwen2")
_ROPE_TYPES = {"llama": ("default", "llama3", "linear"), "qwen2": ("default",)}


def rope_parameters(cfg: Any) -> dict[str, Any]:
    """RoPE type, theta and scaling of ``cfg``, across transformers versions.

    transformers 5 keeps them in ``rope_parameters``; 4.x in ``rope_theta`` + ``rope_scaling``.
    """
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.get("type")) or "default"
    return params


def head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def check_config(cfg: Any) -> None:
    """Raise :class:`ExportError` unless llama.cpp computes the ``llama``/``qwen2`` ``cfg`` exactly."""
    arch = cfg.model_type
    problems = []
    if getattr(cfg, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={cfg.hidden_act!r} (llama.cpp uses SiLU)")
    rope = rope_parameters(cfg)
    if rope["rope_type"] not in _ROPE_TYPES[arch]:
        problems.append(f"RoPE scaling {rope['rope_type']!r} (supported for {arch}: "
                        f"{', '.join(_ROPE_TYPES[arch])})")
    if getattr(cfg, "use_sliding_window", False):
        problems.append("sliding-window attention")
    if problems:
        raise ExportError(f"This {arch} model cannot be exported to GGUF faithfully: "
                          f"{'; '.join(problems)}. Use `--format hf` and llama.cpp's "
                          "convert_hf_to_gguf.py instead.")


def add_hparams(writer: Any, cfg: Any) -> None:
    """The model metadata convert_hf_to_gguf.py writes for ``cfg`` (TextModel + LlamaModel)."""
    import gguf

    rope = rope_parameters(cfg)
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(int(cfg.num_attention_heads))
    writer.add_head_count_kv(int(cfg.num_key_value_heads or cfg.num_attention_heads))
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_key_length(head_dim(cfg))
    writer.add_value_length(head_dim(cfg))
    if cfg.model_type == "llama":
        writer.add_vocab_size(int(cfg.vocab_size))
        writer.add_rope_dimension_count(head_dim(cfg))
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
    """``(gguf name, fp32 array)`` for every tensor of the Llama/Qwen2 ``model``, in GGUF layout."""
    import gguf

    cfg = model.config
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[cfg.model_type]
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
        yield new_name, data
