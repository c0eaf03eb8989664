"""How much of the adapter ``final/`` keeps: the largest share within a forgetting budget.

Training on a docs site moves a model's English as a whole, not only what it knows of the
docs: its perplexity on general text rises. Between the base and the tuned model lies a line
of models, ``W + s * (B @ A) * alpha / r`` for the adapter scaled by ``s`` in [0, 1]; along it
the two move at different speeds (WiSE-FT, Wortsman et al., CVPR 2022, interpolates whole
models the same way). Measured after the study recipe (``benchmarks/check_adapter_scale.py``,
questions written by people): on SmolLM2-135M-Instruct, general-English perplexity +17% at
``s = 1``, +10% at 0.85, +7% at 0.75 and +3% at 0.59, while the right answer was in 0.18,
0.17, 0.16 and 0.10 of the replies (multiple choice 0.49, 0.47, 0.45, 0.39); on
Qwen2.5-Coder-0.5B-Instruct, +52% at ``s = 1`` and +11% at 0.6, with right answers 0.32 and
0.30 (multiple choice 0.52 both). The default budget, 10%, keeps nearly all that was learnt
and about halves the forgetting; 5% meets a stricter bound at a visible cost in answers.

With ``knowledge.forgetting_budget: b`` (0.1 unless set; null turns it off) the end of a LoRA
run with knowledge data (the study recipe, or a mix of one's own) measures perplexity on
held-back general text (:func:`doctune.knowledge.mix.general_text` ``"dev"``: never trained,
and not the paragraphs the knowledge evaluation scores) with the adapter off (the base) and
at full scale; when the tuned model's is more than ``(1 + b)`` times the base's, it searches
for the largest scale within the budget (:func:`largest_within`, most often 4 measures in
all) and multiplies every ``lora_B`` by it, so ``final/``
and every export made from it carry the scale. ``run.json`` says what was measured and chosen
(``adapter_scale``). Full fine-tuning, DoRA (whose magnitudes do not scale with the delta),
weights trained beside the adapter and sharded models (FSDP) are left as trained, and
``run.json`` says why; a run of the documents alone is left as trained too (writing like the
docs is what it is for).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from doctune.train.parts import Run

TOLERANCE = 1 / 64
"""The chosen scale is within this of the largest in budget (a scale measured within the
budget and one this much larger measured over it), unless :data:`MAX_MEASURES` ran out first
(a perplexity that jumps along the line, not one that grows smoothly)."""
MAX_MEASURES = 6
"""Scales measured at most between the base and the whole adapter (as many as bisecting to
:data:`TOLERANCE` takes); the search most often needs 2."""
POWER = 3.0
"""The first guess's shape of the rise: log-perplexity grows about as ``s ** 3`` along the line
(SmolLM2-135M: 2.9-3.2 between ``s`` = 0.59 and 0.85; Qwen2.5-Coder-0.5B: 2.7; see the module
docstring)."""
DEV_TOKENS = 4096
"""Tokens of held-back general text measured at each scale: a few forward passes."""


ADAPTER_WEIGHTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")
"""PEFT's names of a LoRA adapter's weights (linear and embedding layers)."""


def lora_b_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter's B weights, of linear and of embedding layers (the delta is linear in
    each)."""
    return [p for n, p in model.named_parameters()
            if any(f".{k}." in f".{n}." for k in ("lora_B", "lora_embedding_B"))]


def other_trained(model: torch.nn.Module) -> list[str]:
    """Trainable weights that are not the adapter's (``modules_to_save``, trainable tokens):
    they do not lie on the line from the base that scaling the adapter walks."""
    return [n for n, p in model.named_parameters() if p.requires_grad
            and not any(f".{k}." in f".{n}." for k in ADAPTER_WEIGHTS)]


def scale_adapter(params: list[torch.nn.Parameter], trained: list[torch.Tensor],
                  scale: float) -> None:
    """Set the adapter's B weights to ``scale`` times ``trained`` (in place)."""
    import torch

    with torch.no_grad():
        for p, w in zip(params, trained, strict=True):
            p.copy_(w * scale)


