"""Which step's weights become ``final/``: the step that answers a dev set best.

Fine-tuning on new facts helps up to a point and then makes a model worse at what it was
asked (Gekhman et al. 2024, "Does fine-tuning LLMs on new knowledge encourage
hallucinations?": stop on held-out questions, not on the loss). A run with knowledge data sets
some held-out facts aside as a *dev split* (``knowledge.dev_fraction`` of them, each chosen by
a hash of its id and the seed): their multiple-choice questions, closed book, are asked
``knowledge.dev_checks`` times during training (evenly spaced, the last after the last
step), and the weights of the best check become ``final/``. ``run.json`` says which step and
why (``final_choice``). The dev facts are never test questions: the knowledge evaluation of
such a run leaves them out.

The score is the mean probability the model gives the right option among the options (a
smooth multiple-choice accuracy); the accuracy is logged beside it. The chosen step is the
*last* one that is not significantly worse than the best-scoring one: paired over the dev
questions, its mean difference in probability is within :data:`Z` standard errors of zero.
A later step has read more of the docs, and a dev set of a dozen questions cannot tell
steps apart that score a few points apart; an earlier step wins only when it is clearly
better. Each check that becomes the choice writes the trainable weights (an adapter's are a
few MB), its step and the best check's scores into one file, ``best/weights.safetensors``,
atomically: a resumed run keeps its choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from doctune.knowledge.split import unit_hash

if TYPE_CHECKING:
    import torch

    from doctune.knowledge.mix import SynthData
    from doctune.knowledge.questions import Item
    from doctune.train.parts import Run

MIN_DEV_QUESTIONS = 8
"""Fewer dev questions than this choose nothing (the last step is final): their score is noise."""
MAX_DEV_QUESTIONS = 64
"""Dev questions asked at each check at most (a seeded-order prefix): a few seconds each."""
Z = 2.0
"""Standard errors by which a later check must fall behind the best one to be passed over."""


def is_dev(fact_id: str, *, seed: int, fraction: float) -> bool:
    """Whether a held-out fact belongs to the dev split (a pure function of its id)."""
    return unit_hash("dev:" + fact_id, seed) < fraction


def dev_facts(synth: SynthData, *, seed: int, fraction: float) -> list[str]:
    """The held-out facts of the dev split, sorted."""
    held = {r["fact_id"] for r in synth.mc if r.get("split") == "heldout" and r.get("fact_id")}
    return sorted(f for f in held if is_dev(f, seed=seed, fraction=fraction))


def dev_items(synth: SynthData, facts: Sequence[str]) -> list[Item]:
    """The multiple-choice items (every source: natural and sentence-with-a-blank) of the
    dev facts, in a seeded order, at most :data:`MAX_DEV_QUESTIONS`."""
    from doctune.knowledge.questions import generated_items

    chosen = set(facts)
    rows = [r for r in synth.mc if r.get("split") == "heldout" and r.get("fact_id") in chosen]
    _, items = generated_items([], rows, source=None)
    return sorted(items, key=lambda i: i.id)[:MAX_DEV_QUESTIONS]


@dataclass(frozen=True)
class DevScore:
    """One check of the dev questions."""

    step: int
    score: float
    """Mean probability of the right option (among the options)."""
    accuracy: float
    probs: tuple[float, ...] = ()
    """Each dev question's probability of the right option."""


def right_option_probabilities(scored: Sequence[Sequence[tuple[float, int]]],
                               answers: Sequence[int]) -> list[float]:
    """Per item, softmax(option log-likelihoods)[right option]."""
    probs = []
    for options, answer in zip(scored, answers, strict=True):
        lps = [lp for lp, _ in options]
        top = max(lps)
        total = sum(math.exp(lp - top) for lp in lps)
        probs.append(math.exp(lps[answer] - top) / total)
    return probs


def clearly_worse(probs: Sequence[float], than: Sequence[float], *, z: float = Z) -> bool:
    """Whether ``probs`` are lower than ``than`` (the same questions) by more than ``z``
    standard errors of their paired mean difference."""
    diffs = [a - b for a, b in zip(probs, than, strict=True)]
    n = len(diffs)
    if n < 2:
        return False
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean < -z * sd / math.sqrt(n)


