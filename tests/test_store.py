"""The token store: exact window contents on disk, and clear errors for damaged folders."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from doctune.data.store import TokenStore, write_store
from doctune.errors import DataError

EOS = 99


def _write(tmp_path: Path, lengths: list[int], split_of: list[str], *, block_size: int = 8,
           overlap: int = 2) -> TokenStore:
    # Document d holds ids 1000*d + 0, 1, 2, ...: every token says where it came from.
    docs = [np.arange(n, dtype=np.int64) + 1000 * (d + 1) for d, n in enumerate(lengths)]
    write_store(tmp_path, doc_tokens=docs, eos_id=EOS, dtype=np.dtype(np.uint16),
                split_of=split_of, block_size=block_size, overlap=overlap,
                manifest={"settings": {"block_size": block_size, "overlap": overlap},
                          "tokenizer": {"eos_id": EOS},
                          "documents": [{"rel": f"d{d}.md"} for d in range(len(lengths))]})
    return TokenStore.open(tmp_path)


def test_windows_hold_the_right_tokens(tmp_path: Path) -> None:
    # block 8, overlap 2, stride 6. doc 0: 12 tokens + EOS = 13 -> one full window [0, 8)
    # and a tail [6, 13) with 2 tokens of context; doc 1: 2 tokens + EOS = 3, a short piece.
    store = _write(tmp_path, [12, 2], ["train", "train"])
    train = store.split("train")
    assert len(train) == 3
    w0, w1, w2 = train[0], train[1], train[2]
    assert w0.ids.tolist() == [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007]
    assert (w0.loss_start, w0.doc) == (0, 0)
    # Packed: doc 0's tail with its context (1006, 1007 | 1008..1011, EOS), then doc 1,
    # cut at 8 tokens; the rest of doc 1 starts the last window with 1 token of context.
    assert w1.ids.tolist() == [1006, 1007, 1008, 1009, 1010, 1011, EOS, 2000]
    assert (w1.loss_start, w1.doc) == (2, 0)
    assert w2.ids.tolist() == [2000, 2001, EOS]
    assert (w2.loss_start, w2.doc) == (1, 1)
    assert w1.ids.dtype == np.int64
    assert store.manifest["splits"]["train"] == {"documents": 2, "tokens": 16, "windows": 3,
                                                 "packed_windows": 2}
    assert train.n_tokens == store.manifest["n_tokens"] == 16
    assert [d["offset"] for d in store.manifest["documents"]] == [0, 13]
    assert [d["n_tokens"] for d in store.manifest["documents"]] == [13, 3]


def test_nothing_dropped_and_splits_apart(tmp_path: Path) -> None:
    lengths = [30, 0, 5, 17, 8, 1]
    split_of = ["train", "val", "train", "val", "train", "train"]
    store = _write(tmp_path, lengths, split_of, block_size=8, overlap=3)
    train, val = store.split("train"), store.split("val")
    assert train.n_tokens == 31 + 6 + 9 + 2 == store.manifest["splits"]["train"]["tokens"]
    assert val.n_tokens == 1 + 18
    loss = [tok for ws in (train, val) for w in (ws[i] for i in range(len(ws)))
            for tok in w.ids[w.loss_start:].tolist()]
    assert len(loss) == sum(lengths) + len(lengths)
    # every document's tokens are targets exactly once
    for d, n in enumerate(lengths):
        assert sorted(t for t in loss if 1000 * (d + 1) <= t < 1000 * (d + 2)) == \
            list(range(1000 * (d + 1), 1000 * (d + 1) + n))
    assert loss.count(EOS) == len(lengths)
    assert {val[i].doc for i in range(len(val))} == {1, 3}


def test_index_errors_and_negative_indices(tmp_path: Path) -> None:
    train = _write(tmp_path, [3], ["train"]).split("train")
    assert train[-1].ids.tolist() == [1000, 1001, 1002, EOS]
    with pytest.raises(IndexError, match="out of range"):
        train[1]


def test_windowset_pickles_without_the_tokens(tmp_path: Path) -> None:
    train = _write(tmp_path, [40], ["train"]).split("train")
    train[0]  # opens the memory map
    again = pickle.loads(pickle.dumps(train))
    assert again[2].ids.tolist() == train[2].ids.tolist()
    assert len(pickle.dumps(train)) < 2000


def test_missing_store_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist\. Run `doctune prepare"):
        TokenStore.open(tmp_path / "nope")
    with pytest.raises(DataError, match=r"has no manifest\.json"):
        TokenStore.open(tmp_path)


def test_damaged_store_says_what_to_do(tmp_path: Path) -> None:
    _write(tmp_path, [30, 4], ["train", "val"])
    tokens = tmp_path / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"damaged .*tokens\.bin holds 70 bytes, the manifest says 72"):
        TokenStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="cannot be read"):
        TokenStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}), encoding="utf-8")
    with pytest.raises(DataError, match="not a doctune token store"):
        TokenStore.open(tmp_path)


def test_rewrite_leaves_no_temporary_files(tmp_path: Path) -> None:
    _write(tmp_path, [30, 4], ["train", "val"])
    _write(tmp_path, [5], ["train"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "tokens.bin", "train.segments.npy", "train.windows.npy",
        "val.segments.npy", "val.windows.npy"]
    assert len(TokenStore.open(tmp_path).split("val")) == 0
