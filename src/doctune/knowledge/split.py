"""Which facts are trained, which are held out, and which documents are controls.

Three splits, each decided by a hash of a stable key and the seed, so a fact keeps its
split when other documents are added or removed:

- ``control``: every fact of a *control document*. The lead's training must leave these
  documents out entirely (no document text, no questions): their accuracy is what the
  model knows without having read the page.
- ``heldout``: the document is trained on, but questions about this fact are not: the
  test of knowledge learnt from reading.
- ``trained``: the document and the questions about this fact are both trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from doctune.errors import ConfigError
from doctune.knowledge.facts import Fact

SPLITS = ("trained", "heldout", "control")


def unit_hash(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed`` (SHA-256, not Python's ``hash``)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class SplitPlan:
    """The outcome of :func:`split_facts`."""

    splits: dict[str, str]
    """Fact id -> ``"trained"``, ``"heldout"`` or ``"control"``."""
    control_docs: tuple[str, ...]
    """Documents held out whole, sorted."""

    def counts(self) -> dict[str, int]:
        """How many facts fall in each split."""
        values = list(self.splits.values())
        return {s: values.count(s) for s in SPLITS}


def control_documents(docs: Iterable[str], *, seed: int, fraction: float) -> tuple[str, ...]:
    """The documents kept out of training as a control (sorted).

    Each document is a control when its hash falls under ``fraction`` (so adding documents
    does not move the others); when that picks none of a few documents, the one with the
    lowest hash is (a control is the only measure of what training did to unseen text);
    when it would leave no document to train on, none is.
    """
    docs = sorted(set(docs))
    chosen = tuple(d for d in docs if unit_hash("doc:" + d, seed) < fraction)
    if not chosen and fraction > 0 and len(docs) >= 2:
        chosen = (min(docs, key=lambda d: unit_hash("doc:" + d, seed)),)
    return () if len(chosen) == len(docs) else chosen


def split_facts(facts: Sequence[Fact], *, seed: int, heldout_fraction: float,
                control_fraction: float, docs: Iterable[str] | None = None) -> SplitPlan:
    """Mark each fact ``trained``, ``heldout`` (question not trained) or ``control``.

    A fact's split depends only on its id, its document, ``seed`` and the fractions.
    ``docs`` are all the documents read (default: those of ``facts``); control documents
    are chosen among them, so a document without facts can be one too.
    Raises :class:`ConfigError` for a fraction outside [0, 1).
    """
    for name, value in (("heldout_fraction", heldout_fraction),
                        ("control_fraction", control_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"`{name}` must be in [0, 1), got {value}; e.g. 0.2 keeps one "
                              "fact in five out of training.")
    every = (f.doc for f in facts) if docs is None else docs
    controls = control_documents(every, seed=seed, fraction=control_fraction)
    control_set = set(controls)
    splits: dict[str, str] = {}
    for f in facts:
        if f.doc in control_set:
            splits[f.id] = "control"
        elif unit_hash("fact:" + f.id, seed) < heldout_fraction:
            splits[f.id] = "heldout"
        else:
            splits[f.id] = "trained"
    return SplitPlan(splits=splits, control_docs=controls)
