"""Perplexity of a model on a docs folder, per document and overall.

The docs go through exactly what training used: ``doctune.data.prepare`` (cleaning,
de-duplication, tokenisation, windows with the run's ``block_size`` and ``overlap``), then
``doctune.train.loss.causal_lm_loss`` on each window. Every token is scored once, with the
context training gave it, so a run's validation documents score here what its
``val_loss_after`` says.

A packed window holds the tails of several documents; it is scored once per document in
it, with the other documents' positions masked, so each token's loss goes to its document.
"""

from __future__ import annotations

import bisect
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.data.settings import DataSettings
from doctune.errors import DataError
from doctune.modeling import pad_token_id
from doctune.train.validation import perplexity

if TYPE_CHECKING:
    import numpy as np

    from doctune.data.store import WindowSet
    from doctune.inference import Loaded


@dataclass
class DocScore:
    """One document's score."""

    rel: str
    """Path relative to the docs folder."""
    tokens: int
    """Tokens scored: the document's and its end-of-text, except one that opens a window."""
    loss: float
    """Mean loss per token (nats)."""
    ppl: float


@dataclass
class EvalResult:
    """Scores of one model on one docs folder."""

    model: str
    loss: float
    ppl: float
    tokens: int
    documents: list[DocScore]
    settings: dict[str, Any]
    tokenizer_hash: str
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def settings_for(loaded: Loaded, *, block_size: int | None = None, overlap: int | None = None) -> DataSettings:
    """The run's data settings (defaults of the config schema for a plain model), capped by
    the model's context; explicit ``block_size``/``overlap`` win. Every document is scored
    (``val_fraction`` 0)."""
    from doctune.config import DataConfig
    from doctune.inference import context_length

    run = loaded.source.run
    settings = DataSettings.from_config(run.config().data if run else DataConfig())
    bs = block_size or settings.block_size
    n_ctx = context_length(loaded.model)
    if block_size is None and n_ctx is not None:
        bs = min(bs, n_ctx)
    ov = overlap if overlap is not None else min(settings.overlap, bs // 2)
    return settings.but(block_size=bs, overlap=ov, val_fraction=0.0)


def _doc_of_offsets(documents: Sequence[dict[str, Any]]) -> list[int]:
    return [int(doc["offset"]) for doc in documents]


def _rows(windows: WindowSet, starts: list[int]) -> list[tuple[int, int, np.ndarray]]:
    """``(window, doc, position mask)`` rows, sorted by document.

    A window of one segment is one row; a packed window gives one row per document in it.
    """
    import numpy as np

    rows: list[tuple[int, int, np.ndarray]] = []
    for i in range(len(windows)):
        seg_lo, seg_hi, length, _loss_start, _doc = (int(v) for v in windows.index[i])
        docs = np.empty(length, dtype=np.int64)  # (T,) document of each position
        pos = 0
        for off, ln in windows.segments[seg_lo:seg_hi].tolist():
            docs[pos:pos + ln] = bisect.bisect_right(starts, off) - 1
            pos += ln
        for d in dict.fromkeys(docs.tolist()):
            rows.append((i, d, docs == d))
    rows.sort(key=lambda r: (r[1], r[0]))
    return rows


def score_windows(loaded: Loaded, windows: WindowSet, documents: Sequence[dict[str, Any]], *,
                  batch_size: int, precision: str = "auto") -> dict[int, tuple[float, int]]:
    """``{doc: (loss_sum, n_tokens)}`` over ``windows``; each token counted once, for its document."""
    import torch

    from doctune.data.store import IGNORE_INDEX
    from doctune.device import resolve_precision
    from doctune.train.batches import collate
    from doctune.train.loss import causal_lm_loss

    prec = resolve_precision(precision, loaded.device)
    tok = loaded.tokenizer
    pad_id = pad_token_id(tok)
    rows = _rows(windows, _doc_of_offsets(documents))
    sums: dict[int, tuple[float, int]] = {}
    i = 0
    with torch.no_grad():
        while i < len(rows):
            doc = rows[i][1]
            j = i
            while j < len(rows) and j - i < batch_size and rows[j][1] == doc:
                j += 1
            batch = rows[i:j]  # rows of one document: the batch's loss sum is that document's
            input_ids, labels = collate([windows[w] for w, _, _ in batch], pad_id)  # (B, T)
            for r, (_, _, mask) in enumerate(batch):
                labels[r, :len(mask)][~torch.from_numpy(mask)] = IGNORE_INDEX
            with prec.autocast(loaded.device):
                # fused: chunked logits, the memory-light path training uses (same numbers)
                loss_sum, n_tok = causal_lm_loss(loaded.model, input_ids.to(loaded.device),
                                                 labels.to(loaded.device), fused=True)
            total, count = sums.get(doc, (0.0, 0))
            sums[doc] = (total + float(loss_sum), count + int(n_tok))
            i = j
    return sums


def evaluate_docs(loaded: Loaded, docs: Path, settings: DataSettings, *, batch_size: int,
                  precision: str = "auto", workdir: Path | None = None) -> EvalResult:
    """Perplexity of ``loaded`` on the docs under ``docs``, per document and overall.

    The docs are prepared into ``workdir`` (a temporary folder when None) with
    ``val_fraction=0``, so every document is scored. Raises :class:`DataError` when the
    folder holds no usable document.
    """
    from doctune.data.prepare import prepare
    from doctune.data.store import TokenStore

    docs = Path(docs).expanduser()
    if not docs.exists():
        raise DataError(f"--data {docs} does not exist; pass the docs folder (or one file) to score.")
    with tempfile.TemporaryDirectory(prefix="doctune-eval-") as tmp:
        store_dir = workdir or Path(tmp)
        summary = prepare(docs, store_dir, settings.but(val_fraction=0.0),
                          tokenizer=loaded.tokenizer)
        store = TokenStore.open(store_dir)
        documents = store.manifest["documents"]
        sums = score_windows(loaded, store.split("train"), documents, batch_size=batch_size,
                             precision=precision)
        tok_hash = str(store.manifest["tokenizer"]["hash"])
    scores = []
    for d, doc in enumerate(documents):
        total, count = sums.get(d, (0.0, 0))
        loss = total / count if count else float("nan")
        scores.append(DocScore(str(doc["rel"]), count, loss, perplexity(loss)))
    total = sum(s for s, _ in sums.values())
    count = sum(c for _, c in sums.values())
    loss = total / count if count else float("nan")
    return EvalResult(model=loaded.source.given, loss=loss, ppl=perplexity(loss), tokens=count,
                      documents=scores, settings=settings.to_dict(), tokenizer_hash=tok_hash,
                      skipped=list(summary.skipped))


def _compare_source(loaded: Loaded, compare: str) -> str:
    """``compare`` as a model reference; the word ``base`` means the run's base model."""
    from doctune.config import is_scratch
    from doctune.errors import ModelError

    if compare != "base":
        return compare
    src = loaded.source
    base = src.base or (src.run.facts.base_model if src.run else None)
    if not base:
        raise ModelError("`--compare base` needs a run folder or an adapter (they know their "
                         "base model); pass the model to compare with instead: `--compare distilgpt2`.")
    if is_scratch(str(base)):
        raise ModelError(f"This run was trained from scratch ({base}); there is no pretrained "
                         "base to compare with. Compare with a checkpoint folder instead.")
    return str(base)


def evaluate(source: str | Path, docs: Path, *, compare: str | None = None,
             base: str | Path | None = None, device: str = "auto", precision: str | None = None,
             block_size: int | None = None, overlap: int | None = None,
             batch_size: int) -> tuple[EvalResult, EvalResult | None]:
    """Score ``source`` (and ``compare``, with the same data settings) on the docs in ``docs``.

    ``precision`` defaults to the run's ``train.precision`` (``auto`` for a plain model),
    so that a run's numbers match its validation numbers on the same machine.
    """
    from doctune.inference import load_for_inference

    loaded = load_for_inference(source, device=device, dtype="fp32", base=base)
    settings = settings_for(loaded, block_size=block_size, overlap=overlap)
    run = loaded.source.run
    prec = precision or (run.config().train.precision if run else "auto")
    result = evaluate_docs(loaded, docs, settings, batch_size=batch_size, precision=prec)
    if compare is None:
        return result, None
    other_ref = _compare_source(loaded, compare)
    del loaded  # one model in memory at a time
    other = load_for_inference(other_ref, device=device, dtype="fp32")
    return result, evaluate_docs(other, docs, settings, batch_size=batch_size, precision=prec)


def _change(before: float, after: float) -> str:
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return ""
    return f"{100 * (after - before) / before:+.1f}%"


def results_table(result: EvalResult, base: EvalResult | None = None) -> Any:
    """A rich table: perplexity per document and overall (base beside fine-tuned with ``base``)."""
    from rich.table import Table

    table = Table(title=f"perplexity on {len(result.documents)} documents (lower is better)")
    table.add_column("document")
    table.add_column("tokens", justify="right")
    if base is not None:
        table.add_column(f"base: {base.model}", justify="right")
    table.add_column(result.model, justify="right")
    if base is not None:
        table.add_column("change", justify="right")
    by_rel = {d.rel: d for d in base.documents} if base else {}
    rows = [(d.rel, d.tokens, by_rel.get(d.rel), d.ppl) for d in result.documents]
    for rel, tokens, b, ppl in [*rows, ("overall", result.tokens, base, result.ppl)]:
        cells = [rel if rel != "overall" else "[bold]overall[/bold]", f"{tokens:,}"]
        if base is not None:
            before = b.ppl if b is not None else float("nan")
            cells += [f"{before:,.2f}", f"{ppl:,.2f}", _change(before, ppl)]
        else:
            cells.append(f"{ppl:,.2f}")
        if rel == "overall":
            table.add_section()
        table.add_row(*cells)
    return table


def notes(result: EvalResult, base: EvalResult | None) -> list[str]:
    """Caveats worth printing under the table (different tokenizers, skipped files)."""
    out = [f"skipped {s['rel']}: {s['reason']}" for s in result.skipped]
    if base is not None and base.tokenizer_hash != result.tokenizer_hash:
        out.append("the two models use different tokenizers: their perplexities count different "
                   "tokens, so compare them with care (lower is still better within each column).")
    return out