class DevChooser:
    """Asks the dev questions at its check steps and keeps the best step's weights."""

    def __init__(self, run: Run, facts: list[str], items: list[Item]) -> None:
        self.run, self.facts, self.items = run, facts, items
        self.file = run.folder.best_dir / "weights.safetensors"
        self.checks: list[DevScore] = []
        self.best: DevScore | None = None
        """The chosen check so far."""
        self.top: DevScore | None = None
        """The best-scoring check so far."""
        self._read_saved()

    # ---- when ---------------------------------------------------------------------
    def due(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` is a check step: the last one and ``dev_checks - 1`` evenly
        spaced before it."""
        n = max(1, min(self.run.cfg.knowledge.dev_checks, total_steps))
        return step in {round(total_steps * k / n) for k in range(1, n + 1)}

    # ---- the check -----------------------------------------------------------------
    def check(self, step: int) -> DevScore:
        """Score the dev questions now; save the weights when this check becomes the choice
        (not clearly worse than the best check so far)."""
        from doctune.knowledge.score import score_mc

        run = self.run
        model = run.model.model
        was_training = model.training
        model.eval()
        answers = [i.answer_index for i in self.items]
        try:
            with run.hw.precision.autocast(run.hw.device):
                mc = score_mc(model, run.inputs.tokenizer, [i.question for i in self.items],
                              [list(i.options) for i in self.items], answers,
                              system=run.cfg.knowledge.system_prompt)
        finally:
            model.train(was_training)
        got = self.consider(step, right_option_probabilities(mc.logprobs, answers),
                            mc.accuracy.value)
        run.monitor.log_eval(step, {"dev_score": got.score, "dev_mc_acc": got.accuracy})
        return got

    def consider(self, step: int, probs: Sequence[float], accuracy: float) -> DevScore:
        """Record a check (each question's probability of the right option); it becomes the
        choice (its weights saved) unless it is clearly worse than the best check so far."""
        got = DevScore(step, sum(probs) / len(probs) if probs else 0.0, accuracy, tuple(probs))
        self.checks.append(got)
        if self.top is None or got.score > self.top.score:
            self.top = got
        if not clearly_worse(got.probs, self.top.probs):
            self.best = got
            self._save(got)
        return got

    # ---- the end -------------------------------------------------------------------
    def restore(self, last_step: int) -> dict[str, Any]:
        """Put the best step's weights back into the model when it is not the last step;
        the ``final_choice`` fact that says which step and why."""
        best = self.best
        fact: dict[str, Any] = {"dev_facts": self.facts, "dev_questions": len(self.items),
                                "checks": [{"step": c.step, "dev_score": round(c.score, 4),
                                            "dev_mc_acc": round(c.accuracy, 4)}
                                           for c in self.checks]}
        if best is None:
            return {**fact, "step": last_step, "why": "no dev check was made: the last step"}
        if best.step != last_step:
            self._load()
        last = next((c for c in self.checks if c.step == last_step), None)
        top = self.top or best
        if top.step == best.step:
            why = (f"the best of {len(self.checks)} checks on the {len(self.items)} dev questions "
                   f"(score {best.score:.3f}, multiple choice {best.accuracy:.0%})")
        else:
            why = (f"the last check not clearly worse on the {len(self.items)} dev questions "
                   f"than the best one (step {top.step}: score {top.score:.3f}, multiple choice "
                   f"{top.accuracy:.0%}): step {best.step}, score {best.score:.3f}, multiple "
                   f"choice {best.accuracy:.0%}")
        if last is not None and best.step != last_step:
            why += (f"; the last step scored {last.score:.3f} ({last.accuracy:.0%}), more than "
                    f"{Z:g} standard errors below")
        return {**fact, "step": best.step, "dev_score": round(best.score, 4),
                "dev_mc_acc": round(best.accuracy, 4), "why": why}

    # ---- the file ------------------------------------------------------------------
    def _save(self, got: DevScore) -> None:
        from safetensors.torch import save_file

        from doctune.atomic import atomic_path
        from doctune.train.checkpoint import trainable_state

        if not self.run.env.is_main:
            return
        import json

        top = self.top or got
        meta = {"step": str(got.step), "dev_score": repr(got.score),
                "dev_mc_acc": repr(got.accuracy),
                "top": json.dumps({"step": top.step, "score": top.score,
                                   "accuracy": top.accuracy, "probs": list(top.probs)})}
        with atomic_path(self.file) as tmp:
            save_file(trainable_state(self.run.model.model), str(tmp), metadata=meta)

    def _read_saved(self) -> None:
        """The chosen and the best check of an earlier part of this run (a resume), from
        the file; nothing when there is none or it is unreadable (the checks to come choose)."""
        import json

        from safetensors import safe_open

        if not self.file.is_file():
            return
        try:
            with safe_open(str(self.file), framework="pt") as f:
                meta = f.metadata() or {}
            top = json.loads(meta["top"])
            self.best = DevScore(int(meta["step"]), float(meta["dev_score"]),
                                 float(meta["dev_mc_acc"]))
            self.top = DevScore(int(top["step"]), float(top["score"]), float(top["accuracy"]),
                                tuple(float(p) for p in top["probs"]))
        except (OSError, ValueError, KeyError, TypeError):
            self.best = self.top = None

    def _load(self) -> None:
        import torch
        from safetensors.torch import load_file

        weights = load_file(str(self.file))
        params: dict[str, torch.nn.Parameter] = {
            n: p for n, p in self.run.model.model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name].to(p.device, p.dtype))


def make_chooser(run: Run) -> tuple[DevChooser | None, str | None]:
    """The run's chooser, or None and why not (the last step is then final)."""
    k, env = run.cfg.knowledge, run.env
    knowledge = run.inputs.knowledge
    synth = knowledge.synth if knowledge is not None else None
    if synth is None or not k.dev_fraction or not k.dev_checks:
        return None, None
    if env.parallel == "fsdp":
        return None, "the model is sharded (FSDP): the last step is final"
    facts = dev_facts(synth, seed=run.cfg.data.seed, fraction=k.dev_fraction)
    items = dev_items(synth, facts)
    if len(items) < MIN_DEV_QUESTIONS:
        return None, (f"only {len(items)} dev questions (from {len(facts)} held-out facts; "
                      f"{MIN_DEV_QUESTIONS} are needed to choose): the last step is final")
    return DevChooser(run, facts, items), None
