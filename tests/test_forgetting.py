"""``knowledge.forgetting_budget``: final/ keeps the largest share of the adapter within the
budget of general-text perplexity (:mod:`doctune.train.forgetting`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import doctune.knowledge.exam as exam
import doctune.knowledge.replay as replay
from doctune.cli import app
from doctune.knowledge.mix import general_text
from doctune.train.forgetting import MAX_MEASURES, TOLERANCE, largest_within
from test_replay import _fake_answers, _train, runner


def _search(f: Any, limit: float) -> tuple[float, float, list[float]]:
    asked: list[float] = []

    def measure(s: float) -> float:
        asked.append(s)
        return f(s)

    scale, value = largest_within(measure, limit=limit, base=f(0.0), full=f(1.0))
    return scale, value, asked


@pytest.mark.parametrize(("power", "measures"), [(3.05, 2), (2.72, 3), (2.0, 4), (1.0, 4)])
def test_the_search_finds_the_largest_scale_within_the_limit(power: float,
                                                               measures: int) -> None:
    """A log-perplexity rising as ``s ** power`` (SmolLM2-135M's ~3, Qwen2.5-Coder-0.5B's
    ~2.7, and shapes further off the first guess): the scale chosen is within the limit and
    within 1/64 of the largest that is, in a few measures (bisection took 6)."""
    f = lambda s: 28.45 * math.exp(0.157 * s ** power)  # noqa: E731
    limit = 28.45 * 1.05
    scale, value, asked = _search(f, limit)
    best = (math.log(1.05) / 0.157) ** (1 / power)  # where the measure meets the limit
    assert value == f(scale) <= limit and best - TOLERANCE < scale <= best + 1e-12
    assert len(asked) == measures and scale in asked
    assert any(scale < s <= scale + TOLERANCE and f(s) > limit for s in asked)


def test_a_guess_next_to_a_measured_scale_still_closes_the_gap() -> None:
    """A good guess that lands within 1/64 of a measured scale steps 1/64 from it (it used
    to count as a miss and halve the whole interval, running out of measures short)."""
    f = lambda s: 30 * math.exp(0.4247 * s ** 3.184)  # noqa: E731
    limit = 30 * 1.0899
    scale, value, asked = _search(f, limit)
    best = (math.log(1.0899) / 0.4247) ** (1 / 3.184)
    assert value <= limit and best - TOLERANCE < scale <= best + 1e-12
    assert len(asked) < MAX_MEASURES


def test_a_measure_that_jumps_is_bisected_and_the_search_ends() -> None:
    scale, value, asked = _search(lambda s: 10.0 if s < 0.3 else 20.0, 15.0)
    assert value == 10.0 and 0.25 < scale < 0.3 and len(asked) == MAX_MEASURES


def _lora_b(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The lora_B weights of final/ and of the last checkpoint (as trained), by module."""
    final = load_file(str(run / "final" / "adapter_model.safetensors"))
    [ckpt] = sorted((run / "checkpoints").iterdir())
    trained = load_file(str(ckpt / "weights.safetensors"))
    name = lambda k: k.split("model.", 1)[1].replace(".default", "")  # noqa: E731
    return ({name(k): v for k, v in final.items() if "lora_B" in k},
            {name(k): v for k, v in trained.items() if "lora_B" in k})


