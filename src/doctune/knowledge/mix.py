"""Mixed training data: the docs' token windows plus questions with answers, rephrasings
and replayed general text, in fixed proportions, as one set of windows for the loop.

Every example is a :class:`~doctune.data.store.Window` (``ids``, ``loss_start``, ``doc``),
so ``collate`` and the loop take them as they take the docs' windows:

- ``docs``: the token store's training windows (control documents were left out of the
  store: see :func:`control_excludes`);
- ``qa``: a *trained* question and its answer rendered with the chat template
  (:func:`doctune.knowledge.chat.render_qa`). The loss falls on the answer and the
  end-of-turn token only: the prompt is exactly the part before ``loss_start``. Held-out
  and control questions are never rendered;
- ``rephrasings``: a restatement of a trained fact, and each amplified example (trained
  facts only: :mod:`doctune.knowledge.amplify`), packed into windows of up to
  ``block_size`` tokens, loss on every token. Held-out facts are learnt from the documents
  alone: a restatement of one would teach the sentence the held-out question is scored on;
- ``replay``: the base model's own answers to general prompts and its plain text written
  on from openings (``knowledge.replay_source: self``, :mod:`doctune.knowledge.replay`;
  loss on what the base wrote), or the first 70% of the
  shipped general English text (``text``, :func:`general_text`) in windows of
  ``block_size`` tokens, loss on every token.

:func:`mix_counts` fixes how many of each one pass over the mixed set holds (or, with
``knowledge.mix: once``, :func:`once_counts`: each example exactly once): the smallest
pass in which every docs window, every question and every rephrasing comes at least once,
each source taking its share. :class:`MixedWindows` draws them with a seeded sampler
(whole shuffled rounds of a source, then part of one), so a seed gives the same set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from doctune.data.store import IGNORE_INDEX, Window, WindowSet
from doctune.errors import DataError
from doctune.knowledge.chat import render_document, render_qa

SOURCES = ("docs", "qa", "rephrasings", "replay")
EXTRA_DOC = -1
"""``Window.doc`` of an example that is not a window of a docs document."""
GENERAL_TEXT = "alice.txt"
REPLAY_PART = 0.7
"""Share of the general text's paragraphs that may be replayed."""
EVAL_PART = 0.2
"""The last share measures forgetting in the knowledge evaluation; the paragraphs between the
two measure it during a run (``knowledge.forgetting_budget``), and are never trained."""


def general_text(part: Literal["replay", "dev", "eval"]) -> str:
    """The shipped public-domain English text (see ``knowledge/general/SOURCES.md``):
    its first 70% of paragraphs (``"replay"``), the next 10% (``"dev"``) or the last 20%
    (``"eval"``)."""
    text = resources.files("doctune.knowledge") / "general" / GENERAL_TEXT
    paras = text.read_text(encoding="utf-8").split("\n\n")
    cut, dev_end = int(len(paras) * REPLAY_PART), int(len(paras) * (1 - EVAL_PART))
    return "\n\n".join({"replay": paras[:cut], "dev": paras[cut:dev_end],
                         "eval": paras[dev_end:]}[part])


# ---- the synth folder ----------------------------------------------------------------------


