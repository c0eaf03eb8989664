"""GGUF export of Llama-family models (llama, qwen2), read back with gguf.GGUFReader.

Tiny models from a config (random weights) with small byte-level BPE tokenizers trained
here, one per pre-tokenizer llama.cpp knows. What llama.cpp itself computes from such
files is the slow test at the end (F32, to 1e-3), which runs where llama-cpp-python is
installed; `benchmarks/check_gguf.py` compares trained models in F16 and Q8_0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from doctune.errors import ExportError
from doctune.export.gguf import check_architecture, export_gguf, modelfile, write_gguf
from doctune.export.gguf_llama import permute, unpermute
from doctune.export.gguf_vocab import (
    LLAMA3_REGEX,
    QWEN2_REGEX,
    check_hash,
    pre_tokenizer_name,
    tokenizer_fields,
)

gguf = pytest.importorskip("gguf")

TEXT = ["Install the package with pip 3.11, then run `doctune train` on your docs folder.\n",
        "It's 2024: we've 12 guides and they'll run in 5 minutes.\n\n  Indented code, too."] * 20


def bpe_tokenizer(kind: str, *, ignore_merges: bool | None = None) -> Any:
    """A 300-token byte-level BPE trained on TEXT with the pre-tokenizer of ``kind``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    pre = {"gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False),
           "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False)]),
           "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), "isolated"), byte_level]),
           "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), "isolated"), byte_level]),
           "whitespace": pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), byte_level])}[kind]
    ignore = kind == "llama-bpe" if ignore_merges is None else ignore_merges
    tok = Tokenizer(models.BPE(ignore_merges=ignore))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def llama_model(vocab_size: int, **overrides: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    kw: dict[str, Any] = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                              rms_norm_eps=1e-5, rope_theta=50000.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**(kw | overrides))).eval()