def largest_within(measure: Any, *, limit: float, base: float, full: float,
                   tolerance: float = TOLERANCE, max_measures: int = MAX_MEASURES,
                   ) -> tuple[float, float]:
    """The largest scale ``s`` in [0, 1] found with ``measure(s) <= limit``, and its measure.

    ``measure`` grows with ``s``; ``base = measure(0)`` is within the limit, ``full =
    measure(1)`` above it. Each round guesses where the log of the measure crosses the
    limit, as a power of ``s`` (:data:`POWER` at first, then fitted to the last scale
    measured), measures there and ``tolerance`` beyond it on the side of the limit:
    when the curve has that shape, 2 measures end the search, where bisection takes 6. A
    round that leaves more than ``tolerance`` between the scale within and the one over it
    goes on with the next guess (a bisection when the guess falls outside them); it stops
    after ``max_measures``."""
    rise = math.log(full / base)  # of the whole adapter; > 0
    goal = math.log(limit / base) / rise  # the share of it within budget, in (0, 1)
    low, low_value, high = 0.0, base, 1.0
    power, measures = POWER, 0

    def probe(s: float) -> None:
        nonlocal low, low_value, high, power, measures
        value = measure(s)
        measures += 1
        if value <= limit:
            low, low_value = s, value
        else:
            high = s
        share = math.log(value / base) / rise
        if 0 < share < 1 and 0 < s < 1:  # the power through this point and the whole adapter
            power = math.log(share) / math.log(s)

    while high - low > tolerance and measures < max_measures:
        guess = goal ** (1 / power) if power > 0 else -1.0
        if not low < guess < high or high - low <= 2 * tolerance:
            probe((low + high) / 2)  # the shape missed (or one halving ends it): bisect
            continue
        guess = min(max(guess, low + tolerance), high - tolerance)  # a step that can close it
        probe(guess)
        if high - low > tolerance and measures < max_measures:
            probe(guess + tolerance if low == guess else guess - tolerance)
    return low, low_value


def fit_adapter_scale(run: Run) -> dict[str, Any] | None:
    """Scale the run's adapter to its forgetting budget (see the module docstring); the
    ``adapter_scale`` fact for ``run.json``, or None when no budget is set or the run
    trains the documents alone (what it is for is then the docs' own text)."""
    budget = run.cfg.knowledge.forgetting_budget
    if budget is None or run.inputs.knowledge is None:
        return None
    why_not = _why_not(run)
    if why_not is not None:
        return {"scale": 1.0, "budget": budget, "why": why_not}
    from doctune.knowledge.exam import text_perplexity
    from doctune.knowledge.mix import general_text
    from doctune.train import dist

    model, tokenizer = run.model.model, run.inputs.tokenizer
    text, size = general_text("dev"), run.cfg.data.block_size
    params = lora_b_params(model)
    trained = [p.detach().clone() for p in params]

    def at(scale: float) -> float:
        """General-text perplexity with the adapter scaled by ``scale``."""
        scale_adapter(params, trained, scale)
        with run.hw.precision.autocast(run.hw.device):
            got = text_perplexity(model, tokenizer, [text], block_size=size, max_tokens=DEV_TOKENS)
        return math.inf if got is None else got

    was_training = model.training
    model.eval()
    try:
        base, full = at(0.0), at(1.0)
        measured = math.isfinite(base) and math.isfinite(full)
        limit = base * (1 + budget)
        if not measured or full <= limit:  # a measure that failed never throws the adapter away
            scale, kept = 1.0, full
        else:
            scale, kept = largest_within(at, limit=limit, base=base, full=full)
        scale = dist.broadcast(run.env, scale)  # every rank keeps rank 0's choice
        scale_adapter(params, trained, scale)
    finally:
        model.train(was_training)
    if not measured:
        why = (f"general-text perplexity could not be measured (base {base}, trained {full}): "
               "the adapter kept whole")
        run.monitor.warn(why)
        return {"scale": 1.0, "budget": budget, "why": why}
    rise = 100 * (kept / base - 1)
    why = (f"general-text perplexity {base:.2f} (base) -> {full:.2f} trained "
           f"({100 * (full / base - 1):+.1f}%)" +
           (f", within the {budget:.0%} budget: the adapter kept whole" if scale == 1.0 else
            f", over the {budget:.0%} budget: the adapter scaled by {scale:.3f} ({kept:.2f}, "
            f"{rise:+.1f}%)"))
    run.monitor.message(why)
    return {"scale": scale, "budget": budget, "base_ppl": round(base, 4),
            "trained_ppl": round(full, 4), "final_ppl": round(kept, 4), "why": why}


def _why_not(run: Run) -> str | None:
    """Why this run's adapter cannot be scaled (None when it can)."""
    if not run.cfg.lora.enabled:
        return "full fine-tuning has no adapter to scale: the trained weights are final"
    if run.cfg.lora.dora:
        return "a DoRA adapter does not scale with its delta: kept whole"
    if run.env.parallel == "fsdp":
        return "the model is sharded (FSDP): the adapter is kept whole"
    if not lora_b_params(run.model.model):
        return "no lora_B weights found: the adapter is kept whole"
    if others := other_trained(run.model.model):
        return (f"{len(others)} trained weights besides the adapter (e.g. {others[0]}): "
                "scaling the adapter alone would not lead back to the base; kept whole")
    return None