@dataclass
class SynthData:
    """A ``doctune synth`` output folder, read."""

    folder: Path
    manifest: dict[str, Any]
    qa: list[dict[str, Any]] = field(default_factory=list)
    rephrasings: list[dict[str, Any]] = field(default_factory=list)
    mc: list[dict[str, Any]] = field(default_factory=list)
    amplified: list[dict[str, Any]] = field(default_factory=list)
    """``amplified.jsonl`` (trained facts only; empty when synth was not asked to amplify)."""

    @property
    def control_docs(self) -> list[str]:
        """Documents that training must leave out entirely."""
        return list(self.manifest.get("control_docs", []))

    def questions(self, split: str) -> list[dict[str, Any]]:
        """The question/answer pairs of one split (``trained``, ``heldout``, ``control``)."""
        return [q for q in self.qa if q["split"] == split]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_synth(folder: Path) -> SynthData:
    """Read a ``doctune synth`` folder; :class:`DataError` when it is missing or incomplete."""
    folder = Path(folder)
    redo = f"Write it with `doctune synth DOCS --out {folder}`."
    if not (folder / "manifest.json").is_file():
        raise DataError(f"`{folder}` is not a synth folder (no manifest.json). {redo}")
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        files = {name: _read_jsonl(folder / f"{name}.jsonl")
                 for name in ("qa", "rephrasings", "mc")}
        amplified = (_read_jsonl(folder / "amplified.jsonl")
                     if (folder / "amplified.jsonl").is_file() else [])
    except (OSError, ValueError) as e:
        raise DataError(f"`{folder}` cannot be read ({e}). {redo}") from None
    return SynthData(folder, manifest, files["qa"], files["rephrasings"], files["mc"], amplified)


def control_excludes(control_docs: Sequence[str]) -> list[str]:
    """Exclude globs that match exactly the given document paths (glob characters quoted)."""
    return ["".join(f"[{c}]" if c in "*?[" else c for c in rel) for rel in control_docs]


# ---- examples as windows -------------------------------------------------------------------


def _window(ids: Sequence[int], loss_start: int) -> Window:
    return Window(ids=np.asarray(ids, dtype=np.int64), loss_start=loss_start, doc=EXTRA_DOC)


def qa_windows(tokenizer: Any, pairs: Sequence[Mapping[str, Any]], *, block_size: int,
               system: str | None = None) -> tuple[list[Window], int]:
    """The *trained* pairs as windows whose loss starts at the answer, and how many were
    too long for ``block_size`` (left out). Held-out and control pairs are refused."""
    out, too_long = [], 0
    for p in pairs:
        if p["split"] != "trained":
            raise ValueError(f"question {p.get('id')} is {p['split']!r}: only trained "
                             "questions may be trained on")
        ex = render_qa(tokenizer, p["question"], p["answer"], system=system)
        if len(ex.input_ids) > block_size:
            too_long += 1
            continue
        start = next(k for k, x in enumerate(ex.labels) if x != IGNORE_INDEX)
        assert all(x != IGNORE_INDEX for x in ex.labels[start:])  # one answer span, at the end
        out.append(_window(ex.input_ids, start))
    return out, too_long


def answer_windows(tokenizer: Any, pairs: Sequence[Mapping[str, Any]], *, block_size: int,
                   system: str | None = None) -> list[Window]:
    """``{prompt, answer[, stopped]}`` pairs in the chat template, loss on the answer (the
    replayed answers of :mod:`doctune.knowledge.replay`); an answer with ``stopped: false``
    (cut off at a length) is trained without the end-of-turn token; a pair longer than
    ``block_size`` is left out. A pair of ``"kind": "text"`` is an opening and the plain
    text the model wrote on from it: one text, no chat template, the loss on what follows
    the opening's tokens."""
    out = []
    for p in pairs:
        if p.get("kind") == "text":
            text = render_document(tokenizer, p["prompt"] + p["answer"],
                                   add_eos=p.get("stopped", True))
            start = len(render_document(tokenizer, p["prompt"], add_eos=False).input_ids)
            if len(text.input_ids) <= block_size and start < len(text.input_ids):
                out.append(_window(text.input_ids, start))
            continue
        ex = render_qa(tokenizer, p["prompt"], p["answer"], system=system)
        ids = ex.input_ids if p.get("stopped", True) else ex.input_ids[:-1]
        if len(ids) <= block_size:
            out.append(_window(ids, next(k for k, x in enumerate(ex.labels)
                                         if x != IGNORE_INDEX)))
    return out


