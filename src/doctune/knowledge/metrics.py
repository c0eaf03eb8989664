"""The arithmetic of knowledge evaluation: no judge model, only counted numbers.

- :func:`normalize_answer`: SQuAD's normalisation (lowercase, punctuation and the
  articles a/an/the removed, white space collapsed).
- :func:`exact_match`, :func:`token_f1`: against one or more gold answers (the best).
- :func:`answer_words`: an answer's normalised words (punctuation alone, ``/`` or ``[]``,
  kept as one word).
- :func:`answer_in_reply`: a gold answer's normalised words, in order, inside the reply (a
  sentence that holds the right answer counts; a reply that lists many options is not
  guarded against, so read it beside exact match).
- :func:`mc_choice`, :func:`mc_accuracy`: multiple choice from per-option log-likelihoods,
  raw or divided by the option's token count.
- :func:`wilson_interval`: a confidence interval for an accuracy that behaves at 0/n and n/n.
- :func:`stop_rate`: the share of generations that ended with the end-of-turn token.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
_ALONE = r"(?<![^\s`'\"(]){}(?![^\s`'\".,;:)])"
"""An answer of punctuation alone, standing alone in a reply: only white space, backticks,
quotes or brackets before it, and those or a sentence's end after it."""


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_words(text: str) -> list[str]:
    """The words :func:`normalize_answer` leaves; an answer of punctuation alone (``/``,
    ``[]``, ``''``, ``./``) is one word, itself without white space and backticks:
    normalised, it would be empty, which a reply of no words at all would match."""
    words = normalize_answer(text).split()
    if words:
        return words
    bare = "".join(text.split()).replace("`", "")
    return [bare] if bare else []


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("at least one gold answer is needed")
    return golds


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0
    (:func:`answer_words`: ``/`` is matched by ``/``, not by an empty reply)."""
    pred = answer_words(prediction)
    return float(any(pred == answer_words(g) for g in _golds(gold)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:  # SQuAD: both empty is a match, one empty is not
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token F1 of the normalised answers (:func:`answer_words`), the best over the
    gold answers."""
    pred = answer_words(prediction)
    return max(_f1(pred, answer_words(g)) for g in _golds(gold))


def answer_in_reply(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when a gold answer's normalised words occur as a run in the normalised reply; a
    gold of punctuation alone (``/``, ``[]``) when it stands in the reply between white
    space, backticks, quotes or the end of a sentence (so ``/`` is not found in a path)."""
    pred = normalize_answer(prediction).split()
    for g in _golds(gold):
        words = normalize_answer(g).split()
        if words and any(pred[k:k + len(words)] == words
                         for k in range(len(pred) - len(words) + 1)):
            return 1.0
        if not words and (bare := answer_words(g)) and re.search(
                _ALONE.format(re.escape(bare[0])), prediction):
            return 1.0
    return 0.0


def mc_choice(logprobs: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """The chosen option: the highest log-likelihood, or the highest per token when
    ``lengths`` (each option's token count) is given. Ties go to the first option."""
    if not logprobs:
        raise ValueError("no options to choose from")
    scores = list(logprobs)
    if lengths is not None:
        if len(lengths) != len(scores) or any(n <= 0 for n in lengths):
            raise ValueError(f"lengths must be one positive count per option, got {lengths}")
        scores = [s / n for s, n in zip(scores, lengths, strict=True)]
    return max(range(len(scores)), key=lambda k: (scores[k], -k))


@dataclass(frozen=True)
class Accuracy:
    """An accuracy with its Wilson interval."""

    correct: int
    total: int
    low: float
    high: float

    @property
    def value(self) -> float:
        """correct / total (0.0 for no items)."""
        return self.correct / self.total if self.total else 0.0


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / total``.

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``, with ``z`` the normal quantile
    of ``(1 + confidence) / 2``. ``(0.0, 1.0)`` when ``total`` is 0.
    """
    if not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got correct={correct}, total={total}")
    if total == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    n, p = total, correct / total
    center = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    low = 0.0 if correct == 0 else (center - margin) / denom  # exact ends, no rounding dust
    high = 1.0 if correct == total else (center + margin) / denom
    return low, high


def accuracy(hits: Sequence[bool | float], confidence: float = 0.95) -> Accuracy:
    """How many of ``hits`` are true (or 1.0), with the Wilson interval."""
    correct = sum(1 for h in hits if h)
    low, high = wilson_interval(correct, len(hits), confidence)
    return Accuracy(correct, len(hits), low, high)


def mc_accuracy(items: Sequence[Sequence[float]], answers: Sequence[int], *,
                lengths: Sequence[Sequence[int]] | None = None,
                confidence: float = 0.95) -> Accuracy:
    """Multiple-choice accuracy: item ``k``'s options have log-likelihoods ``items[k]`` and
    the right one is ``answers[k]``; with ``lengths``, the per-token variant."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    hits = [mc_choice(lp, None if lengths is None else lengths[k]) == answers[k]
            for k, lp in enumerate(items)]
    return accuracy(hits, confidence)


def stop_rate(generations: Sequence[Sequence[int]], stop_ids: Sequence[int] | int) -> float:
    """The share of generated id sequences whose last id is a stop id (0.0 for none)."""
    stops = {stop_ids} if isinstance(stop_ids, int) else set(stop_ids)
    if not generations:
        return 0.0
    return sum(1 for g in generations if g and g[-1] in stops) / len(generations)
