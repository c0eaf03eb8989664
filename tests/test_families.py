"""Today's small-model families, end to end on tiny random models with their real layer names.

GPT-2, Llama (SmolLM2, Llama 3.x), Qwen2/Qwen2.5, Qwen3, Gemma 3 (text) and Phi-3, each
2 layers with hidden size 32-64 and a 300-token byte-level BPE tokenizer, fp32 on CPU: LoRA
targets and exact trainable counts, the fused loss equal to the plain one (loss and
gradients), gradient checkpointing, a full run that reloads and resumes exactly, and a LoRA
run merged (= base + adapter) and exported to GGUF, read back with gguf.GGUFReader and
loaded back by transformers' GGUF reader to the same logits.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from doctune.errors import ExportError
from doctune.modeling import (
    apply_lora,
    count_parameters,
    default_lora_targets,
    enable_grad_checkpointing,
    load_pretrained,
)
from doctune.train.loss import causal_lm_loss, supports_fused_loss
from test_gguf_llama import bpe_tokenizer
from test_train import final_weights, make_cfg, write_docs

gguf = pytest.importorskip("gguf")

VOCAB = 300  # bpe_tokenizer's size
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               bos_token_id=0, eos_token_id=0, pad_token_id=None, initializer_range=0.1)


def _config(family: str) -> Any:
    from transformers import (
        Gemma3TextConfig,
        GPT2Config,
        LlamaConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    return {
        "gpt2": lambda: GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=VOCAB,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                   eos_token_id=0, initializer_range=0.1),
        "llama": lambda: LlamaConfig(**_COMMON, tie_word_embeddings=True),  # SmolLM2: tied, GQA
        "qwen2": lambda: Qwen2Config(**_COMMON, tie_word_embeddings=True),  # q/k/v biases
        "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16, tie_word_embeddings=True),  # q/k norms
        # Gemma 3 1B-like: 16 = head_dim, a sliding window shorter than the 32-token windows
        "gemma3": lambda: Gemma3TextConfig(**_COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=16),
        "phi3": lambda: Phi3Config(**_COMMON, original_max_position_embeddings=128, tie_word_embeddings=False),
    }[family]()


# family: (pre-tokenizer, GGUF architecture, LoRA targets, trainable parameters with r=4)
FAMILIES: dict[str, tuple[str, str, list[str], int]] = {
    # 2 layers x r=4 x sum(in + out): c_attn 32+96, attn.c_proj 32+32, c_fc 32+128, mlp.c_proj 128+32
    "gpt2": ("gpt-2", "gpt2", ["c_attn", "c_proj", "c_fc"], 2 * 4 * (128 + 64 + 160 + 160)),
    # q 64+64, k 64+32, v 64+32, o 64+64, gate 64+96, up 64+96, down 96+64
    "llama": ("smollm", "llama", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              2 * 4 * (128 + 96 + 96 + 128 + 160 + 160 + 160)),
    "qwen2": ("qwen2", "qwen2", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              2 * 4 * 928),
    "qwen3": ("qwen2", "qwen3", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              2 * 4 * 928),
    "gemma3": ("gpt-2", "gemma3", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               2 * 4 * 928),
    # qkv 64+128, o 64+64, gate_up 64+192, down 96+64
    "phi3": ("llama-bpe", "phi3", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
             2 * 4 * (192 + 128 + 256 + 160)),
}
NAMES = list(FAMILIES)
IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11, 64, 128, 200, 1]])


def build(family: str, seed: int = 0) -> Any:
    """The tiny random model of ``family`` (eval mode, fp32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family), attn_implementation="eager")
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def logits(model: torch.nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits  # (1, T, V)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_docs(tmp_path_factory.mktemp("docs"))


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny model saved with its tokenizer, like a hub model."""
    out = {}
    for family, (pre, *_) in FAMILIES.items():
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        build(family).save_pretrained(folder)
        bpe_tokenizer(pre).save_pretrained(folder)
        out[family] = folder
    return out


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 24))
    labels = ids.clone()
    labels[1, :5] = -100  # an overlap region that carries no loss
    return ids, labels


def grads_of(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------
# parts: LoRA targets, fused loss, gradient checkpointing


@pytest.mark.parametrize("family", NAMES)
def test_lora_targets_all_linear_layers(family: str) -> None:
    _, _, targets, expected = FAMILIES[family]
    model = build(family)
    assert default_lora_targets(model) == targets
    lora = apply_lora(model, r=4, alpha=8, dropout=0.0)
    trainable, _ = count_parameters(lora)
    assert trainable == expected
    assert lora.peft_config["default"].fan_in_fan_out is (family == "gpt2")  # Conv1D
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in lora.named_parameters() if "lora_A" in n}
    assert adapted == set(targets)  # every target in every layer; never the output head


@pytest.mark.parametrize("family", NAMES)
def test_fused_loss_equals_plain_loss(family: str) -> None:
    model = build(family)
    assert supports_fused_loss(model)  # so the comparison below exercises the fused path
    ids, labels = batch()
    plain = grads_of(model, lambda: causal_lm_loss(model, ids, labels)[0])
    fused = grads_of(model, lambda: causal_lm_loss(model, ids, labels, fused=True, chunk_size=7)[0])
    with torch.no_grad():
        loss_plain, n_plain = causal_lm_loss(model, ids, labels)
        loss_fused, n_fused = causal_lm_loss(model, ids, labels, fused=True, chunk_size=7)
    assert int(n_plain) == int(n_fused) == 2 * 23 - 4  # position t predicts label t + 1
    assert float(loss_fused) == pytest.approx(float(loss_plain), rel=1e-6)
    assert plain.keys() == fused.keys()
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)  # sums of ~40 terms


@pytest.mark.parametrize("family", NAMES)
def test_grad_checkpointing_same_gradients(family: str) -> None:
    ids, labels = batch()
    ref = build(family).train()
    ckpt = build(family).train()
    enable_grad_checkpointing(ckpt)
    a = grads_of(ref, lambda: causal_lm_loss(ref, ids, labels)[0])
    b = grads_of(ckpt, lambda: causal_lm_loss(ckpt, ids, labels)[0])
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------
# runs: full fine-tune (reload, resume) and LoRA (merge, GGUF)


@pytest.mark.parametrize("family", NAMES)
def test_full_run_reloads_and_resumes_exactly(family: str, family_dirs: dict[str, Path], docs: Path, tmp_path: Path) -> None:
    from doctune.inference import load_for_inference
    from doctune.train.loop import train

    model_dir = family_dirs[family]
    run = tmp_path / "run"
    res = train(make_cfg(docs, model_dir, run, "train.eval_every=0", "train.sample_every=0"), quiet=True)
    assert res.steps == 4 and res.val_loss_after is not None and res.val_loss_before is not None
    assert res.val_loss_after < res.val_loss_before
    final = load_pretrained(str(run / "final")).eval()
    from_ckpt = load_for_inference(run / "checkpoints" / "step-4", device="cpu", dtype="fp32").model
    torch.testing.assert_close(logits(final), logits(from_ckpt), rtol=0, atol=1e-6)

    # resume from step 2 in a copy of the run: the same final weights as the uninterrupted run
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    train(make_cfg(docs, model_dir, resumed, "train.eval_every=0", "train.sample_every=0"), resume=True, quiet=True)
    a, b = final_weights(run), final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


@pytest.mark.parametrize("family", NAMES)
def test_lora_run_merges_and_exports_gguf(family: str, family_dirs: dict[str, Path], docs: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from doctune.export.gguf import export_gguf
    from doctune.export.merge import merge_to_folder
    from doctune.inference import load_for_inference
    from doctune.train.loop import train

    model_dir = family_dirs[family]
    run = tmp_path / "run"
    train(make_cfg(docs, model_dir, run, "lora.enabled=true", "lora.r=4", "lora.dropout=0",
                   "train.lr=1e-2", "train.eval_every=0", "train.sample_every=0"), quiet=True)
    merged_dir = merge_to_folder(run, tmp_path / "merged").out
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    unmerged = load_for_inference(run, device="cpu", dtype="fp32").model
    base = load_pretrained(str(model_dir)).eval()
    assert (logits(merged) - logits(unmerged)).abs().max() < 1e-5
    assert (logits(merged) - logits(base)).abs().max() > 1e-3  # the adapter is not a no-op

    arch = FAMILIES[family][1]
    out = export_gguf(run, tmp_path / "gguf", quant="f32").out
    path = next(out.glob("*.gguf"))
    meta, tensors = read_gguf(path)
    assert meta["general.architecture"] == arch and meta[f"{arch}.block_count"] == 2
    assert meta["tokenizer.ggml.pre"] == FAMILIES[family][0]
    state = merged.state_dict()
    written = sum(t.n_elements for t in tensors.values())
    tied = "lm_head.weight" in state and merged.config.tie_word_embeddings
    assert written == sum(v.numel() for k, v in state.items() if not (tied and k == "lm_head.weight"))
    _check_family_tensors(family, tensors, state)
    # transformers reads the file back (undoing permutations and shifts) to the same model
    again = load_pretrained(str(path)).eval()
    assert type(again) is type(merged)
    torch.testing.assert_close(logits(again), logits(merged), rtol=0, atol=1e-4)


def _check_family_tensors(family: str, t: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """What is particular to each family's GGUF layout."""
    def arr(name: str) -> np.ndarray:
        return np.asarray(t[name].data, dtype=np.float32)

    if family == "qwen3":
        np.testing.assert_array_equal(arr("blk.1.attn_q_norm.weight"), state["model.layers.1.self_attn.q_norm.weight"])
        np.testing.assert_array_equal(arr("blk.1.attn_k_norm.weight"), state["model.layers.1.self_attn.k_norm.weight"])
    elif family == "gemma3":  # llama.cpp multiplies by w, Gemma3RMSNorm by 1 + w
        for gg, hf in [("blk.0.attn_q_norm", "model.layers.0.self_attn.q_norm"),
                       ("blk.0.post_attention_norm", "model.layers.0.post_attention_layernorm"),
                       ("blk.0.ffn_norm", "model.layers.0.pre_feedforward_layernorm"),
                       ("blk.0.post_ffw_norm", "model.layers.0.post_feedforward_layernorm"),
                       ("output_norm", "model.norm")]:
            np.testing.assert_allclose(arr(f"{gg}.weight"), state[f"{hf}.weight"].numpy() + 1, rtol=1e-6)
        assert "output.weight" not in t  # tied
    elif family == "phi3":  # fused projections stay fused
        assert [int(n) for n in t["blk.0.attn_qkv.weight"].shape] == [64, 128]
        assert [int(n) for n in t["blk.0.ffn_up.weight"].shape] == [64, 192]
        assert "output.weight" in t  # untied
    elif family == "llama":
        assert "output.weight" not in t and "blk.0.attn_q.weight" in t


def test_families_llama_cpp_cannot_run_are_errors() -> None:
    from transformers import Gemma3TextConfig, Phi3Config

    from doctune.export.gguf import check_architecture

    assert check_architecture(_config("gemma3")) == "gemma3"
    global_layer = Gemma3TextConfig(**_COMMON, head_dim=16, query_pre_attn_scalar=16,
                                    layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(ExportError, match=r"gemma3_text .*layer types.*5 sliding-window layers"):
        check_architecture(global_layer)
    with pytest.raises(ExportError, match=r"query_pre_attn_scalar=64 \(llama.cpp: 16\)"):
        check_architecture(Gemma3TextConfig(**_COMMON, head_dim=16, query_pre_attn_scalar=64))
    longrope = {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [1.0] * 8,
                "short_factor": [1.0] * 8, "original_max_position_embeddings": 64}
    with pytest.raises(ExportError, match=r"phi3 .*RoPE scaling 'longrope'"):
        check_architecture(Phi3Config(**_COMMON, rope_parameters=longrope))
    from transformers import GPTNeoXConfig

    with pytest.raises(ExportError, match=r"this model is 'gpt_neox'.*convert_hf_to_gguf.py"):
        check_architecture(GPTNeoXConfig())


def test_dora_trains_magnitudes_too() -> None:
    model = build("llama")
    dora = apply_lora(model, r=4, alpha=8, dropout=0.0, dora=True)
    trainable, _ = count_parameters(dora)
    # LoRA's A and B, plus one magnitude per output row of each adapted layer:
    # q 64 + k 32 + v 32 + o 64 + gate 96 + up 96 + down 64 = 448 per layer
    assert trainable == FAMILIES["llama"][3] + 2 * 448
    assert dora.peft_config["default"].use_dora is True
    ids, labels = batch()
    grads = grads_of(dora, lambda: causal_lm_loss(dora, ids, labels)[0])
    assert any("lora_magnitude_vector" in n for n in grads)