def text_windows(tokenizer: Any, texts: Sequence[str], *, block_size: int,
                 pack: bool = False, seed: int = 0) -> list[Window]:
    """The texts as windows with the loss on every token, each text cut to ``block_size``.

    ``pack``: several texts (each with its own BOS/EOS) share a window of up to
    ``block_size`` tokens, as pretraining packs documents: short restatements of one
    sentence would otherwise fill a batch with padding. Without it, one text per window.
    """
    rendered = [render_document(tokenizer, text).input_ids[:block_size] for text in texts]
    if not pack:
        return [_window(ids, 0) for ids in rendered]
    return [_window([t for k in window for t in rendered[k]], 0)
            for window in pack_best_fit([len(ids) for ids in rendered], block_size, seed=seed)]


def pack_best_fit(sizes: Sequence[int], capacity: int, *, seed: int) -> list[list[int]]:
    """Indices of ``sizes`` grouped into bins of at most ``capacity`` (each size <= it).

    The items are taken in a seeded random order, each into the open bin it fills best
    (*best fit*): bins end up nearly full (packing them in their given order left a fifth
    of a 256-token window empty on average), and a bin's texts are a random draw, not
    neighbours in the source, which are often restatements of one fact that the model
    would copy from earlier in the window instead of recalling. Each bin lists its items
    in the order they arrived. A pure function of (sizes, capacity, seed).
    """
    import bisect

    order = np.random.default_rng(seed).permutation(len(sizes)).tolist()
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin number), sorted
    for i in order:
        need = sizes[i]
        if need > capacity:
            raise ValueError(f"an item of {need} does not fit a bin of {capacity}")
        k = bisect.bisect_left(free, (need, -1))  # the fullest bin with room for it
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - need > 0:
            bisect.insort(free, (room - need, b))
    return bins


def replay_windows(tokenizer: Any, text: str, *, block_size: int) -> list[Window]:
    """``text`` in consecutive windows of ``block_size`` tokens (the last one shorter)."""
    ids = render_document(tokenizer, text).input_ids
    return [_window(ids[k:k + block_size], 0) for k in range(0, len(ids), block_size)
            if len(ids[k:k + block_size]) > 1]


# ---- proportions ---------------------------------------------------------------------------


def mix_counts(available: Mapping[str, int], shares: Mapping[str, float]) -> dict[str, int]:
    """How many examples of each source one pass over the mixed set holds.

    ``shares`` gives ``qa``, ``rephrasings`` and ``replay`` (the docs take the rest). The
    pass is the smallest in which every docs window, question and rephrasing comes at
    least once; each other source gets ``round(n * share)``. Raises :class:`DataError` for
    a share above 0 with nothing to draw from.
    """
    share = {"docs": 1.0 - sum(shares.get(s, 0.0) for s in SOURCES[1:]),
             **{s: shares.get(s, 0.0) for s in SOURCES[1:]}}
    _check_sources(available, share)
    n = max(math.ceil(available.get(s, 0) / share[s] - 1e-9)
            for s in SOURCES[:3] if share[s] > 0)
    counts = {s: round(n * share[s]) for s in SOURCES[1:]}
    counts = {"docs": n - sum(counts.values()), **counts}
    if available.get("docs", 0) == 0 or counts["docs"] <= 0:
        raise DataError("the docs gave no training windows to mix with; add documents.")
    return counts


def _check_sources(available: Mapping[str, int], shares: Mapping[str, float]) -> None:
    """A :class:`DataError` for a source with a share above 0 and nothing to draw from."""
    for s in SOURCES[1:]:
        if shares.get(s, 0.0) > 0 and available.get(s, 0) == 0:
            raise DataError(f"a {s} share of {shares[s]:g} was asked for, but there are no {s} "
                            "examples to train on. Check the synth folder (`doctune synth`), "
                            "or set that share to 0.")


