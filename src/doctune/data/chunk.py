"""Cutting tokenised documents into training windows: pure functions on token counts.

A document is its token ids followed by one end-of-text token (EOS), so the model learns
where documents end. With ``stride = block_size - overlap``:

* a document of at least ``block_size`` tokens is cut into full windows starting at
  ``0, stride, 2*stride, ...``; every window after the first repeats the last ``overlap``
  tokens of the previous one as context, which carries no loss;
* what is left after the last full window (the *tail*), and every document shorter than
  ``block_size``, is a *piece*; pieces are packed one after another into shared windows.
  The first piece of a packed window keeps up to ``overlap`` tokens of its own document as
  context; a piece cut by the end of a window goes on at the start of the next one.

Every token is the target of exactly one window: summed over all windows,
``len(ids) - loss_start`` equals the number of tokens (nothing is dropped).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from doctune.errors import DataError


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, stop)`` of one document; those before ``loss_start`` are context."""

    start: int
    stop: int
    loss_start: int

    @property
    def n_loss(self) -> int:
        """How many tokens of the span carry loss."""
        return self.stop - self.loss_start


@dataclass(frozen=True)
class Segment:
    """Tokens ``[start, stop)`` of document ``doc``: one contiguous part of a window."""

    doc: int
    start: int
    stop: int


@dataclass(frozen=True)
class PackedWindow:
    """A window made of segments laid end to end; positions before ``loss_start`` are context."""

    segments: tuple[Segment, ...]
    loss_start: int

    @property
    def length(self) -> int:
        """Number of tokens in the window."""
        return sum(s.stop - s.start for s in self.segments)


def check_sizes(block_size: int, overlap: int) -> None:
    """Raise :class:`DataError` unless ``2 <= block_size`` and ``0 <= overlap < block_size``."""
    if block_size < 2:
        raise DataError(f"`block_size` must be at least 2 tokens, got block_size={block_size}.")
    if not 0 <= overlap < block_size:
        raise DataError(
            "`overlap` must be at least 0 and smaller than `block_size`, "
            f"got overlap={overlap}, block_size={block_size}."
        )


def windows(n_tokens: int, *, block_size: int, overlap: int) -> tuple[list[Span], Span | None]:
    """Full windows of a document of ``n_tokens`` tokens, and the tail left for packing.

    Returns ``(full, tail)``. ``full`` holds spans of exactly ``block_size`` tokens; the
    first has ``loss_start == start``, the others ``loss_start == start + overlap``.
    ``tail`` covers the tokens after the last full window (with up to ``overlap`` tokens
    of context before them), or the whole document when it is shorter than ``block_size``;
    it is None when the full windows cover everything.

    >>> windows(10, block_size=4, overlap=1)
    ([Span(start=0, stop=4, loss_start=0), Span(start=3, stop=7, loss_start=4), \
Span(start=6, stop=10, loss_start=7)], None)
    """
    check_sizes(block_size, overlap)
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if n_tokens < block_size:
        return [], (Span(0, n_tokens, 0) if n_tokens else None)
    stride = block_size - overlap
    count = 1 + (n_tokens - block_size) // stride
    full = [
        Span(k * stride, k * stride + block_size, k * stride + (overlap if k else 0))
        for k in range(count)
    ]
    covered = full[-1].stop
    if covered == n_tokens:
        return full, None
    return full, Span(covered - overlap, n_tokens, covered)


def pack(pieces: Iterable[tuple[int, Span]], *, block_size: int, overlap: int) -> list[PackedWindow]:
    """Pack ``(doc, span)`` pieces, in order, into windows of ``block_size`` tokens.

    Each window is full except possibly the last. A piece that starts a window keeps the
    context of its span (at most ``overlap`` tokens); a piece placed after another starts
    at its ``loss_start`` (the previous piece ends with EOS, which separates them). A piece
    longer than the room left is cut, and its rest starts the next window with up to
    ``overlap`` tokens of context from the same document.
    """
    check_sizes(block_size, overlap)
    out: list[PackedWindow] = []
    segments: list[Segment] = []
    loss_start = 0
    used = 0
    for doc, span in pieces:
        if span.loss_start - span.start > overlap:
            raise ValueError(f"piece {span} has more than overlap={overlap} tokens of context")
        pos = span.loss_start  # next token of this piece that still needs a target
        while pos < span.stop:
            if used == 0:
                # Window start: bring context from the same document.
                ctx_start = span.start if pos == span.loss_start else max(0, pos - overlap)
                loss_start = pos - ctx_start
                take = min(span.stop - pos, block_size - loss_start)
                segments.append(Segment(doc, ctx_start, pos + take))
                used = loss_start + take
            else:
                take = min(span.stop - pos, block_size - used)
                segments.append(Segment(doc, pos, pos + take))
                used += take
            pos += take
            if used == block_size:
                out.append(PackedWindow(tuple(segments), loss_start))
                segments, used = [], 0
    if segments:
        out.append(PackedWindow(tuple(segments), loss_start))
    return out
