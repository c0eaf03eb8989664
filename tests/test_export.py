"""Export: a GGUF file read back with gguf.GGUFReader, the Modelfile, the errors, the CLI.

The comparison with llama.cpp itself (logits and greedy text) is the slow test at the end,
which runs where llama-cpp-python is installed; `benchmarks/check_gguf.py` prints the numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from doctune.cli import app
from doctune.errors import ExportError
from doctune.export.gguf import export_gguf
from runfolders import lora_model, shared_run

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    return shared_run("lora", tmp_path_factory, tiny_gpt2_dir)


@pytest.fixture(scope="module")
def merged_state(tiny_gpt2_dir: Path) -> dict[str, np.ndarray]:
    model = lora_model(tiny_gpt2_dir).merge_and_unload()
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _reader(out: Path, quant: str) -> object:
    return gguf.GGUFReader(str(out / f"lora-{quant}.gguf"))


def _field(reader: object, key: str) -> object:
    return reader.fields[key].contents()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def f16_dir(lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "gguf"
    result = export_gguf(lora_run, out, quant="f16")
    assert result.merged_lora and {p.name for p in result.files} == {"lora-f16.gguf", "Modelfile", "README.md"}
    return out


@pytest.fixture(scope="module")
def f16(f16_dir: Path) -> object:
    return _reader(f16_dir, "f16")  # parsing 100k tokenizer strings takes seconds: read once


def test_gguf_metadata_and_tokenizer(f16: object) -> None:
    r = f16
    expected = {"general.architecture": "gpt2", "general.type": "model", "gpt2.block_count": 2,
                "gpt2.context_length": 256, "gpt2.embedding_length": 32,
                "gpt2.feed_forward_length": 128, "gpt2.attention.head_count": 2,
                "general.file_type": 1, "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.eos_token_id": 50256,
                "tokenizer.ggml.bos_token_id": 50256, "tokenizer.ggml.add_bos_token": False}
    for key, value in expected.items():
        assert _field(r, key) == value, key
    assert _field(r, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 50257 and tokens[15496] == "Hello" and tokens[995] == "Ġworld"
    assert tokens[50256] == "<|endoftext|>"
    types = _field(r, "tokenizer.ggml.token_type")
    assert types[50256] == gguf.TokenType.CONTROL and types[15496] == gguf.TokenType.NORMAL
    merges = _field(r, "tokenizer.ggml.merges")
    assert len(merges) == 50000 and merges[0] == "Ġ t"


def test_gguf_tensors_f16(f16: object, merged_state: dict[str, np.ndarray]) -> None:
    tensors = {t.name: t for t in f16.tensors}  # type: ignore[attr-defined]
    per_block = ["attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias",
                 "attn_output.weight", "attn_output.bias", "ffn_norm.weight", "ffn_norm.bias",
                 "ffn_up.weight", "ffn_up.bias", "ffn_down.weight", "ffn_down.bias"]
    names = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias",
             *(f"blk.{i}.{n}" for i in range(2) for n in per_block)}
    assert set(tensors) == names  # no output.weight: tied to token_embd, as llama.cpp expects
    # ggml shapes list the fastest dimension first: (n_embd, n_out) for a [n_out, n_embd] matrix.
    shapes = {"token_embd.weight": [32, 50257], "position_embd.weight": [32, 256],
              "blk.0.attn_qkv.weight": [32, 96], "blk.0.attn_output.weight": [32, 32],
              "blk.0.ffn_up.weight": [32, 128], "blk.0.ffn_down.weight": [128, 32],
              "blk.1.attn_qkv.bias": [96]}
    for name, shape in shapes.items():
        assert [int(n) for n in tensors[name].shape] == shape, name
    q = gguf.GGMLQuantizationType
    assert tensors["blk.0.attn_qkv.weight"].tensor_type == q.F16
    assert tensors["position_embd.weight"].tensor_type == q.F32
    assert tensors["blk.0.attn_norm.weight"].tensor_type == q.F32
    # Conv1D [in, out] transposed to [out, in]; the merged LoRA delta is in it.
    qkv = np.asarray(tensors["blk.1.attn_qkv.weight"].data, dtype=np.float32)
    np.testing.assert_allclose(qkv, merged_state["transformer.h.1.attn.c_attn.weight"].T, atol=1e-3)
    down = np.asarray(tensors["blk.0.ffn_down.weight"].data, dtype=np.float32)
    np.testing.assert_allclose(down, merged_state["transformer.h.0.mlp.c_proj.weight"].T, atol=1e-3)


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2 like doctune's scratch presets: its own small BPE tokenizer, tanh GELU."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from doctune.modeling import train_tokenizer

    text = ["Install the package with pip, then run the command on your docs folder."] * 20
    tok = train_tokenizer(text, vocab_size=300)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=64, n_head=2, n_positions=64, vocab_size=len(tok),
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     activation_function="gelu_pytorch_tanh")
    out = tmp_path_factory.mktemp("scratch")
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_gguf_q8_0_scratch_tokenizer(scratch_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_gguf(scratch_dir, tmp_path / "out", quant="q8_0")
    r = gguf.GGUFReader(str(next(p for p in result.files if p.suffix == ".gguf")))
    tok = AutoTokenizer.from_pretrained(scratch_dir)
    assert _field(r, "general.file_type") == 7
    assert _field(r, "tokenizer.ggml.eos_token_id") == tok.eos_token_id == 0
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert tokens == [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    assert tokens[0] == "<|endoftext|>" and _field(r, "tokenizer.ggml.token_type")[0] == gguf.TokenType.CONTROL
    assert len(_field(r, "tokenizer.ggml.merges")) == len(tokens) - 257  # 256 bytes + EOS, then merges
    t = {t.name: t for t in r.tensors}  # type: ignore[attr-defined]
    q = gguf.GGMLQuantizationType
    assert t["blk.0.attn_qkv.weight"].tensor_type == q.Q8_0 and t["token_embd.weight"].tensor_type == q.Q8_0
    assert t["blk.0.attn_qkv.bias"].tensor_type == q.F32 and t["position_embd.weight"].tensor_type == q.F32
    model = AutoModelForCausalLM.from_pretrained(scratch_dir, dtype=torch.float32)
    ref = model.transformer.h[0].mlp.c_fc.weight.detach().numpy().T  # Conv1D [in, out] -> [out, in]
    w = gguf.quants.dequantize(t["blk.0.ffn_up.weight"].data, q.Q8_0)
    assert w.shape == ref.shape == (256, 64)
    assert np.abs(w - ref).max() < np.abs(ref).max() / 127  # Q8_0: 8 bits per block of 32


def test_modelfile_and_card(f16_dir: Path) -> None:
    text = (f16_dir / "Modelfile").read_text()
    assert "FROM ./lora-f16.gguf\n" in text
    assert 'TEMPLATE """{{ .Prompt }}"""' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER num_ctx 256" in text and "PARAMETER temperature 0.8" in text
    card = (f16_dir / "README.md").read_text()
    assert "ollama create" in card and "llama-cli -m" in card and "| validation perplexity after | 24.53 |" in card


def test_unknown_architecture(tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    folder = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=50257, hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                             num_attention_heads=2, word_embed_proj_dim=16)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gpt2_tokenizer_dir).save_pretrained(folder)
    with pytest.raises(ExportError) as e:
        export_gguf(folder, tmp_path / "out")
    msg = str(e.value)
    assert "'opt'" in msg and "GPT-2" in msg and "Llama" in msg and "Qwen2" in msg
    assert "--format hf" in msg and "convert_hf_to_gguf.py" in msg
    assert not (tmp_path / "out").exists()


def test_missing_gguf_package(lora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ExportError, match=r'pip install "doctune\[gguf\]"'):
        export_gguf(lora_run, tmp_path / "out")


def test_cli_export(lora_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["export", str(lora_run), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    assert "hf upload YOUR-NAME/hf" in r.stdout and (tmp_path / "hf" / "model.safetensors").is_file()
    r = runner.invoke(app, ["export", str(lora_run), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "gguf or hf" in r.stderr
    r = runner.invoke(app, ["export", str(lora_run), "--format", "hf", "--quant", "q8_0", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--quant applies to --format gguf" in r.stderr
    r = runner.invoke(app, ["export", str(lora_run), "--quant", "q4", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "f16, q8_0, f32" in r.stderr


@pytest.mark.slow
def test_llama_cpp_matches_transformers(f16_dir: Path, lora_run: Path) -> None:
    """llama.cpp's next-token logits and greedy text equal the transformers model's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from doctune.inference import load_for_inference

    hf = load_for_inference(lora_run, device="cpu", dtype="fp32", merge=True)
    ids = hf.tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    with torch.no_grad():
        ref = hf.model(input_ids=torch.tensor([ids])).logits[0].numpy()  # (T, V)
    llm = llama_cpp.Llama(str(f16_dir / "lora-f16.gguf"), n_ctx=64, logits_all=True, verbose=False,
                          n_threads=1)
    assert llm.tokenize(b"The quick brown fox jumps over the lazy dog.", add_bos=False) == ids
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert np.abs(got - ref).max() < 5e-3
    greedy = hf.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                               pad_token_id=50256)[0, len(ids):].tolist()
    llm.reset()
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(tok)
        if len(out) == 8:
            break
    llm.close()
    assert out == greedy