def once_counts(available: Mapping[str, int], shares: Mapping[str, float]) -> dict[str, int]:
    """A pass that holds each docs window, and each example of every source with a share
    above 0, exactly once (``knowledge.mix: once``); replay, which has no end, takes
    ``replay`` of the pass. The budget then grows with the study data, not with a share."""
    _check_sources(available, shares)
    if available.get("docs", 0) == 0:
        raise DataError("the docs gave no training windows to mix with; add documents.")
    counts = {s: available.get(s, 0) if s == "docs" or shares.get(s, 0.0) > 0 else 0
              for s in SOURCES[:3]}
    replay = shares.get("replay", 0.0)
    counts["replay"] = round(sum(counts.values()) * replay / (1.0 - replay))
    return counts


def _draw(n_available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices below ``n_available``: whole shuffled rounds, then part of one."""
    rounds = [rng.permutation(n_available) for _ in range(math.ceil(count / n_available))]
    return np.concatenate(rounds)[:count] if rounds else np.zeros(0, dtype=np.int64)


class MixedWindows:
    """The docs' windows and the extra examples, in the proportions of :func:`mix_counts`.

    Behaves like a :class:`~doctune.data.store.WindowSet` for the loop (``len`` and
    indexing); entry ``i`` is ``(source, index in that source)``, docs first."""

    def __init__(self, docs: WindowSet, extra: Mapping[str, Sequence[Window]],
                 counts: Mapping[str, int], *, seed: int) -> None:
        self.docs = docs
        self.extra = {s: list(extra.get(s, ())) for s in SOURCES[1:]}
        self.counts = dict(counts)
        rng = np.random.default_rng(seed)
        parts = []
        for k, s in enumerate(SOURCES):
            n_avail = len(docs) if s == "docs" else len(self.extra[s])
            picks = _draw(n_avail, self.counts.get(s, 0), rng) if self.counts.get(s) else None
            parts.append(np.stack([np.full(len(picks), k), picks], 1) if picks is not None
                         else np.zeros((0, 2), dtype=np.int64))
        self.entries = np.concatenate(parts).astype(np.int64)
        """int64 (n, 2): source number (index into :data:`SOURCES`), index in that source."""
        self.distill = False
        """Replayed entries are trained towards the base's distribution, not their tokens
        (``knowledge.replay_loss: kl``; see :meth:`distilled`)."""

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Window:
        source, j = (int(v) for v in self.entries[i])
        return self.docs[j] if source == 0 else self.extra[SOURCES[source]][j]

    def lengths(self) -> np.ndarray:
        """Each entry's token count."""
        doc_lengths = self.docs.lengths()
        extra = {s: np.array([len(w.ids) for w in v], dtype=np.int64)
                 for s, v in self.extra.items()}
        out = np.zeros(len(self.entries), dtype=np.int64)
        for k, s in enumerate(SOURCES):
            rows = self.entries[:, 0] == k
            out[rows] = (doc_lengths if s == "docs" else extra[s])[self.entries[rows, 1]]
        return out

    def source_of(self, i: int) -> str:
        """Which source entry ``i`` comes from."""
        return SOURCES[int(self.entries[i, 0])]

    def distilled(self, i: int) -> bool:
        """Whether entry ``i`` is trained towards the base's distribution (a replayed entry
        of a set with :attr:`distill` on)."""
        return self.distill and int(self.entries[i, 0]) == SOURCES.index("replay")

    def available(self) -> dict[str, int]:
        """How many distinct examples each source has."""
        return {"docs": len(self.docs), **{s: len(v) for s, v in self.extra.items()}}

    def fingerprint(self) -> str:
        """A hash of what one pass holds beyond the docs' windows (which entries, and every
        extra window's tokens and loss start): a resumed run checks it with the token store's,
        so that study data mixed another way (another version of doctune, another seed) is
        refused, not trained on from the middle of the schedule."""
        import hashlib

        h = hashlib.sha256(np.ascontiguousarray(self.entries).tobytes())
        for source in SOURCES[1:]:
            for w in self.extra[source]:
                h.update(np.asarray(w.ids, dtype=np.int64).tobytes())
                h.update(int(w.loss_start).to_bytes(8, "little"))
            h.update(source.encode())
        return h.hexdigest()[:16]
