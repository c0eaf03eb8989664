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
smooth multiple-choice accuracy: a handful of questions changes it by more than one step of
accuracy); the accuracy is logged beside it. The chosen step is the *last* one within
:data:`TOLERANCE` of the best score: a later step has read more of the docs, and a dev set
of a few dozen questions cannot tell such steps apart. Each check that becomes the choice
writes the trainable weights (an adapter's are a few MB), its step and the best score into
one file, ``best/weights.safetensors``, atomically: a resumed run keeps its choice.
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
TOLERANCE = 0.01
"""A later check within this much of the best dev score is chosen over an earlier, better one."""


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
    top: float = 0.0
    """The best score of the run up to this check (for the chosen check, in its file)."""


def right_option_probability(scored: Sequence[Sequence[tuple[float, int]]],
                             answers: Sequence[int]) -> float:
    """Mean over items of softmax(option log-likelihoods)[right option]."""
    probs = []
    for options, answer in zip(scored, answers, strict=True):
        lps = [lp for lp, _ in options]
        top = max(lps)
        total = sum(math.exp(lp - top) for lp in lps)
        probs.append(math.exp(lps[answer] - top) / total)
    return sum(probs) / len(probs) if probs else 0.0


class DevChooser:
    """Asks the dev questions at its check steps and keeps the best step's weights."""

    def __init__(self, run: Run, facts: list[str], items: list[Item]) -> None:
        self.run, self.facts, self.items = run, facts, items
        self.file = run.folder.best_dir / "weights.safetensors"
        self.checks: list[DevScore] = []
        self.best: DevScore | None = self._saved()
        """The chosen check so far (its ``top``: the best score so far)."""

    # ---- when ---------------------------------------------------------------------
    def due(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` is a check step: the last one and ``dev_checks - 1`` evenly
        spaced before it."""
        n = max(1, min(self.run.cfg.knowledge.dev_checks, total_steps))
        return step in {round(total_steps * k / n) for k in range(1, n + 1)}

    # ---- the check -----------------------------------------------------------------
    def check(self, step: int) -> DevScore:
        """Score the dev questions now; save the weights when this check becomes the choice
        (within :data:`TOLERANCE` of the best score so far)."""
        from doctune.knowledge.metrics import mc_choice
        from doctune.knowledge.score import option_logprobs

        run = self.run
        model = run.model.model
        was_training = model.training
        model.eval()
        try:
            with run.hw.precision.autocast(run.hw.device):
                scored = [option_logprobs(model, run.inputs.tokenizer, i.question,
                                          list(i.options), system=run.cfg.knowledge.system_prompt)
                          for i in self.items]
        finally:
            model.train(was_training)
        answers = [i.answer_index for i in self.items]
        right = [mc_choice([lp for lp, _ in s]) == a for s, a in zip(scored, answers, strict=True)]
        got = self.consider(step, right_option_probability(scored, answers),
                            sum(right) / len(right))
        run.monitor.log_eval(step, {"dev_score": got.score, "dev_mc_acc": got.accuracy})
        return got

    def consider(self, step: int, score: float, accuracy: float) -> DevScore:
        """Record a check's score; it becomes the choice (its weights saved) when it is
        within :data:`TOLERANCE` of the best score so far."""
        top = max(score, self.best.top if self.best is not None else score)
        got = DevScore(step, score, accuracy, top)
        self.checks.append(got)
        if got.score >= top - TOLERANCE:
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
        why = (f"step {best.step} answered the {len(self.items)} dev questions best "
               f"(score {best.score:.3f}, multiple choice {best.accuracy:.0%}; the last "
               f"check within {TOLERANCE} of the best score, {best.top:.3f})")
        if last is not None and best.step != last_step:
            why += f"; the last step scored {last.score:.3f} ({last.accuracy:.0%})"
        return {**fact, "step": best.step, "dev_score": round(best.score, 4),
                "dev_mc_acc": round(best.accuracy, 4), "why": why}

    # ---- the file ------------------------------------------------------------------
    def _save(self, got: DevScore) -> None:
        from safetensors.torch import save_file

        from doctune.atomic import atomic_path
        from doctune.train.checkpoint import trainable_state

        if not self.run.env.is_main:
            return
        meta = {"step": str(got.step), "dev_score": repr(got.score),
                "dev_mc_acc": repr(got.accuracy), "top": repr(got.top)}
        with atomic_path(self.file) as tmp:
            save_file(trainable_state(self.run.model.model), str(tmp), metadata=meta)

    def _saved(self) -> DevScore | None:
        """The best check of an earlier part of this run (a resume), from its file."""
        from safetensors import safe_open

        if not self.file.is_file():
            return None
        try:
            with safe_open(str(self.file), framework="pt") as f:
                meta = f.metadata() or {}
            return DevScore(int(meta["step"]), float(meta["dev_score"]),
                            float(meta["dev_mc_acc"]), float(meta["top"]))
        except (OSError, ValueError, KeyError):
            return None  # unreadable: the checks to come choose again

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
