"""The planner on bf16 and 4-bit bases, and `doctune plan --machine`.

Exact arithmetic on shapes counted from real (meta-device) models; the fitting order (a
4-bit base comes after micro-batches, checkpointing and LoRA, before shorter windows);
the machine table from the catalogue's published configs.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from doctune.catalog import MODELS
from doctune.cli import app
from doctune.config import load_config
from doctune.plan import MB, QUANT_BYTES, estimate_for_shape, fit_to_budget, weight_bytes
from doctune.shape import ModelShape, shape_of

runner = CliRunner()


def shape(key: str, r: int = 8) -> ModelShape:
    from transformers import AutoConfig

    return shape_of(AutoConfig.for_model(**MODELS[key].config), r=r)


def test_shape_counts_embeddings_and_quantizable_layers() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    s = shape("llama-3.1-8b")  # untied head: embeddings and head are two matrices
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**MODELS["llama-3.1-8b"].config))
    linears = [m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert s.embed_params == 2 * 128256 * 4096
    assert s.quantizable_params == sum(linears) == s.matmul_params
    assert s.max_linear == 14336 * 4096
    assert s.params == s.matmul_params + s.embed_params + (2 * 32 + 1) * 4096  # + norms
    tied = shape("llama-3.2-3b")
    assert tied.embed_params == 128256 * 3072  # the head is the embedding


def test_lora_inputs_shared_by_several_adapters_count_once() -> None:
    s = shape("llama-3.1-8b")  # q, k, v read one input, gate and up another
    assert s.lora_inputs == 6 * 4096 + 14336
    assert s.lora_distinct_inputs == 3 * 4096 + 14336
    from transformers import GPT2Config

    gpt2 = shape_of(GPT2Config(n_layer=2, n_embd=64, n_head=2), r=8)  # no shared inputs
    assert gpt2.lora_distinct_inputs == gpt2.lora_inputs


def test_weight_bytes_per_base() -> None:
    s = shape("qwen3-4b")
    rest = s.params - s.matmul_params - s.embed_params
    assert weight_bytes(s, "fp32", "none") == 4 * s.params
    assert weight_bytes(s, "bf16", "none") == 2 * (s.matmul_params + s.embed_params) + 4 * rest
    assert weight_bytes(s, "bf16", "nf4") == (QUANT_BYTES["nf4"] * s.quantizable_params + 2 * (
        s.matmul_params - s.quantizable_params + s.embed_params) + 4 * rest)


def test_auto_base_is_bf16_for_lora_under_bf16() -> None:
    s = shape("smollm2-360m")
    sets = ["lora.enabled=true", "train.precision=bf16", "memory.budget=100GB"]
    auto = estimate_for_shape(s, load_config(None, sets), device="cpu")
    fp32 = estimate_for_shape(s, load_config(None, [*sets, "model.base_dtype=fp32"]), device="cpu")
    nf4 = estimate_for_shape(s, load_config(None, [*sets, "lora.quantize=nf4"]), device="cpu")
    assert auto.breakdown["weights"] == weight_bytes(s, "bf16", "none") / MB
    assert fp32.breakdown["weights"] == 4 * s.params / MB
    assert nf4.breakdown["weights"] == weight_bytes(s, "bf16", "nf4") / MB
    # an fp32 base keeps bf16 copies of its matrices for the backward; a bf16 one does not
    assert fp32.breakdown["activations"] - auto.breakdown["activations"] == pytest.approx(
        2 * (s.vocab * s.width + s.matmul_params) / MB)
    full = estimate_for_shape(s, load_config(None, ["train.precision=bf16", "memory.budget=100GB"]),
                              device="cpu")
    assert full.breakdown["weights"] == 4 * s.params / MB  # trained weights stay fp32


def test_fit_takes_a_4bit_base_only_when_bf16_does_not_fit() -> None:
    sets = ["train.precision=bf16", "train.device=mps", "data.block_size=256"]
    big = load_config(None, [*sets, "lora.enabled=true"])
    fitted, notes = fit_to_budget(big, 10.7 * 1024, device="mps", shape=shape("llama-3.1-8b"))
    assert fitted.lora.quantize == "nf4" and fitted.data.block_size == 256
    assert any("lora.quantize=nf4" in n for n in notes)
    small, _ = fit_to_budget(big, 10.7 * 1024, device="mps", shape=shape("qwen3-1.7b"))
    assert small.lora.quantize == "none"
    gpt2 = load_config(None, [*sets, "model.name=scratch:small"])  # Conv1D: nothing to quantise
    tiny, _ = fit_to_budget(gpt2, 50, device="mps")
    assert tiny.lora.quantize == "none"


def test_plan_machine_table(monkeypatch: pytest.MonkeyPatch) -> None:
    import doctune.catalog

    monkeypatch.setattr(doctune.catalog, "MODELS",
                        {k: MODELS[k] for k in ("smollm2-135m", "llama-3.1-8b")})
    result = runner.invoke(app, ["plan", "--machine", "mac16"])
    assert result.exit_code == 0, result.output
    lines = {line.split(" | ")[0].strip("| "): line for line in result.output.splitlines()
             if line.startswith("| ")}
    assert "`--set lora.quantize=nf4`" not in lines["smollm2-135m"]
    assert "does not fit" in lines["llama-3.1-8b"] and "`--set lora.quantize=nf4`" in lines["llama-3.1-8b"]
    assert "budget 10.7 GB" in result.output and "assumed, not measured" in result.output
    bad = runner.invoke(app, ["plan", "--machine", "mac8"])
    assert bad.exit_code != 0 and "`--machine` must be one of mac16, cpu24, gpu24, gpu80" in bad.output
