"""load_for_inference: every kind of source, and the errors for the ones that cannot load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from doctune.errors import CheckpointError, ModelError
from doctune.inference import load_for_inference, resolve_source
from runfolders import full_model, lora_model, make_full_run, make_lora_run, shared_run

IDS = torch.tensor([[15496, 995, 11, 428, 318, 257, 1332, 13]])  # "Hello world, this is a test."


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    return shared_run("lora", tmp_path_factory, tiny_gpt2_dir)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    return shared_run("full", tmp_path_factory, tiny_gpt2_dir)


def test_resolve_kinds(lora_run: Path, full_run: Path, tiny_gpt2_dir: Path) -> None:
    src = resolve_source(lora_run)
    assert (src.kind, src.lora, src.base) == ("run", True, str(tiny_gpt2_dir))
    assert src.model == str(lora_run.resolve() / "final")
    assert (resolve_source(full_run).kind, resolve_source(full_run).base) == ("run", None)
    adapter = resolve_source(lora_run / "final")
    assert (adapter.kind, adapter.base, adapter.run) == ("adapter", str(tiny_gpt2_dir), None)
    assert resolve_source(tiny_gpt2_dir).kind == "model"
    assert resolve_source("distilgpt2").kind == "hub"
    assert resolve_source("openai-community/gpt2").kind == "hub"


def test_lora_run_loads_base_plus_adapter(lora_run: Path, tiny_gpt2_dir: Path) -> None:
    loaded = load_for_inference(lora_run, device="cpu", dtype="fp32")
    expected = logits(lora_model(tiny_gpt2_dir))
    assert torch.allclose(logits(loaded.model), expected, atol=1e-6)
    assert not torch.allclose(logits(load_for_inference(tiny_gpt2_dir, device="cpu", dtype="fp32").model),
                              expected, atol=1e-3)  # the adapter changes the model
    assert loaded.info["kind"] == "run" and loaded.info["lora"] is True
    assert loaded.tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_full_run_and_model_folder(full_run: Path, tiny_gpt2_dir: Path) -> None:
    expected = logits(full_model(tiny_gpt2_dir))
    assert torch.allclose(logits(load_for_inference(full_run, device="cpu", dtype="fp32").model), expected, atol=1e-6)
    folder = load_for_inference(full_run / "final", device="cpu", dtype="fp32")
    assert folder.info["kind"] == "model"
    assert torch.allclose(logits(folder.model), expected, atol=1e-6)


def test_dtype_choice(tiny_gpt2_dir: Path) -> None:
    loaded = load_for_inference(tiny_gpt2_dir, device="cpu", dtype="bf16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.info["dtype"] == "bfloat16"


def _checkpoint(run: Path, model: torch.nn.Module) -> Path:
    from safetensors.torch import save_file

    from doctune.train.checkpoint import trainable_state

    ckpt = run / "checkpoints" / "step-5"
    ckpt.mkdir(parents=True)
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "peft_config"):  # a LoRA run trains only the adapter
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
    save_file(trainable_state(model), str(ckpt / "weights.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"step": 5, "micro_step": 20, "tokens_seen": 9,
                                                 "total_steps": 10}))
    return ckpt


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_checkpoint_folder(tmp_path: Path, tiny_gpt2_dir: Path, kind: str) -> None:
    make = make_lora_run if kind == "lora" else make_full_run
    run = make(tmp_path / "run", tiny_gpt2_dir)
    model = lora_model(tiny_gpt2_dir, seed=7) if kind == "lora" else full_model(tiny_gpt2_dir, seed=7)
    ckpt = _checkpoint(run, model)
    shutil.rmtree(run / "final")  # a run stopped before the end
    loaded = load_for_inference(ckpt, device="cpu", dtype="fp32")
    assert loaded.info["kind"] == "checkpoint"
    assert torch.allclose(logits(loaded.model), logits(model), atol=1e-6)

    with pytest.raises(CheckpointError) as e:
        load_for_inference(run)
    msg = str(e.value)
    assert "training did not finish" in msg and f"doctune train --resume {run.resolve()}" in msg
    assert "step-5" in msg


def test_adapter_with_missing_base(tmp_path: Path, lora_run: Path, tiny_gpt2_dir: Path) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run / "final", adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/nowhere/tiny-base"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError) as e:
        load_for_inference(adapter)
    assert "/nowhere/tiny-base" in str(e.value) and "--base PATH" in str(e.value)

    loaded = load_for_inference(adapter, device="cpu", dtype="fp32", base=tiny_gpt2_dir)
    assert torch.allclose(logits(loaded.model), logits(lora_model(tiny_gpt2_dir)), atol=1e-6)


def test_adapter_with_uncached_hub_base(tmp_path: Path, lora_run: Path) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run / "final", adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "doctune-tests/no-such-model"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"'doctune-tests/no-such-model'.*--base PATH"):
        load_for_inference(adapter)


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="holds no model"):
        resolve_source(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_source(tmp_path / "missing")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_source(tmp_path / "f.txt")


def test_moved_run_uses_its_saved_base(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    """A run copied to another machine: the recorded base path is gone, RUN/base is there."""
    run = make_lora_run(tmp_path / "run", tiny_gpt2_dir)
    shutil.copytree(tiny_gpt2_dir, run / "base")  # what training saves for a scratch LoRA base
    facts = json.loads((run / "run.json").read_text())
    facts["base_model"] = "/old/machine/runs/x/base"
    (run / "run.json").write_text(json.dumps(facts))
    src = resolve_source(run)
    assert src.base == str((run / "base").resolve())
    loaded = load_for_inference(run, device="cpu", dtype="fp32")
    assert torch.allclose(logits(loaded.model), logits(lora_model(tiny_gpt2_dir)), atol=1e-6)
