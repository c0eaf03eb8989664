"""The reference Trainer script on a saved Llama-family model instead of a GPT-2 it builds.

``../shared/baselines/hf_trainer_clm.py`` builds a randomly initialised GPT-2 itself. This
wrapper loads that script from its file and replaces only its three model-specific functions:

* ``build_model``: the model saved in ``--model DIR``, in fp32 (its dimensions are checked
  against ``--layers``, ``--n-embd`` and ``--n-head``);
* ``apply_lora``: PEFT LoRA on every linear layer of a Llama block (q/k/v/o_proj,
  gate/up/down_proj), doctune's default for the family; ``nn.Linear``, so no
  ``fan_in_fan_out``;
* ``flops_per_token``: 6N + attention for a Llama config (gated MLP, grouped-query attention).

Everything else, the data (tokenize, concatenate, fixed blocks), ``TrainingArguments``, the
timing and the JSON, is the script's own: it runs through its ``main``. Pass the model folder
as ``--tokenizer`` too, so that the script reads the model's own tokenizer from it.

Example::

    python benchmarks/hf_trainer_model.py --model smollm2-hf --tokenizer smollm2-hf \\
        --data ../shared/corpora --layers 30 --n-embd 576 --n-head 9 --seq-len 512 \\
        --steps 4 --lora --bf16 --json baseline.json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import BASELINE, LLAMA_LORA_TARGETS


def load_baseline(path: Path) -> ModuleType:
    """The baseline script as a module (not run: its ``main`` is called later)."""
    spec = importlib.util.spec_from_file_location("hf_trainer_clm", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the baseline script {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def llama_flops_per_token(model_cfg: Any, n_params_total: int, seq_len: int) -> tuple[int, int, int]:
    """``(N, 6N, 6N + attention)`` per trained token for a Llama config, like the script's own.

    N counts the weights of matrix multiplications: per layer q and o (d x d), k and v
    (d x n_kv_heads * head_dim), the gated MLP (3 * d * intermediate); and the output
    projection once (tied to the embedding or not). Norms are left out. Attention term:
    12 * n_layer * d * seq_len (PaLM appendix B). ``n_params_total`` is not needed.
    """
    d, n_layer = model_cfg.hidden_size, model_cfg.num_hidden_layers
    head_dim = getattr(model_cfg, "head_dim", None) or d // model_cfg.num_attention_heads
    q_dim = model_cfg.num_attention_heads * head_dim
    kv_dim = model_cfg.num_key_value_heads * head_dim
    per_layer = 2 * d * q_dim + 2 * d * kv_dim + 3 * d * model_cfg.intermediate_size
    n_matmul = n_layer * per_layer + model_cfg.vocab_size * d
    attn = 12 * n_layer * d * seq_len
    return n_matmul, 6 * n_matmul, 6 * n_matmul + attn


def patch(module: ModuleType, model_dir: Path) -> None:
    """Point the baseline's model-specific functions at the model saved in ``model_dir``."""

    def build_model(layers: int, seq_len: int, vocab: int = 0, n_embd: int = 0, n_head: int = 0,
                    attn_impl: str | None = None, eos_id: int | None = None,
                    activation: str | None = None) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        kw = {"attn_implementation": attn_impl} if attn_impl else {}
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
        cfg = model.config
        found = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads)
        if found != (layers, n_embd, n_head):
            raise SystemExit(f"{model_dir} has layers/n_embd/n_head {found}, "
                             f"not {(layers, n_embd, n_head)} as asked")
        return model

    def apply_lora(model: Any, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                   targets: tuple[str, ...] = tuple(LLAMA_LORA_TARGETS)) -> Any:
        from peft import LoraConfig, TaskType, get_peft_model

        cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha,
                         lora_dropout=dropout, target_modules=list(targets))
        return get_peft_model(model, cfg)

    module.build_model = build_model
    module.apply_lora = apply_lora
    module.flops_per_token = llama_flops_per_token


def main(argv: list[str] | None = None) -> Any:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Every other option goes to the reference script: see "
                                       "its --help.")
    p.add_argument("--model", type=Path, required=True, help="saved model folder (config.json)")
    p.add_argument("--baseline", type=Path, default=BASELINE, help="the reference script")
    ours, rest = p.parse_known_args(argv)
    if not (ours.model / "config.json").is_file():
        raise SystemExit(f"--model {ours.model}: no config.json there")
    module = load_baseline(ours.baseline)
    patch(module, ours.model)
    return module.main(rest)


if __name__ == "__main__":
    main()