def read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, tensors by name) of a GGUF file."""
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def array(t: Any) -> np.ndarray:
    if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
        return gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(t.data, dtype=np.float32)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untied, GQA Llama saved with a Llama 3 style tokenizer, like a hub model."""
    tok = bpe_tokenizer("llama-bpe")
    out = tmp_path_factory.mktemp("tiny-llama")
    llama_model(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama_gguf(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = export_gguf(llama_dir, tmp_path_factory.mktemp("exports") / "gguf", quant="f16")
    return next(p for p in result.files if p.suffix == ".gguf")


def test_llama_metadata(llama_gguf: Path) -> None:
    meta, _ = read(llama_gguf)
    expected = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 128,
                "llama.embedding_length": 64, "llama.feed_forward_length": 96,
                "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                "llama.attention.key_length": 16, "llama.attention.value_length": 16,
                "llama.rope.dimension_count": 16, "llama.vocab_size": 300, "general.file_type": 1}
    for key, value in expected.items():
        assert meta[key] == value, key
    assert meta["llama.rope.freq_base"] == pytest.approx(50000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert "llama.rope.scaling.type" not in meta


def test_llama_modelfile(llama_gguf: Path) -> None:
    text = (llama_gguf.parent / "Modelfile").read_text()
    assert f"FROM ./{llama_gguf.name}\n" in text and "PARAMETER num_ctx 128\n" in text
    assert 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER num_ctx 8192\n" in modelfile("m.gguf", num_ctx=131072, stop=None)  # Llama 3.2


def test_llama_tokenizer_fields(llama_gguf: Path, llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    meta, _ = read(llama_gguf)
    tok = AutoTokenizer.from_pretrained(llama_dir)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert meta["tokenizer.ggml.tokens"] == [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    assert meta["tokenizer.ggml.token_type"][0] == gguf.TokenType.CONTROL  # <|endoftext|>
    assert set(meta["tokenizer.ggml.token_type"][1:]) == {gguf.TokenType.NORMAL}
    assert len(meta["tokenizer.ggml.merges"]) == 300 - 257  # 256 bytes + EOS, then one token per merge
    assert meta["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.bos_token_id"] == 0
    assert meta["tokenizer.ggml.add_bos_token"] is False  # as doctune trains and generates


def test_llama_tensors_unpermute_to_hf(llama_gguf: Path, llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    _, t = read(llama_gguf)
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    assert set(t) == {"token_embd.weight", "output_norm.weight", "output.weight",  # untied: own output
                      *(f"blk.{i}.{n}.weight" for i in range(2) for n in per_block)}
    # ggml lists the fastest dimension first: (in, out) for a [out, in] matrix.
    shapes = {"token_embd.weight": [64, 300], "output.weight": [64, 300], "blk.0.attn_q.weight": [64, 64],
              "blk.0.attn_k.weight": [64, 32], "blk.0.attn_v.weight": [64, 32], "blk.0.ffn_gate.weight": [64, 96],
              "blk.0.ffn_down.weight": [96, 64], "blk.1.attn_norm.weight": [64]}
    for name, shape in shapes.items():
        assert [int(n) for n in t[name].shape] == shape, name
    q = gguf.GGMLQuantizationType
    assert t["blk.0.attn_q.weight"].tensor_type == q.F16 and t["token_embd.weight"].tensor_type == q.F16
    assert t["blk.0.attn_norm.weight"].tensor_type == q.F32 and t["output_norm.weight"].tensor_type == q.F32
    hf = {k: v.numpy() for k, v in AutoModelForCausalLM.from_pretrained(llama_dir).state_dict().items()}
    wq, wk = array(t["blk.1.attn_q.weight"]), array(t["blk.1.attn_k.weight"])
    assert np.abs(wq - hf["model.layers.1.self_attn.q_proj.weight"]).max() > 0.01  # permuted...
    np.testing.assert_allclose(unpermute(wq, 4), hf["model.layers.1.self_attn.q_proj.weight"], atol=1e-3)
    np.testing.assert_allclose(unpermute(wk, 2), hf["model.layers.1.self_attn.k_proj.weight"], atol=1e-3)  # kv heads
    np.testing.assert_allclose(array(t["blk.1.attn_v.weight"]), hf["model.layers.1.self_attn.v_proj.weight"], atol=1e-3)
    np.testing.assert_allclose(array(t["output.weight"]), hf["lm_head.weight"], atol=1e-3)


def test_permute_pairs_the_halves_of_each_head() -> None:
    rows = np.arange(8, dtype=np.float32)[:, None]  # 2 heads of dim 4: halves (0,1|2,3), (4,5|6,7)
    assert permute(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    np.testing.assert_array_equal(unpermute(permute(rows, 2), 2), rows)


def test_llama_tied_biases_llama3_rope_q8_0(tmp_path: Path) -> None:
    tok = bpe_tokenizer("smollm")
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = llama_model(len(tok), tie_word_embeddings=True, attention_bias=True, hidden_size=128, intermediate_size=80,
                        num_attention_heads=4, num_key_value_heads=4, rope_parameters=rope)
    notes = write_gguf(model, tok, tmp_path / "m.gguf", quant="q8_0")
    meta, t = read(tmp_path / "m.gguf")
    assert meta["tokenizer.ggml.pre"] == "smollm" and meta["general.file_type"] == 7
    assert "output.weight" not in t  # tied: llama.cpp re-uses token_embd
    assert notes == ["blk.0.ffn_down.weight kept in F16 (80 columns is not a multiple of 32)",
                     "blk.1.ffn_down.weight kept in F16 (80 columns is not a multiple of 32)"]
    q = gguf.GGMLQuantizationType
    assert t["blk.0.attn_q.weight"].tensor_type == q.Q8_0 and t["blk.0.ffn_down.weight"].tensor_type == q.F16
    assert t["blk.0.attn_q.bias"].tensor_type == q.F32 and t["rope_freqs.weight"].tensor_type == q.F32
    state = model.state_dict()
    for proj in ("q_proj", "k_proj"):
        gguf_name = f"blk.0.attn_{proj[0]}.bias"
        np.testing.assert_allclose(unpermute(array(t[gguf_name]), 4), state[f"model.layers.0.self_attn.{proj}.bias"])
    ref = state["model.layers.0.self_attn.o_proj.weight"].numpy()
    assert np.abs(array(t["blk.0.attn_output.weight"]) - ref).max() < np.abs(ref).max() / 127
    # rope_freqs divides each default frequency into the one transformers uses for llama3.
    dim = 32
    default = 1.0 / 500000.0 ** (np.arange(0, dim, 2) / dim)
    llama3 = model.model.rotary_emb.inv_freq.double().numpy()
    np.testing.assert_allclose(array(t["rope_freqs.weight"]), default / llama3, rtol=1e-5)
    assert array(t["rope_freqs.weight"]).min() == 1.0 and array(t["rope_freqs.weight"]).max() == pytest.approx(8.0)


def test_qwen2_biases_unpermuted(tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = bpe_tokenizer("qwen2")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, tie_word_embeddings=True)).eval()
    write_gguf(model, tok, tmp_path / "q.gguf", quant="f32")
    meta, t = read(tmp_path / "q.gguf")
    assert meta["general.architecture"] == "qwen2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["qwen2.attention.head_count_kv"] == 2 and meta["qwen2.context_length"] == 256
    assert meta["qwen2.rope.freq_base"] == pytest.approx(10000.0) and "qwen2.vocab_size" not in meta
    assert set(t) == {"token_embd.weight", "output_norm.weight",
                      *(f"blk.0.{n}" for n in ["attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight",
                                               "attn_k.bias", "attn_v.weight", "attn_v.bias", "attn_output.weight",
                                               "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"])}
    state = model.state_dict()  # neox RoPE, as transformers: q and k go in as they are
    np.testing.assert_array_equal(array(t["blk.0.attn_q.weight"]), state["model.layers.0.self_attn.q_proj.weight"])
    np.testing.assert_array_equal(array(t["blk.0.attn_k.bias"]), state["model.layers.0.self_attn.k_proj.bias"])


def test_added_tokens_and_padded_vocab() -> None:
    from tokenizers import AddedToken

    tok = bpe_tokenizer("qwen2")
    tok.add_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|tool|>", special=False),
                    AddedToken("doctune", special=False)])
    fields = tokenizer_fields(tok, 310)  # embedding rows padded past the 303 tokens, as Qwen2.5's
    t, types = fields["tokens"], fields["types"]
    assert t[300:] == ["<|im_start|>", "<|tool|>", "doctune", *(f"[PAD{i}]" for i in range(303, 310))]
    assert types[300:303] == [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED]
    assert set(types[303:]) == {gguf.TokenType.UNUSED} and fields["pre"] == "qwen2"
    with pytest.raises(ExportError, match="ids up to 302, but the model's embedding has only 300 rows"):
        tokenizer_fields(tok, 300)


@pytest.mark.parametrize("kind", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_pre_tokenizer_recognised_from_tokenizer_json(kind: str) -> None:
    assert pre_tokenizer_name(bpe_tokenizer(kind)) == kind


def test_pre_tokenizer_by_llama_cpp_hash(gpt2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    # The value in convert_hf_to_gguf.py for openai-community/gpt2: CHKTXT is copied exactly.
    assert check_hash(tok) == "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454"
    assert pre_tokenizer_name(tok) == "gpt-2"


def test_unknown_pre_tokenizers_are_errors() -> None:
    with pytest.raises(ExportError, match=r"no pre-tokenizer known .*WhitespaceSplit \+ ByteLevel.*hash [0-9a-f]{64}"):
        pre_tokenizer_name(bpe_tokenizer("whitespace"))
    # llama.cpp always skips merges for whole-word vocabulary hits under the Llama 3 regex;
    # a tokenizer that does not would tokenize some words differently.
    with pytest.raises(ExportError, match="no pre-tokenizer known"):
        pre_tokenizer_name(bpe_tokenizer("llama-bpe", ignore_merges=False))


def test_sentencepiece_tokenizer_is_an_error() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sp = Tokenizer(models.BPE(vocab={"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581a": 3}, merges=[],
                              byte_fallback=True, unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=sp, eos_token="</s>")
    with pytest.raises(ExportError, match=r"SentencePiece-style tokenizer .*--format hf"):
        pre_tokenizer_name(tok)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                          "original_max_position_embeddings": 64}}, "RoPE scaling 'yarn'"),
])
def test_llama_variants_llama_cpp_cannot_run(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportError, match=f"This llama model cannot be exported.*{message}.*--format hf"):
        check_architecture(llama_model(300, **overrides).config)


def test_qwen2_sliding_window_is_an_error() -> None:
    from transformers import Qwen2Config

    cfg = Qwen2Config(num_hidden_layers=1, use_sliding_window=True, sliding_window=64, max_window_layers=0)
    with pytest.raises(ExportError, match=r"qwen2 .*sliding-window attention"):
        check_architecture(cfg)


def _qwen2(vocab_size: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=128, tie_word_embeddings=True,
                                        initializer_range=0.3, eos_token_id=0)).eval()


