"""The frozen base in bf16 and in 4/8 bits (``model.base_dtype``, ``lora.quantize``).

Tiny Llama/Qwen2/Gemma 3/GPT-2 models of ``test_families`` on CPU under bf16 autocast:

* a bf16 base computes the fp32 base's loss and LoRA gradients bit for bit when its weights
  are bf16 numbers (every bf16 hub checkpoint); from an fp32 checkpoint the embeddings are
  rounded, which moves the loss by < 5e-4 relative (measured 2e-4) and the LoRA gradients by
  < 5% (measured <= 3.5%, on random weights where the loss is a sum over 44 tokens);
* an NF4 base computes exactly what a dense base holding the dequantised weights computes;
* LoRA weights, gradients and AdamW state stay fp32 on either;
* a QLoRA run merges into dequantised base + adapter, and loads back for inference with its
  base quantised as in training (the same logits as the merged model).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from doctune.config import Config
from doctune.errors import ConfigError
from doctune.modeling import apply_lora
from doctune.quantize import (
    NF4_BLOCK,
    BaseFormat,
    base_format,
    cast_base,
    dequantize_base,
    dequantize_int4,
    is_int4,
    is_quantized,
    nf4_scaler_block,
    prepare_base,
    quantize_int4,
    quantize_linears,
    to_nf4,
)
from doctune.train.loss import causal_lm_loss
from test_families import batch, build
from test_gguf_llama import bpe_tokenizer
from test_train import make_cfg, write_docs

pytest.importorskip("torchao")
CPU = torch.device("cpu")


def lora(model: torch.nn.Module) -> torch.nn.Module:
    """LoRA r=4 with a fixed, non-zero B (so that A's gradients are not zero either)."""
    torch.manual_seed(3)
    peft = apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return peft


def loss_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, labels = batch()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = causal_lm_loss(model, ids, labels, fused=True)[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def round_to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """Every weight made a bf16 number, kept in fp32: what loading a bf16 checkpoint gives."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gpt2"])
def test_bf16_base_equals_fp32_base_under_autocast(family: str) -> None:
    fp32 = round_to_bf16(build(family))
    bf16 = copy.deepcopy(fp32)
    cast_base(bf16, "bf16")
    a, b = lora(fp32), lora(bf16)
    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(a), loss_and_grads(b)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    # what is stored how: frozen matrices bf16, norms fp32, LoRA fp32
    dtypes = {n: p.dtype for n, p in b.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "norm" in n or ".ln_" in n} == {torch.float32}
    assert torch.bfloat16 in set(dtypes.values())
    assert b.get_input_embeddings()(torch.tensor([[1, 2]])).dtype == torch.float32  # residual fp32


def test_bf16_base_from_fp32_checkpoint_within_tolerance() -> None:
    fp32 = build("llama")  # fp32 weights: the embeddings get rounded to bf16
    bf16 = copy.deepcopy(fp32)
    cast_base(bf16, "bf16")
    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(lora(fp32)), loss_and_grads(lora(bf16))
    torch.testing.assert_close(loss_b, loss_a, rtol=5e-4, atol=0)
    for name in grads_a:
        rel = (grads_a[name] - grads_b[name]).norm() / grads_a[name].norm()
        assert rel < 0.05, (name, float(rel))


def test_nf4_base_computes_its_dequantised_weights() -> None:
    base = build("llama")
    nf4 = copy.deepcopy(base)
    quantize_linears(nf4, "nf4", CPU)
    cast_base(nf4, "bf16")
    linears = [m for m in nf4.modules() if isinstance(m, torch.nn.Linear) and is_quantized(m.weight)]
    assert len(linears) == 2 * 7  # every projection of both blocks, not the head
    dense = copy.deepcopy(base)  # (a deepcopy of an NF4Tensor quantises it again)
    quantize_linears(dense, "nf4", CPU)
    assert dequantize_base(dense, torch.bfloat16) == 14
    cast_base(dense, "bf16")
    (loss_q, grads_q), (loss_d, grads_d) = loss_and_grads(lora(nf4)), loss_and_grads(lora(dense))
    assert torch.equal(loss_q, loss_d)
    for name in grads_q:
        torch.testing.assert_close(grads_q[name], grads_d[name], rtol=0, atol=0, msg=name)
    loss_fp32, _ = loss_and_grads(lora(base))
    torch.testing.assert_close(loss_q, loss_fp32, rtol=0.03, atol=0)  # 4 bits: measured 1.3%


def test_nf4_scaler_block_divides_the_layer() -> None:
    assert nf4_scaler_block(576 * 576) == 64  # SmolLM2-135M's q_proj: 5,184 blocks of 64
    assert nf4_scaler_block(4096 * 4096) == 256
    assert nf4_scaler_block(64 * 64) == 64
    assert (576 * 576 // NF4_BLOCK) % nf4_scaler_block(576 * 576) == 0


def test_base_format_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert base_format(base_dtype="auto", quantize="none", lora=True, precision="bf16").dtype == "bf16"
    assert base_format(base_dtype="auto", quantize="none", lora=True, precision="fp16").dtype == "fp32"
    assert base_format(base_dtype="auto", quantize="none", lora=False, precision="bf16").dtype == "fp32"
    assert base_format(base_dtype="fp32", quantize="none", lora=True, precision="bf16").dtype == "fp32"
    with pytest.raises(ConfigError, match=r"lora.enabled=true"):
        base_format(base_dtype="bf16", quantize="none", lora=False, precision="bf16")
    with pytest.raises(ConfigError, match=r"trains in fp32. Set `train.precision=bf16`"):
        base_format(base_dtype="bf16", quantize="none", lora=True, precision="fp32")
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ConfigError, match=r'pip install "doctune\[quant\]"'):
        base_format(base_dtype="auto", quantize="nf4", lora=True, precision="bf16")
    # int4 is plain PyTorch
    assert base_format(base_dtype="auto", quantize="int4", lora=True,
                       precision="bf16") == BaseFormat("bf16", "int4")


def test_int4_finds_the_values_of_a_q4_1_file_again() -> None:
    """A Q4_1 GGUF's weights are code * d + m per block of 32 (d, m fp16); dequantised to
    bf16 (what a 4-bit base loads) and quantised to int4, they give back the same codes and
    their values within bf16's rounding; NF4 would move them onto another grid."""
    torch.manual_seed(0)
    out, groups = 64, 6
    q = torch.randint(0, 16, (out, groups, 32))
    q[..., 0], q[..., 1] = 0, 15  # Q4_1 takes its block's minimum and maximum
    d = (torch.rand(out, groups, 1) * 0.02 + 1e-3).half()
    m = (-d.float() * (5 + 5 * torch.rand(out, groups, 1))).half()  # blocks about centred
    exact = (q * d.float() + m.float()).reshape(out, -1)
    codes, scales, mins = quantize_int4(exact.bfloat16())
    assert codes.dtype == torch.uint8 and codes.shape == (out, groups * 16)
    assert scales.dtype == mins.dtype == torch.float16 and scales.shape == (out, groups)
    got = dequantize_int4(codes, scales, mins, torch.float32)
    unpacked = torch.stack((codes & 15, codes >> 4), -1).reshape(out, groups, 32)
    assert torch.equal(unpacked.long(), q)
    # as close to the file's values as the bf16 copy it was made from, and never farther
    # than bf16 rounds a weight of the group's size
    rounded = (exact.bfloat16().float() - exact).abs()
    assert (got - exact).abs().mean() <= 1.2 * rounded.mean()
    size = exact.reshape(out, groups, 32).abs().amax(-1, keepdim=True).expand(-1, -1, 32)
    assert ((got - exact).abs() <= size.reshape(out, -1) * 2**-8).all()
    # constant groups (scale 0) come back as they are
    flat = torch.full((4, 32), 0.25)
    assert torch.equal(dequantize_int4(*quantize_int4(flat), torch.float32), flat)


def test_int4_base_computes_its_dequantised_weights_and_takes_five_eighths_of_a_byte() -> None:
    base = build("llama")
    int4 = copy.deepcopy(base)
    assert quantize_linears(int4, "int4", CPU) == 14
    cast_base(int4, "bf16")
    layers = [m for m in int4.modules() if is_int4(m)]
    assert len(layers) == 14
    for m in layers:
        stored = sum(t.numel() * t.element_size() for t in (m.weight, m.scales, m.mins))
        assert stored == m.in_features * m.out_features * (0.5 + 4 / 32)
    dense = copy.deepcopy(int4)
    assert dequantize_base(dense, torch.bfloat16) == 14
    (loss_q, grads_q), (loss_d, grads_d) = loss_and_grads(lora(int4)), loss_and_grads(lora(dense))
    torch.testing.assert_close(loss_q, loss_d, rtol=1e-6, atol=0)
    for name in grads_q:
        torch.testing.assert_close(grads_q[name], grads_d[name], rtol=1e-4, atol=1e-6, msg=name)
    loss_fp32, _ = loss_and_grads(lora(base))
    torch.testing.assert_close(loss_q, loss_fp32, rtol=0.03, atol=0)


def test_quantize_config_needs_lora() -> None:
    from doctune.config import load_config

    with pytest.raises(ConfigError, match=r"`lora.quantize` needs a LoRA run.*got quantize=nf4"):
        load_config(None, ["lora.quantize=nf4"])
    with pytest.raises(ConfigError, match=r"`lora.quantize` and `lora.dora`"):
        load_config(None, ["lora.enabled=true", "lora.quantize=int8", "lora.dora=true"])
    with pytest.raises(ConfigError, match=r"lora.quantize"):
        load_config(None, ["lora.enabled=true", "lora.quantize=nf3"])
    assert load_config(None, ["lora.enabled=true", "lora.quantize=nf4"]).lora.quantize == "nf4"
    with pytest.raises(ConfigError, match=r"model.base_dtype"):
        load_config(None, ["model.base_dtype=fp16"])


def test_gpt2_cannot_be_quantized() -> None:
    with pytest.raises(ConfigError, match="Conv1D"):
        prepare_base(build("gpt2"), BaseFormat("bf16", "nf4"), CPU)


def test_nf4_codes_are_torchaos_but_at_near_ties() -> None:
    from torchao.quantization import to_nf4 as torchao_to_nf4

    torch.manual_seed(0)
    w = (torch.randn(512, 384) * 0.02).bfloat16()
    ours, theirs = to_nf4(w), torchao_to_nf4(w, NF4_BLOCK, nf4_scaler_block(w.numel()))
    assert type(ours) is type(theirs)
    assert torch.equal(ours.quantized_scalers, theirs.quantized_scalers)

    def codes(t: Any) -> torch.Tensor:
        return torch.stack([t.quantized_data >> 4, t.quantized_data & 15], -1).flatten().int()

    differ = codes(ours) != codes(theirs)
    assert differ.float().mean() < 0.01  # measured 0.45%
    assert (codes(ours) - codes(theirs)).abs().max() <= 1
    # where they differ, ours is at least as near to the weight (torchao's distances are bf16)
    err = {k: (t.get_original_weight().float() - w.float()).abs().flatten()[differ]
           for k, t in (("ours", ours), ("theirs", theirs))}
    assert (err["ours"] <= err["theirs"] + 1e-3).all()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    round_to_bf16(build("llama")).to(torch.bfloat16).save_pretrained(folder)  # as on the hub
    bpe_tokenizer("smollm").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_docs(tmp_path_factory.mktemp("docs"))


def _qlora_cfg(docs: Path, model: Path, out: Path, *extra: str) -> Config:
    return make_cfg(docs, model, out, "lora.enabled=true", "lora.r=4", "lora.dropout=0",
                    "train.lr=1e-2", "train.eval_every=0", "train.precision=bf16", *extra)


def _optimizer_dtypes(run: Path) -> set[torch.dtype]:
    state = torch.load(run / "checkpoints" / "step-4" / "optimizer.pt", weights_only=True)["state"]
    return {v.dtype for s in state.values() for k, v in s.items() if k != "step"}


def test_bf16_base_run_trains_in_fp32_and_merges_into_the_original_base(
        llama_dir: Path, docs: Path, tmp_path: Path) -> None:
    from doctune.export.merge import merge_to_folder
    from doctune.inference import load_for_inference
    from doctune.train.loop import train
    from test_families import logits

    runs = {}
    for dtype in ("fp32", "bf16"):
        runs[dtype] = tmp_path / dtype
        res = train(_qlora_cfg(docs, llama_dir, runs[dtype], f"model.base_dtype={dtype}"), quiet=True)
        assert res.steps == 4
        assert _optimizer_dtypes(runs[dtype]) == {torch.float32}
    facts = (runs["bf16"] / "run.json").read_text()
    assert '"base_weights": "bf16 base"' in facts
    # Each step computes the same numbers (test above); the runs differ only in LoRA's
    # initial A, which PEFT rounds to the base's dtype before doctune makes it fp32 again:
    # after 4 steps at lr 1e-2 the logits differ by 2e-3 at most (of logits ~1)
    a = load_for_inference(runs["fp32"], device="cpu", dtype="fp32").model
    b = load_for_inference(runs["bf16"], device="cpu", dtype="fp32").model
    torch.testing.assert_close(logits(a), logits(b), rtol=0, atol=5e-3)
    merged = merge_to_folder(runs["bf16"], tmp_path / "merged").out
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert (logits(m) - logits(b)).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["nf4", "int4", "int8"])
def test_qlora_run_merges_into_dequantised_base_plus_adapter(
        kind: str, llama_dir: Path, docs: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from doctune.export.merge import merge_to_folder
    from doctune.inference import load_for_inference
    from doctune.train.loop import train
    from test_families import logits

    run = tmp_path / "run"
    res = train(_qlora_cfg(docs, llama_dir, run, f"lora.quantize={kind}"), quiet=True)
    assert res.val_loss_after is not None and res.val_loss_before is not None
    assert _optimizer_dtypes(run) == {torch.float32}
    merged_dir = merge_to_folder(run, tmp_path / "merged").out
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()

    # expected: every block linear = dequantise(quantise(W)) + alpha/r * B @ A (16/4)
    base = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    quantize_linears(base, kind, CPU)
    dequantize_base(base, torch.float32)
    adapter = load_file(str(run / "final" / "adapter_model.safetensors"))
    state, got = base.state_dict(), merged.state_dict()
    for name, w in state.items():
        key = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{key}.lora_A.weight" in adapter:
            w = w + 4.0 * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
        torch.testing.assert_close(got[name], w, rtol=0, atol=1e-6, msg=name)

    # inference keeps the base quantised, as in training: the merged model's logits (NF4
    # dequantises to the input's fp32; torchao's int8 layer computes in bf16: logits ~1)
    loaded = load_for_inference(run, device="cpu", dtype="fp32").model
    assert any(is_quantized(p) for p in loaded.parameters()) or any(map(is_int4, loaded.modules()))
    assert (logits(loaded) - logits(merged)).abs().max() < (3e-2 if kind == "int8" else 1e-4)


def test_nf4_run_resumes_exactly(llama_dir: Path, docs: Path, tmp_path: Path) -> None:
    import shutil

    from doctune.train.loop import train
    from test_train import final_weights

    run = tmp_path / "run"
    cfg = _qlora_cfg(docs, llama_dir, run, "lora.quantize=nf4", "train.sample_every=0")
    train(cfg, quiet=True)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    train(_qlora_cfg(docs, llama_dir, resumed, "lora.quantize=nf4", "train.sample_every=0"),
          resume=True, quiet=True)
    a, b = final_weights(run), final_weights(resumed)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
