"""Fabricated run folders, laid out as `doctune train` writes them, for the tests that use runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from doctune.config import Config
from doctune.rundir import RunDir

FACTS = {"val_loss_before": 10.8, "val_ppl_before": 49020.8, "val_loss_after": 3.2,
         "val_ppl_after": 24.53, "steps": 30, "tokens_seen": 12345, "precision": "fp32",
         "device": "cpu"}
SUMMARY = {"files": 3, "documents": 3, "tokens": 1234, "train_windows": 20, "val_windows": 2,
           "duplicates": 0}


def _write_common(run: Path, cfg: Config, facts: dict[str, Any]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    RunDir(run).write_config(cfg)
    (run / "run.json").write_text(json.dumps(facts, indent=1), encoding="utf-8")
    (run / "data_summary.json").write_text(json.dumps(SUMMARY, indent=1), encoding="utf-8")
    (run / "metrics.jsonl").write_text("", encoding="utf-8")


def run_config(base: str, *, lora: bool, block_size: int = 64, overlap: int = 8) -> Config:
    """A resolved config like the one a run saves."""
    return Config.model_validate({
        "model": {"name": base},
        "lora": {"enabled": lora, "r": 4, "alpha": 8.0, "dropout": 0.0},
        "data": {"block_size": block_size, "overlap": overlap, "val_fraction": 0.0},
    })


def lora_model(base_dir: Path, seed: int = 1) -> Any:
    """The tiny base with a LoRA adapter on c_attn whose B weights are non-zero."""
    import torch

    from doctune.modeling import apply_lora, load_pretrained

    model = apply_lora(load_pretrained(str(base_dir)), r=4, alpha=8.0, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # PEFT draws A from the global RNG and sets B to zero (a no-op adapter): set both.
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def make_lora_run(run: Path, base_dir: Path, *, seed: int = 1) -> Path:
    """RUN/ with final/ = a PEFT adapter (plus tokenizer) on ``base_dir``."""
    from transformers import AutoTokenizer

    _write_common(run, run_config(str(base_dir), lora=True),
                  {"model_name": str(base_dir), "base_model": str(base_dir), "lora": True, **FACTS})
    model = lora_model(base_dir, seed)
    model.save_pretrained(run / "final")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run / "final")
    cfg_path = run / "final" / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(data))
    return run


def full_model(base_dir: Path, seed: int = 2) -> Any:
    """The tiny base with every weight nudged: a stand-in for a full fine-tune."""
    import torch

    from doctune.modeling import load_pretrained

    model = load_pretrained(str(base_dir))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model.eval()


def make_full_run(run: Path, base_dir: Path, *, seed: int = 2) -> Path:
    """RUN/ with final/ = a whole transformers model folder (plus tokenizer)."""
    from transformers import AutoTokenizer

    _write_common(run, run_config(str(base_dir), lora=False),
                  {"model_name": str(base_dir), "base_model": str(base_dir), "lora": False, **FACTS})
    full_model(base_dir, seed).save_pretrained(run / "final")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run / "final")
    return run


_SHARED: dict[tuple[str, str], Path] = {}


def shared_run(kind: str, tmp_path_factory: Any, base_dir: Path) -> Path:
    """One LoRA (or full) run per test session, for the tests that only read it."""
    key = (kind, str(base_dir))
    if key not in _SHARED:
        make = make_lora_run if kind == "lora" else make_full_run
        _SHARED[key] = make(tmp_path_factory.mktemp("shared-runs") / kind, base_dir)
    return _SHARED[key]
