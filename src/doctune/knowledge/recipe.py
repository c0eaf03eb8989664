"""The recipe ``doctune train DOCS --model X`` trains when nothing else is asked for.

A model with a chat template is trained to *answer from the docs*, not only to write like
them (the *study* recipe, measured in ``benchmarks/bench_knowledge.py``): the documents,
their facts restated about :data:`AMPLIFY` times their size (:mod:`doctune.knowledge.amplify`),
trained questions with their answers in the chat template, and replay against forgetting:
one pass over that mix, which holds every document window, trained question and
restatement once (``knowledge.mix: once``; the restatements packed into windows of
``data.block_size`` tokens), and 5% replay: the budget comes from the data, not a step
count. The replay is the base model's own answers to general prompts
(:mod:`doctune.knowledge.replay`). Some facts' questions are held out of training, so the
run ends by scoring what reading taught (:func:`doctune.knowledge.exam.evaluate_run`); no
document is held out (``knowledge.control_fraction=0``), as a user wants every page known.

The study recipe is not used (the documents alone are trained, as before) when:

- ``--docs-only`` is given;
- the config says what to mix (any of :data:`MIX_KEYS` under ``knowledge:`` is set); keys
  that only tune the split or the evaluation (``heldout_fraction``, ``dev_fraction``,
  ``system_prompt``, ...) keep the recipe, with the user's values;
- the tokenizer has no chat template (a base model, ``scratch:tiny``): questions would need
  chat tokens the model never learnt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from doctune.config import Config, KnowledgeConfig

AMPLIFY = 5.0
"""Amplified study data, in multiples of the trained documents' tokens."""
STUDY: dict[str, Any] = {
    "knowledge.auto": True,
    "knowledge.amplify": AMPLIFY,
    "knowledge.mix": "once",
    "knowledge.qa_share": 0.6,
    "knowledge.rephrase_share": 0.3,
    "knowledge.replay_share": 0.05,
    "knowledge.control_fraction": 0.0,
}
"""The ``knowledge`` settings of the study recipe (the docs take the rest of each pass)."""
MIX_KEYS = frozenset({"synth_dir", "auto", "qa_share", "rephrase_share", "replay_share", "mix",
                      "replay_source", "self_study", "amplify"})
"""``knowledge`` keys that say what to mix: setting any of them means the config's own mix."""


@dataclass(frozen=True)
class Recipe:
    """What ``doctune train`` will train, and a line saying why."""

    name: str
    """``study`` or ``docs``."""
    overrides: dict[str, Any]
    """``--set``-style keys to apply to the config (empty for ``docs``)."""
    reason: str


def choose_recipe(cfg: Config, *, docs_only: bool = False, tokenizer: Any = None) -> Recipe:
    """The recipe for this config (see the module docstring). ``tokenizer``: the model's,
    if already loaded (else loaded here, to look for a chat template)."""
    if docs_only:
        return Recipe("docs", {}, "--docs-only: the documents alone")
    default = KnowledgeConfig()
    own = {k for k in KnowledgeConfig.model_fields
           if getattr(cfg.knowledge, k) != getattr(default, k)}
    if own & MIX_KEYS:
        return Recipe("docs" if not cfg.knowledge.enabled else "custom", {},
                      "the config's own `knowledge:` settings")
    if cfg.data.path is None:
        return Recipe("docs", {}, "no docs folder to make study data from")
    if str(cfg.model.name).startswith("scratch:"):
        return Recipe("docs", {}, "a model trained from scratch has no chat template")
    if tokenizer is None:
        from doctune.data.tokenize import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    if not getattr(tokenizer, "chat_template", None):
        return Recipe("docs", {}, f"{cfg.model.name} has no chat template (a base model): "
                      "the documents alone")
    parts = ["documents", f"their facts restated {AMPLIFY:g}x", "questions"]
    if STUDY["knowledge.replay_share"]:
        parts.append("its own sampled answers to general prompts replayed")
    overrides = {k: v for k, v in STUDY.items() if k.removeprefix("knowledge.") not in own}
    return Recipe("study", overrides,
                  f"{' + '.join(parts)}, one pass (`--docs-only` for the documents alone)")
