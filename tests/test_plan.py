"""`doctune plan`: the model's shape from its config, the estimate's arithmetic, fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from doctune.cli import app
from doctune.config import Config, load_config
from doctune.errors import ConfigError, ModelError
from doctune.plan import (
    MB,
    ModelShape,
    estimate_for_shape,
    estimate_memory,
    fit_to_budget,
    model_shape,
    parse_size,
    render_plan,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def distil_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distilgpt2-shaped model folder holding only its config.json (no weights needed)."""
    from transformers import GPT2Config

    out = tmp_path_factory.mktemp("distil-config")
    GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257).save_pretrained(out)
    return out


def cfg_for(model: Path | str, *overrides: str) -> Config:
    return load_config(None, [f"model.name={model}", "train.precision=fp32", *overrides])


def test_parse_size() -> None:
    assert parse_size("12GB") == 12 * 1024
    assert parse_size("1.5 GiB") == 1536
    assert parse_size("800MB") == 800
    assert parse_size("2048") == 2048
    with pytest.raises(ConfigError, match='must look like "12GB"'):
        parse_size("lots")


def test_shape_of_a_local_model_matches_the_real_one(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from doctune.modeling import apply_lora, count_parameters

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50257, n_positions=256)
    config.save_pretrained(tmp_path)  # config.json only: the plan never reads weights
    shape = model_shape(cfg_for(tmp_path, "lora.r=8"))
    model = GPT2LMHeadModel(config)
    assert shape.params == count_parameters(model)[1]
    assert (shape.n_layer, shape.width, shape.n_head, shape.vocab) == (2, 32, 2, 50257)
    assert shape.matmul_params == 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)
    lora = apply_lora(model, r=8, alpha=16, dropout=0.0)
    # every linear layer: c_attn 32+96, attn.c_proj 32+32, c_fc 32+128, mlp.c_proj 128+32
    assert shape.lora_params == count_parameters(lora)[0] == 2 * 8 * (128 + 64 + 160 + 160)
    assert shape.attn_dropout


def test_shape_of_a_preset() -> None:
    shape = model_shape(cfg_for("scratch:tiny"))
    assert (shape.n_layer, shape.width, shape.n_head, shape.vocab) == (4, 192, 4, 8192)


def test_offline_hub_id_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="local model folder or use a preset"):
        model_shape(cfg_for("no-such-org/no-such-model"))


SHAPE = ModelShape(n_layer=2, width=64, n_head=4, vocab=1000, params=200_000, matmul_params=98_304,
                   lora_params=2_048, attn_dropout=False)


def test_breakdown_arithmetic() -> None:
    cfg = load_config(None, ["train.precision=fp32", "train.micro_batch_size=2", "data.block_size=128",
                             "data.overlap=0", "train.grad_accum=4", "train.fused_loss=false"])
    plan = estimate_for_shape(SHAPE, cfg, device="cpu", budget=10_000)
    tok = 2 * 128
    assert plan.phase == "forward/backward"
    assert plan.breakdown["weights"] == pytest.approx(4 * 200_000 / MB)
    assert plan.breakdown["gradients"] == pytest.approx(4 * 200_000 / MB)
    assert plan.breakdown["optimizer"] == pytest.approx(8 * 200_000 / MB)
    assert plan.breakdown["activations"] == pytest.approx(1.45 * (2 * 72 + 8) * tok * 64 / MB)
    assert plan.breakdown["logits_and_loss"] == pytest.approx(12 * tok * 1000 / MB)
    assert plan.peak_mb == pytest.approx(sum(plan.breakdown.values()))
    assert plan.activations_by_checkpointing == pytest.approx(
        {"off": plan.breakdown["activations"], "on": 1.45 * (2 * 4 + 72 + 8) * tok * 64 / MB})
    assert plan.fits and plan.to_dict()["fits"] is True
    assert set(plan.to_dict()) >= {"peak_mb", "fits", "budget_mb", "breakdown", "recommendations"}


