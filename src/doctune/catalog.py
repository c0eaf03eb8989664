"""Today's small open models by shape: the values of their published ``config.json``.

What ``doctune plan --machine`` plans for and ``benchmarks/bench_models.py`` builds (random
weights of the real shape; speed and memory depend on the shape, not on the weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spec:
    """A model of the table: its hub id, license, published size and ``config.json`` values."""

    hub: str
    license: str
    published: float
    """Parameters as the model card gives them (the built model must be within 2%)."""
    config: dict[str, Any]


def _gemma3_layers(n: int) -> list[str]:
    """Gemma 3's attention pattern: five sliding-window layers, then one global, repeated."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
_GEMMA3 = {"model_type": "gemma3_text", "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
           "vocab_size": 262144, "tie_word_embeddings": True, "max_position_embeddings": 32768,
           "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
           "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"}

# Values of each model's config.json on the hub (the fields that set its shape and compute).
MODELS: dict[str, Spec] = {
    "smollm2-135m": Spec("HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0", 134.5e6, {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5}),
    "smollm2-360m": Spec("HuggingFaceTB/SmolLM2-360M-Instruct", "Apache-2.0", 361.8e6, {
        "model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
        "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "vocab_size": 49152,
        "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5}),
    "smollm2-1.7b": Spec("HuggingFaceTB/SmolLM2-1.7B-Instruct", "Apache-2.0", 1.71e9, {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
        "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64, "vocab_size": 49152,
        "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 130000.0,
        "rms_norm_eps": 1e-5}),
    "qwen2.5-0.5b": Spec("Qwen/Qwen2.5-0.5B-Instruct", "Apache-2.0", 0.49e9, {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "qwen2.5-1.5b": Spec("Qwen/Qwen2.5-1.5B-Instruct", "Apache-2.0", 1.54e9, {
        "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "qwen3-0.6b": Spec("Qwen/Qwen3-0.6B", "Apache-2.0", 0.6e9, {
        "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "qwen3-1.7b": Spec("Qwen/Qwen3-1.7B", "Apache-2.0", 1.7e9, {
        "model_type": "qwen3", "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "llama-3.2-1b": Spec("meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 Community License", 1.23e9, {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
        "tie_word_embeddings": True, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": _LLAMA3_ROPE, "rms_norm_eps": 1e-5}),
    "gemma-3-270m": Spec("google/gemma-3-270m-it", "Gemma Terms of Use", 268e6, {
        **_GEMMA3, "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
        "layer_types": _gemma3_layers(18)}),
    "gemma-3-1b": Spec("google/gemma-3-1b-it", "Gemma Terms of Use", 1.0e9, {
        **_GEMMA3, "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
        "layer_types": _gemma3_layers(26)}),
    "llama-3.2-3b": Spec("meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 Community License", 3.21e9, {
        "model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
        "tie_word_embeddings": True, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": _LLAMA3_ROPE, "rms_norm_eps": 1e-5}),
    "qwen2.5-3b": Spec("Qwen/Qwen2.5-3B-Instruct", "Qwen Research License", 3.09e9, {
        "model_type": "qwen2", "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "qwen3-4b": Spec("Qwen/Qwen3-4B", "Apache-2.0", 4.02e9, {
        "model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "qwen2.5-7b": Spec("Qwen/Qwen2.5-7B-Instruct", "Apache-2.0", 7.62e9, {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "tie_word_embeddings": False, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6}),
    "llama-3.1-8b": Spec("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 Community License", 8.03e9, {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
        "tie_word_embeddings": False, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0}, "rms_norm_eps": 1e-5}),
}