def test_an_adapter_over_the_budget_is_scaled_into_final(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a stand-in perplexity that grows with the adapter's delta: the base (no delta) 100
    def fake_ppl(model: torch.nn.Module, tokenizer: Any, texts: list[str], **kw: Any) -> float:
        assert texts == [general_text("dev")]
        return 100 * (1 + 0.02 * sum(float((p.detach().float() ** 2).sum())
                                     for n, p in model.named_parameters() if "lora_B" in n))

    monkeypatch.setattr(replay, "base_answers", _fake_answers)
    monkeypatch.setattr(exam, "text_perplexity", fake_ppl)
    run = tmp_path / "run"
    res = _train(tmp_path, run, "lora.enabled=true", "lora.r=4", "train.lr=0.05", "train.max_steps=4",
                 "knowledge.forgetting_budget=0.05")
    assert res.exit_code == 0, res.output
    final, trained = _lora_b(run)
    assert final.keys() == trained.keys() and len(final) > 0
    norm2 = sum(float((w.float() ** 2).sum()) for w in trained.values())
    expected, _ = largest_within(lambda s: 100 * (1 + 0.02 * s * s * norm2), limit=105.0,
                                 base=100.0, full=100 * (1 + 0.02 * norm2))
    fact = json.loads((run / "run.json").read_text())["adapter_scale"]
    assert 0 < fact["scale"] < 1 and fact["scale"] == pytest.approx(expected, abs=1e-4)
    assert fact["base_ppl"] == 100.0 and fact["final_ppl"] <= 105.0 < fact["trained_ppl"]
    for k, w in trained.items():  # final/ holds the scaled adapter; the checkpoint as trained
        torch.testing.assert_close(final[k], w * fact["scale"], rtol=1e-3, atol=1e-7)
    said = " ".join(res.output.split())
    assert f"over the 5% budget: the adapter scaled by {fact['scale']:.3f}" in said
    assert f"adapter scaled by {fact['scale']:.2f} for the 5% forgetting budget" in said


def test_within_the_budget_the_adapter_is_kept_whole_and_the_base_measured_truly(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(replay, "base_answers", _fake_answers)
    run = tmp_path / "run"
    # a random tiny model only gets better at English from any text: nothing was forgotten
    res = _train(tmp_path, run, "lora.enabled=true", "lora.r=4", "train.max_steps=3", "knowledge.forgetting_budget=0")
    assert res.exit_code == 0, res.output
    fact = json.loads((run / "run.json").read_text())["adapter_scale"]
    assert fact["scale"] == 1.0 and fact["trained_ppl"] <= fact["base_ppl"]
    final, trained = _lora_b(run)
    for k, w in trained.items():
        torch.testing.assert_close(final[k], w, rtol=0, atol=0)
    # the run's "base" (the adapter zeroed) is the base model read back from disk
    from doctune.inference import load_for_inference

    base = load_for_inference(str(tmp_path / "m"), device="cpu", dtype="fp32")
    got = exam.text_perplexity(base.model.eval(), base.tokenizer, [general_text("dev")],
                               block_size=128, max_tokens=4096)
    assert got is not None and math.isclose(got, fact["base_ppl"], rel_tol=1e-4)


def test_no_adapter_no_scale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(replay, "base_answers", _fake_answers)
    run = tmp_path / "run"
    res = _train(tmp_path, run, "lora.enabled=false", "train.max_steps=2",
                 "knowledge.forgetting_budget=0.05")
    assert res.exit_code == 0, res.output
    fact = json.loads((run / "run.json").read_text())["adapter_scale"]
    assert fact == {"scale": 1.0, "budget": 0.05, "why": "full fine-tuning has no adapter to "
                    "scale: the trained weights are final"}


def test_null_turns_the_budget_off_and_docs_alone_are_never_scaled(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(replay, "base_answers", _fake_answers)
    run = tmp_path / "run"
    res = _train(tmp_path, run, "lora.enabled=true", "lora.r=4", "train.max_steps=2",
                 "knowledge.forgetting_budget=null")
    assert res.exit_code == 0, res.output
    assert "adapter_scale" not in json.loads((run / "run.json").read_text())
    from test_recipe import _tiny_model

    docs_only = tmp_path / "docs-only"
    model = _tiny_model(tmp_path / "m2", chat=True)
    res = runner.invoke(app, ["train", str(tmp_path / "docs"), "--model", str(model), "--out",
                              str(docs_only), "--docs-only", "--set", "lora.enabled=true",
                              "--set", "train.max_steps=2", "--set", "train.device=cpu",
                              "--set", "log.report=false", "--set", "data.block_size=128"])
    assert res.exit_code == 0, res.output
    facts = json.loads((docs_only / "run.json").read_text())
    assert "knowledge" not in facts and "adapter_scale" not in facts


def test_the_adapters_b_weights_of_linear_and_embedding_layers_and_nothing_else() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from doctune.train.forgetting import lora_b_params, other_trained

    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2))
    model = get_peft_model(tiny, LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"]))
    named = {id(p): n for n, p in model.named_parameters()}
    names = [named[id(p)] for p in lora_b_params(model)]
    assert sorted(seg for n in names for seg in n.split(".") if seg.startswith("lora_")) == \
        ["lora_B", "lora_embedding_B"]
    assert other_trained(model) == []
    saved = get_peft_model(LlamaForCausalLM(tiny.config),
                           LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    assert other_trained(saved) and all("lm_head" in n for n in other_trained(saved))


def test_a_perplexity_that_cannot_be_measured_keeps_the_adapter_whole(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(replay, "base_answers", _fake_answers)
    monkeypatch.setattr(exam, "text_perplexity", lambda *a, **kw: float("nan"))
    run = tmp_path / "run"
    res = _train(tmp_path, run, "lora.enabled=true", "lora.r=4", "train.max_steps=2")
    assert res.exit_code == 0, res.output
    fact = json.loads((run / "run.json").read_text())["adapter_scale"]
    assert fact["scale"] == 1.0 and fact["budget"] == 0.1  # the default
    assert "could not be measured" in fact["why"] and "kept whole" in fact["why"]
    final, trained = _lora_b(run)
    for k, w in trained.items():
        torch.testing.assert_close(final[k], w, rtol=0, atol=0)
