"""Merging: merged logits equal base + adapter, a plain transformers folder, a model card."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from doctune.cli import app
from doctune.errors import ExportError
from doctune.export.merge import merge_to_folder
from runfolders import full_model, lora_model, make_full_run, shared_run

IDS = torch.tensor([[15496, 995, 11, 428, 318, 257, 1332, 13, 50256, 464]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits  # (1, T, V)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    return shared_run("lora", tmp_path_factory, tiny_gpt2_dir)


@pytest.fixture(scope="module")
def merged(lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "merged"
    result = merge_to_folder(lora_run, out)
    assert result.merged_lora and result.out == out.resolve()
    return out


def test_merged_logits_equal_base_plus_adapter(merged: Path, tiny_gpt2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    unmerged = lora_model(tiny_gpt2_dir)  # the same adapter, applied on the fly (fp32)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert type(plain).__name__ == "GPT2LMHeadModel"  # no PEFT needed to load it
    diff = (logits(plain) - logits(unmerged)).abs().max().item()
    assert diff < 1e-4
    # ...and the adapter is not a no-op, so the equality above means something.
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, dtype=torch.float32).eval()
    assert (logits(base) - logits(unmerged)).abs().max().item() > 1e-2


def test_merged_folder_is_standard(merged: Path, tiny_gpt2_dir: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    names = {p.name for p in merged.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    assert not any(n.startswith("adapter_") for n in names)
    assert GenerationConfig.from_pretrained(merged).eos_token_id == 50256
    assert AutoTokenizer.from_pretrained(merged)("Hello world")["input_ids"] == [15496, 995]
    card = (merged / "README.md").read_text()
    assert "| validation perplexity before | 4.902e+04 |" in card
    assert "| validation perplexity after | 24.53 |" in card
    assert "LoRA (r=4, alpha=8" in card and "| optimizer steps | 30 |" in card
    assert "| tokens | 1,234 |" in card  # from data_summary.json
    assert f"hf upload YOUR-NAME/merged {merged.resolve()} ." in card


def test_full_run_is_resaved(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    run = make_full_run(tmp_path / "run", tiny_gpt2_dir)
    result = merge_to_folder(run, tmp_path / "out")
    assert not result.merged_lora
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(result.out, dtype=torch.float32).eval()
    assert torch.allclose(logits(plain), logits(full_model(tiny_gpt2_dir)), atol=1e-6)
    assert "full fine-tune" in (result.out / "README.md").read_text()


def test_out_dir_rules(lora_run: Path, merged: Path) -> None:
    with pytest.raises(ExportError, match=r"not empty\. Pass --force"):
        merge_to_folder(lora_run, merged)
    with pytest.raises(ExportError, match="would overwrite the model being exported"):
        merge_to_folder(lora_run, lora_run / "final", force=True)
    with pytest.raises(ExportError, match="would overwrite"):
        merge_to_folder(lora_run, lora_run.parent, force=True)


def test_cli_merge(lora_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["merge", str(lora_run), "--out", str(tmp_path / "m"), "--json"])
    assert r.exit_code == 0, r.output
    assert '"merged_lora": true' in r.stdout and (tmp_path / "m" / "model.safetensors").is_file()
    r = runner.invoke(app, ["merge", str(lora_run), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "--force" in r.stderr
    r = runner.invoke(app, ["merge", str(tmp_path / "m"), "--out", str(tmp_path / "m" / "x")])
    assert r.exit_code == 2 and "would overwrite" in r.stderr
