"""The knowledge step of a run's set-up (``knowledge:`` in the config): find or make the
synth data, leave control documents out of the docs, and mix questions, rephrasings and
replayed general text into the training windows (:mod:`doctune.knowledge.mix`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctune.config import Config
from doctune.data.store import WindowSet
from doctune.errors import ConfigError
from doctune.knowledge.mix import (
    MixedWindows,
    SynthData,
    answer_windows,
    control_excludes,
    general_text,
    load_synth,
    mix_counts,
    once_counts,
    qa_windows,
    replay_windows,
    text_windows,
)
from doctune.rundir import RunDir


@dataclass
class KnowledgeSetup:
    """What the knowledge step decided, for the header, ``run.json`` and the report."""

    synth: SynthData | None
    summary: dict[str, Any]

    @property
    def exclude(self) -> list[str]:
        """Globs that keep the control documents out of the token store."""
        return control_excludes(self.synth.control_docs) if self.synth else []

    @property
    def trains_qa(self) -> bool:
        return bool(self.summary.get("counts", {}).get("qa"))

    def header(self) -> str:
        c, a = self.summary["counts"], self.summary["available"]
        mixed = ", ".join(f"{c[s]} {s} ({a[s]} distinct)" for s in c if c[s])
        left = (f"; {len(self.synth.control_docs)} control docs and "
                f"{self.summary['heldout_questions']} held-out questions left out"
                if self.synth else "")
        long = self.summary.get("qa_too_long", 0)
        cut = (f"; {long} trained questions longer than data.block_size left out" if long else "")
        replay = f"; replay: {self.summary['replay']}" if self.summary.get("replay") else ""
        if self.summary.get("replay_loss"):
            replay += f", trained by {self.summary['replay_loss']}"
        if self.summary.get("self_study"):
            replay += f"; self-study: {self.summary['self_study']}"
        return f"knowledge mix per pass: {mixed}{left}{cut}{replay}"


def load_knowledge(cfg: Config, run: RunDir, *, make: bool = True,
                   say: Callable[[str], None] | None = None) -> KnowledgeSetup | None:
    """The synth data of this run (made into ``knowledge/`` for ``knowledge.auto``, unless
    ``make`` is False: then read from there, as another process made it), or None when the
    config mixes nothing in. ``say`` gets what the teacher (``knowledge.teacher_url``)
    could not give, if anything."""
    k, d = cfg.knowledge, cfg.data
    if not k.enabled:
        return None
    synth = None
    if k.auto and not make:
        synth = load_synth(run.knowledge_dir)
    elif k.auto:
        from doctune.knowledge.synth import synthesize

        assert d.path is not None
        teacher = None
        if k.teacher_url:
            from doctune.knowledge.teacher import TeacherConfig

            teacher = TeacherConfig(k.teacher_url, k.teacher_model or "")
        summary = synthesize(Path(d.path), run.knowledge_dir, seed=d.seed, include=d.include,
                             exclude=d.exclude, dialect=d.dialect,
                             heldout_fraction=k.heldout_fraction,
                             control_fraction=k.control_fraction, amplify=k.amplify,
                             amplify_with=k.amplify_with, teacher=teacher)
        failed = summary.teacher_errors
        if failed and say is not None:
            say(f"warning: the teacher gave nothing for {len(failed)} request(s), trained "
                f"without them (see {run.knowledge_dir / 'manifest.json'}); first: "
                f"{failed[0]}")
        synth = load_synth(run.knowledge_dir)
    elif k.synth_dir is not None:
        synth = load_synth(Path(k.synth_dir))
    return KnowledgeSetup(synth, {"synth_dir": str(synth.folder) if synth else None})


def mix_training_set(cfg: Config, knowledge: KnowledgeSetup, tokenizer: Any,
                     docs: WindowSet, *,
                     replay: Callable[[int], Sequence[Mapping[str, Any]]] | None = None,
                     study: Sequence[Mapping[str, Any]] | None = None,
                     sharded: bool = False) -> MixedWindows:
    """The docs' training windows with the configured shares of the other sources mixed in.
    ``replay``: gives the base model's answers to replay (:mod:`doctune.knowledge.replay`)
    for a number of replayed windows; None replays the shipped general text. ``study``: the base model's open-book answers to
    trained questions (:mod:`doctune.knowledge.selfstudy`), trained as more questions.
    Questions need a chat template: a tokenizer without one gets ChatML (see
    :func:`doctune.knowledge.chat.prepare_chat_tokenizer`; the model is resized to it).
    ``sharded``: the run is sharded (FSDP), where ``knowledge.replay_loss: kl`` falls back to
    cross-entropy (said in the header)."""
    from doctune.knowledge.chat import prepare_chat_tokenizer

    k, size, synth, seed = cfg.knowledge, cfg.data.block_size, knowledge.synth, cfg.train.seed
    extra: dict[str, Any] = {}
    too_long = 0
    if k.qa_share and synth is not None:
        if cfg.lora.enabled and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"`knowledge.qa_share` with LoRA needs a model whose tokenizer has a chat "
                f"template, and {cfg.model.name} has none: the ChatML tokens doctune would add "
                "are new embeddings a LoRA adapter does not train or save. Train all weights "
                "(`--set lora.enabled=false`) or start from an instruct model.")
        prepare_chat_tokenizer(tokenizer)
        pairs = synth.questions("trained")
        if study:
            pairs = [*pairs, *({"id": a["id"], "question": a["question"], "answer": a["answer"],
                                "split": "trained"} for a in study)]
            knowledge.summary["self_study"] = f"{len(study)} open-book answers of the base"
        extra["qa"], too_long = qa_windows(tokenizer, pairs, block_size=size,
                                           system=k.system_prompt)
    if k.rephrase_share and synth is not None:
        # trained facts only: held-out facts are learnt from the documents alone
        texts = [r["text"] for r in synth.rephrasings if r["split"] == "trained"]
        texts += [a["text"] for a in synth.amplified if a["split"] == "trained"]
        extra["rephrasings"] = text_windows(tokenizer, texts, block_size=size, pack=True, seed=seed)
    shares = {"qa": k.qa_share, "rephrasings": k.rephrase_share, "replay": k.replay_share}
    count = once_counts if k.mix == "once" else mix_counts
    if k.replay_share and replay is not None:
        # the replayed count does not depend on how many answers there are: ask for that many
        wanted = count({"docs": len(docs), **{s: len(v) for s, v in extra.items()},
                        "replay": 1}, shares)["replay"]
        answers = replay(wanted)
        extra["replay"] = answer_windows(tokenizer, answers, block_size=size,
                                         system=k.system_prompt)
        plain = sum(a.get("kind") == "text" for a in answers)
        knowledge.summary["replay"] = (
            f"the base model's answers to {len(answers) - plain} general prompts"
            + (f" and its plain text written on from {plain} openings" if plain else ""))
    if k.replay_share and not extra.get("replay"):
        if replay is not None:  # every answer empty or longer than a window: a small model
            knowledge.summary["replay"] = ("the shipped general English text: the base model's "
                                           "answers were empty or too long")
        else:
            knowledge.summary["replay"] = ("the shipped general English text (Alice in "
                                           "Wonderland, its first 70%)")
        extra["replay"] = replay_windows(tokenizer, general_text("replay"), block_size=size)
    available = {"docs": len(docs), **{s: len(v) for s, v in extra.items()}}
    counts = count(available, shares)
    mixed = MixedWindows(docs, extra, counts, seed=seed)
    if counts.get("replay") and k.replay_loss == "kl":
        mixed.distill = cfg.lora.enabled and not sharded
        if mixed.distill:
            said = "KL to the base's distribution (the model with its adapter off)"
        elif not sharded:
            said = ("cross-entropy: knowledge.replay_loss kl needs LoRA (the base is the model "
                    "with its adapter off), and this run trains every weight")
        else:
            said = ("cross-entropy: knowledge.replay_loss kl is not trained under FSDP (a rank "
                    "with replayed windows would run more forward passes, each gathering the "
                    "shards, than the ranks without); use DDP (`train.parallel=ddp`)")
        knowledge.summary["replay_loss"] = said
    knowledge.summary.update({
        "shares": {"docs": round(1 - sum(shares.values()), 6), **shares},
        "counts": counts, "available": mixed.available(), "qa_too_long": too_long,
        "control_docs": synth.control_docs if synth else [],
        "heldout_questions": len(synth.questions("heldout")) if synth else 0})
    return mixed
