"""Model loading and LoRA set-up: presets, offline errors, per-architecture targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from doctune.errors import ConfigError, ModelError
from doctune.modeling import (
    apply_lora,
    build_scratch_model,
    count_parameters,
    default_lora_targets,
    enable_grad_checkpointing,
    load_pretrained,
    train_tokenizer,
)

TEXTS = [f"# Page {i}\n\nInstall the package, then run the build command for page {i}.\n" for i in range(50)]


def test_offline_hub_id_names_the_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        load_pretrained("doctune-test/does-not-exist")
    msg = str(e.value)
    assert "could not be downloaded" in msg and "local folder" in msg and "scratch:tiny" in msg


def test_local_folder_without_config_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_pretrained(str(tmp_path))


def test_local_folder_loads_with_fused_gelu(tiny_gpt2_dir: Path) -> None:
    model = load_pretrained(str(tiny_gpt2_dir))
    assert model.config.activation_function == "gelu_pytorch_tanh"
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    ids = torch.tensor([[15496, 995, 11, 290]])
    with torch.no_grad():  # gelu_new and the fused tanh GELU are the same function
        torch.testing.assert_close(model.eval()(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)


def test_scratch_preset_with_trained_tokenizer() -> None:
    tok = train_tokenizer(TEXTS, vocab_size=400)
    assert tok.eos_token == "<|endoftext|>"
    assert tok.decode(tok("Install the package")["input_ids"]) == "Install the package"
    model = build_scratch_model("scratch:tiny", tok, block_size=128)
    assert model.config.vocab_size == len(tok)
    assert (model.config.n_layer, model.config.n_embd) == (4, 192)
    with pytest.raises(ConfigError, match="scratch:tiny, scratch:small"):
        build_scratch_model("scratch:huge", tok, block_size=128)


def test_lora_targets_per_architecture() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=100))
    assert default_lora_targets(llama) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = apply_lora(llama, r=4, alpha=8, dropout=0.0)
    assert peft_model.peft_config["default"].fan_in_fan_out is False
    trainable, _ = count_parameters(peft_model)
    # 2 layers x (q, k, v, o: 32 -> 32; gate, up: 32 -> 64; down: 64 -> 32), A (r x in) + B (out x r)
    assert trainable == 2 * (4 * (32 * 4 + 4 * 32) + 2 * (32 * 4 + 4 * 64) + (64 * 4 + 4 * 32)) == 4352
    enable_grad_checkpointing(peft_model)
    base = peft_model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.model.gradient_checkpointing


def test_lora_rejects_unknown_and_mixed_targets(tiny_gpt2_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"match no layer.*c_attn"):
        apply_lora(load_pretrained(str(tiny_gpt2_dir)), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    with pytest.raises(ConfigError, match="mix Conv1D and Linear"):
        apply_lora(load_pretrained(str(tiny_gpt2_dir)), r=2, alpha=4, dropout=0.0,
                   target_modules=["c_attn", "lm_head"])
