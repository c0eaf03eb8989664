"""Window boundaries, loss starts and packing: exact numbers, and nothing dropped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doctune.data.chunk import PackedWindow, Segment, Span, check_sizes, pack, windows
from doctune.errors import DataError


def test_windows_exact_boundaries() -> None:
    full, tail = windows(20, block_size=8, overlap=2)  # stride 6
    assert full == [Span(0, 8, 0), Span(6, 14, 8), Span(12, 20, 14)]
    assert tail is None


def test_windows_tail_keeps_overlap_context() -> None:
    full, tail = windows(23, block_size=8, overlap=2)
    assert [(w.start, w.stop, w.loss_start) for w in full] == [(0, 8, 0), (6, 14, 8), (12, 20, 14)]
    assert tail == Span(18, 23, 20)  # 2 tokens of context, 3 new ones
    assert tail.n_loss == 3


def test_windows_short_doc_is_one_piece() -> None:
    assert windows(5, block_size=8, overlap=2) == ([], Span(0, 5, 0))
    assert windows(0, block_size=8, overlap=2) == ([], None)


def test_windows_exactly_one_block() -> None:
    assert windows(8, block_size=8, overlap=3) == ([Span(0, 8, 0)], None)


def test_windows_no_overlap() -> None:
    full, tail = windows(17, block_size=8, overlap=0)
    assert full == [Span(0, 8, 0), Span(8, 16, 8)]
    assert tail == Span(16, 17, 16)


@pytest.mark.parametrize(("block_size", "overlap", "match"), [
    (1, 0, "at least 2"), (8, 8, "smaller than `block_size`"), (8, -1, "at least 0"),
])
def test_bad_sizes_say_what_is_wrong(block_size: int, overlap: int, match: str) -> None:
    with pytest.raises(DataError, match=match):
        check_sizes(block_size, overlap)


def test_pack_short_docs_fill_windows_and_cut_across() -> None:
    # Three short docs of 3, 4 and 5 tokens (EOS included) into windows of 6.
    pieces = [(0, Span(0, 3, 0)), (1, Span(0, 4, 0)), (2, Span(0, 5, 0))]
    out = pack(pieces, block_size=6, overlap=2)
    assert out == [
        PackedWindow((Segment(0, 0, 3), Segment(1, 0, 3)), 0),
        # doc 1 goes on with 2 tokens of its own context, then doc 2 starts
        PackedWindow((Segment(1, 1, 4), Segment(2, 0, 3)), 2),
        PackedWindow((Segment(2, 1, 5),), 2),  # the last window may be short
    ]
    assert [w.length for w in out] == [6, 6, 4]


def test_pack_tail_brings_context_only_at_window_start() -> None:
    pieces = [(0, Span(18, 23, 20)), (1, Span(10, 13, 12))]
    out = pack(pieces, block_size=8, overlap=2)
    # The first tail starts the window with its context; the second loses its context.
    assert out == [PackedWindow((Segment(0, 18, 23), Segment(1, 12, 13)), 2)]


def test_pack_rejects_context_longer_than_overlap() -> None:
    with pytest.raises(ValueError, match="overlap=2"):
        pack([(0, Span(0, 5, 3))], block_size=8, overlap=2)


def _loss_tokens(lengths: list[int], block_size: int, overlap: int) -> tuple[int, list[int]]:
    pieces, total, sizes = [], 0, []
    for d, n in enumerate(lengths):
        full, tail = windows(n, block_size=block_size, overlap=overlap)
        total += sum(w.stop - w.loss_start for w in full)
        sizes += [w.stop - w.start for w in full]
        if tail is not None:
            pieces.append((d, tail))
    packed = pack(pieces, block_size=block_size, overlap=overlap)
    total += sum(w.length - w.loss_start for w in packed)
    sizes += [w.length for w in packed]
    return total, sizes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=12), st.integers(2, 16), st.data())
def test_every_token_is_a_target_exactly_once(lengths: list[int], block_size: int,
                                              data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, block_size - 1))
    total, sizes = _loss_tokens(lengths, block_size, overlap)
    assert total == sum(lengths)
    # Every window is full except possibly the very last packed one.
    assert all(s == block_size for s in sizes[:-1])
    assert all(0 < s <= block_size for s in sizes)