def _family(family: str) -> Any:
    """Qwen3, Gemma 3 and Phi-3 from tests/test_families.py (random, non-trivial norms)."""
    def build(vocab_size: int) -> Any:
        from test_families import build as build_family

        assert vocab_size == 300
        model = build_family(family)
        with torch.no_grad():  # matrices as with initializer_range=0.3: logits far from uniform
            for p in model.parameters():
                if p.ndim == 2:
                    p.mul_(3.0)
        return model

    return build


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
VARIANTS = {
    "llama-gqa-untied": ("llama-bpe", lambda n: llama_model(n, initializer_range=0.3)),
    "llama-tied-biases-llama3-rope": ("smollm", lambda n: llama_model(
        n, initializer_range=0.3, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
        rope_parameters=LLAMA3_ROPE)),
    "llama-linear-rope": ("gpt-2", lambda n: llama_model(
        n, initializer_range=0.3, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})),
    "llama-head-dim-32": ("llama-bpe", lambda n: llama_model(n, initializer_range=0.3, head_dim=32)),  # 4 x 32 > 64
    "qwen2": ("qwen2", _qwen2),
    "qwen3": ("qwen2", _family("qwen3")),  # q/k norms, head_dim given
    "gemma3": ("gpt-2", _family("gemma3")),  # norms + 1, scaled embeddings, 16-token sliding window
    "phi3": ("llama-bpe", _family("phi3")),  # fused qkv and gate_up
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_cpp_computes_the_same_logits(variant: str, tmp_path: Path) -> None:
    """With F32 weights and an F32 KV cache, llama.cpp's logits equal transformers' to ~1e-4."""
    llama_cpp = pytest.importorskip("llama_cpp")
    pre, build = VARIANTS[variant]
    tok = bpe_tokenizer(pre)
    model = build(len(tok))
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    write_gguf(model, tok, tmp_path / "m.gguf", quant="f32")
    text = TEXT[1] + TEXT[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()  # (T, V)
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=128, logits_all=True, verbose=False,
                          n_threads=1, type_k=0, type_v=0)  # 0: GGML_TYPE_F32
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert ref.max() - ref.min() > 10  # logits far from uniform
    # ggml's GELU (Gemma 3's MLP) reads tanh from an fp16 table: ~1e-3 on logits ranging ~30
    limit = 2.5e-3 if variant == "gemma3" else 1e-3
    assert np.abs(got - ref).max() < limit


def test_cli_export_llama_and_tokenizer_error(llama_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from doctune.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["export", str(llama_dir), "--quant", "q8_0", "--out", str(tmp_path / "ok")])
    assert r.exit_code == 0, r.output
    assert f"{llama_dir.name}-q8_0.gguf" in r.stdout and "ollama create" in r.stdout
    folder = tmp_path / "whitespace-llama"
    tok = bpe_tokenizer("whitespace")
    llama_model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    r = runner.invoke(app, ["export", str(folder), "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "no pre-tokenizer known" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "bad").exists()