def test_each_lever_lowers_its_part() -> None:
    base = load_config(None, ["train.precision=fp32", "train.fused_loss=false"])

    def part(cfg: Config, key: str) -> float:
        return estimate_for_shape(SHAPE, cfg, device="cpu", budget=1e9).breakdown[key]

    ckpt = load_config(None, ["train.precision=fp32", "train.fused_loss=false", "train.grad_checkpointing=true"])
    lora = load_config(None, ["train.precision=fp32", "train.fused_loss=false", "lora.enabled=true"])
    fused = load_config(None, ["train.precision=fp32"])
    tok = 4 * 512
    assert part(base, "activations") == pytest.approx(1.45 * (2 * 72 + 8) * tok * 64 / MB)
    assert part(ckpt, "activations") == pytest.approx(1.45 * (2 * 4 + 72 + 8) * tok * 64 / MB)
    assert part(lora, "optimizer") == pytest.approx(8 * 2_048 / MB)
    assert part(fused, "logits_and_loss") < part(base, "logits_and_loss") / 2


def test_fit_keeps_the_effective_batch_and_follows_the_order(distil_dir: Path) -> None:
    cfg = cfg_for(distil_dir, "train.micro_batch_size=8", "train.grad_accum=2", "train.fused_loss=false")
    shape = model_shape(cfg)

    def peak(*overrides: str) -> float:
        trial = cfg_for(distil_dir, "train.fused_loss=false", "train.micro_batch_size=1",
                        "train.grad_accum=16", *overrides)
        return estimate_for_shape(shape, trial, device="cpu", budget=0).peak_mb

    def fit(budget: float) -> tuple[Config, list[str]]:
        new, notes = fit_to_budget(cfg, budget, device="cpu")
        assert new.train.micro_batch_size * new.train.grad_accum == 16
        assert estimate_for_shape(shape, new, device="cpu", budget=0).peak_mb <= budget or len(notes) > 2
        return new, notes

    full = estimate_for_shape(shape, cfg, device="cpu", budget=0).peak_mb
    same, notes = fit(full + 1)
    assert same is cfg and notes == []
    smaller, notes = fit(full * 0.8)  # a smaller micro-batch is enough
    assert smaller.train.micro_batch_size in {1, 2, 4} and not smaller.train.grad_checkpointing
    assert "--set train.micro_batch_size=" in notes[1]
    tight, _ = fit(peak() - 1)  # micro-batch 1 is not enough: checkpointing next
    assert tight.train.grad_checkpointing and not tight.lora.enabled
    tighter, notes = fit(peak("train.grad_checkpointing=true") - 1)  # then LoRA
    assert tighter.lora.enabled and tighter.data.block_size == 512
    assert any("lora.enabled=true" in n for n in notes)
    tiniest, _ = fit(peak("train.grad_checkpointing=true", "lora.enabled=true") - 1)  # then blocks
    assert tiniest.data.block_size == 256 and tiniest.data.overlap == 32
    _, notes = fit(100)
    assert "choose a smaller model" in notes[-1]


def test_recommendations_when_over_budget(distil_dir: Path) -> None:
    plan = estimate_memory(cfg_for(distil_dir, "memory.budget=2GB"), device="cpu")
    assert not plan.fits and plan.budget_mb == 2048
    assert plan.recommendations[-1].startswith("Estimated peak then:")
    text = render_plan(plan, cfg_for(distil_dir, "memory.budget=2GB"))
    assert "does NOT fit" in text and "To fit, keeping the effective batch:" in text


def test_cli_json(distil_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(f"model:\n  name: {distil_dir}\nmemory:\n  budget: 64GB\n")
    result = runner.invoke(app, ["plan", "--config", str(f), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["fits"] is True and data["budget_mb"] == 65536
    assert data["peak_mb"] == pytest.approx(sum(data["breakdown"].values()), abs=1)
    assert list(data["breakdown"]) == ["framework", "weights", "gradients", "optimizer",
                                       "activations", "logits_and_loss"]


def test_cli_text_and_errors(distil_dir: Path) -> None:
    ok = runner.invoke(app, ["plan", "--set", f"model.name={distil_dir}", "--set", "memory.budget=1GB",
                             "--device", "cpu"])
    assert ok.exit_code == 0 and "does NOT fit" in ok.output
    bad = runner.invoke(app, ["plan", "--set", "memory.budget=lots"])
    assert bad.exit_code == 2 and 'must look like "12GB"' in bad.output
    gpu = runner.invoke(app, ["plan", "--device", "tpu"])
    assert gpu.exit_code == 2 and "must be auto, cpu, cuda or mps" in gpu.output
