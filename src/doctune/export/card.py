"""The model card (``README.md``) written beside a merged or exported model.

It says what the model is (base, fine-tuning settings, data), how well it did (validation
perplexity before and after, from ``run.json``) and how to use and upload it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from doctune.inference import Source
from doctune.rundir import RunDir, RunFacts


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None]
    return out


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not Path(str(name)).expanduser().exists() and not str(name).startswith(("/", ".", "~"))


def _results(facts: RunFacts) -> list[str]:
    rows = [("validation loss before", facts.val_loss_before),
            ("validation loss after", facts.val_loss_after),
            ("validation perplexity before", facts.val_ppl_before),
            ("validation perplexity after", facts.val_ppl_after)]
    if all(v is None for _, v in rows):
        return ["No validation numbers were recorded for this run (`data.val_fraction: 0`?). "
                "Measure the model on your docs with `doctune eval MODEL --data DOCS`.", ""]
    return ["Perplexity on the held-out validation documents (lower is better), measured by "
            "doctune with the same cleaning and windows as training:", "", *_table(rows), ""]


def _settings(run: RunDir) -> list[str]:
    cfg, facts = run.config(), run.facts
    lo, d, t = cfg.lora, cfg.data, cfg.train
    method = (f"LoRA (r={lo.r}, alpha={lo.alpha:g}, targets={lo.target_modules or 'default'}), merged"
              if lo.enabled else "full fine-tune")
    rows: list[tuple[str, Any]] = [
        ("base model", facts.base_model or cfg.model.name), ("method", method),
        ("optimizer steps", facts.steps), ("tokens seen", facts.tokens_seen),
        ("learning rate", t.lr), ("schedule", t.schedule),
        ("batch", f"{t.micro_batch_size} x {t.grad_accum} windows"),
        ("block size / overlap", f"{d.block_size} / {d.overlap} tokens"),
        ("precision", facts.precision or t.precision), ("device", facts.device),
    ]
    return _table(rows)


def _data(run: RunDir) -> list[str]:
    summary = run.data_summary()
    rows = [(k.replace("_", " "), v) for k, v in summary.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) < 80]
    return _table(rows[:14]) if rows else ["(no data summary was saved with the run)"]


def hf_usage(out: Path) -> list[str]:
    """Card lines showing how to run a transformers folder at ``out``."""
    return ["```bash", f'doctune generate {out} "How do I"', "```", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tok = AutoTokenizer.from_pretrained("{out}")',
            f'model = AutoModelForCausalLM.from_pretrained("{out}")',
            'ids = tok("How do I", return_tensors="pt").input_ids',
            "print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=True)[0]))",
            "```", ""]


def model_card(src: Source, *, out: Path, title: str, usage: list[str] | None = None,
               chat: bool = False) -> str:
    """The README.md text for a model exported from ``src`` into ``out``.

    ``usage`` replaces the default "Use" lines (transformers and ``doctune generate``);
    ``chat`` says the model keeps a chat template (an instruct model).
    """
    run = src.run
    base = (run.facts.base_model if run else None) or src.base
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags:", "- doctune", "- documentation"]
    if _is_hub_id(base):
        front.append(f"base_model: {base}")
    front.append("---")
    lines = [*front, "", f"# {title}", "",
             "A language model fine-tuned with [doctune](https://pypi.org/project/doctune/) on a "
             "folder of Markdown/MDX documentation. " + (
                 "It keeps its chat template (in the tokenizer files, and in the GGUF and the "
                 "Ollama Modelfile): talk to it as a chat model." if chat else
                 "It continues text in the style and with the facts of those docs; it is a base "
                 "(completion) model, not a chat model."), ""]
    if run is not None:
        lines += ["## Results", "", *_results(run.facts), "## Training", "", *_settings(run),
                  "", "## Data", "", *_data(run), ""]
    else:
        lines += [f"Exported from `{src.given}`" + (f" (base model `{base}`)." if base else "."), ""]
    lines += ["## Use", "", *(usage if usage is not None else hf_usage(out))]
    lines += ["## Upload to the Hugging Face hub", "",
              "```bash", f"hf upload YOUR-NAME/{out.name} {out} .",
              "```", "",
              "(`hf` comes with `pip install -U huggingface_hub`; older versions call it "
              f"`huggingface-cli upload YOUR-NAME/{out.name} {out} .`. Log in first with "
              "`hf auth login`.)", ""]
    return "\n".join(lines)
