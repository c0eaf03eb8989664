"""The prepared token store: documents' token ids on disk, cut into windows per split.

Layout of a store folder::

    manifest.json          settings, tokenizer identity, documents, per-split counts
    tokens.bin             every used document's ids followed by EOS, end to end
                           (raw little-endian uint16, or uint32 for vocabularies > 65536)
    train.windows.npy      int64 (n_windows, 5): seg_lo, seg_hi, length, loss_start, doc
    train.segments.npy     int64 (n_segments, 2): offset into tokens.bin, length
    val.windows.npy        the same for the validation split
    val.segments.npy

A window is the concatenation of its segments ``segments[seg_lo:seg_hi]``: one segment
for a full window inside a document, several for a packed one. Nothing is copied, so
the store is about ``2 * n_tokens`` bytes and opens instantly (memory-mapped).
Files are written under temporary names and renamed; ``manifest.json`` comes last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from doctune.atomic import atomic_open
from doctune.data.chunk import Span, pack, windows
from doctune.errors import DataError

FORMAT = "doctune-token-store"
VERSION = 1
SPLITS: tuple[Literal["train", "val"], ...] = ("train", "val")
MANIFEST = "manifest.json"
TOKENS = "tokens.bin"

IGNORE_INDEX = -100
"""The label of a position that carries no loss (context-only overlap, a prompt, padding):
PyTorch's cross-entropy skips it. Training, evaluation and the knowledge mix all use this one."""


@dataclass(frozen=True)
class Window:
    """One training or evaluation example."""

    ids: np.ndarray
    """int64 token ids, at most ``block_size`` of them."""
    loss_start: int
    """Positions before this are context only: they were targets in an earlier window."""
    doc: int
    """Index into ``manifest["documents"]`` of the window's (first) document."""


class WindowSet:
    """The windows of one split, read lazily from the memory-mapped token file."""

    def __init__(self, tokens_path: Path, dtype: np.dtype[Any], index: np.ndarray,
                 segments: np.ndarray) -> None:
        self._tokens_path = tokens_path
        self._dtype = dtype
        self._tokens: np.ndarray | None = None
        self.index = index
        """int64 (n, 5): seg_lo, seg_hi, length, loss_start, doc."""
        self.segments = segments
        """int64 (m, 2): offset into the token file, length."""
        self.n_tokens = int((index[:, 2] - index[:, 3]).sum()) if len(index) else 0
        """Tokens that carry loss in this split (each exactly once)."""

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> np.ndarray:
        """Each window's token count, from the index (no tokens read)."""
        return self.index[:, 2].copy()

    def __getitem__(self, i: int) -> Window:
        n = len(self.index)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range (this split has {n})")
        seg_lo, seg_hi, _length, loss_start, doc = (int(v) for v in self.index[i])
        tokens = self._memmap()
        parts = [tokens[off:off + ln] for off, ln in self.segments[seg_lo:seg_hi].tolist()]
        ids = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return Window(ids=ids.astype(np.int64), loss_start=loss_start, doc=doc)

    def _memmap(self) -> np.ndarray:
        if self._tokens is None:
            size = self._tokens_path.stat().st_size
            if size == 0:  # np.memmap refuses empty files
                self._tokens = np.zeros(0, dtype=self._dtype)
            else:
                self._tokens = np.memmap(self._tokens_path, dtype=self._dtype, mode="r")
        return self._tokens

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into data-loader workers: send the path, not a copy of the tokens.
        state = self.__dict__.copy()
        state["_tokens"] = None
        return state


class TokenStore:
    """A prepared data folder: its manifest and its train/val windows."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self._splits: dict[str, WindowSet] = {}

    @classmethod
    def open(cls, directory: Path) -> TokenStore:
        """Open the store in ``directory``; :class:`DataError` if it is missing or damaged."""
        directory = Path(directory).expanduser()
        redo = (f"Run `doctune prepare SRC --tokenizer NAME_OR_DIR --out {directory}` "
                "to (re)create it.")
        path = directory / MANIFEST
        if not path.is_file():
            what = "does not exist" if not directory.exists() else f"has no {MANIFEST}"
            raise DataError(f"prepared data folder `{directory}` {what}. {redo}")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"`{path}` cannot be read ({e}). {redo}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DataError(f"`{path}` is not a doctune token store manifest. {redo}")
        if manifest.get("version") != VERSION:
            raise DataError(f"`{directory}` was written by another doctune version (store "
                            f"format {manifest.get('version')}, expected {VERSION}). {redo}")
        store = cls(directory, manifest)
        try:
            store._check()
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"`{directory}` is damaged ({e}). {redo}") from None
        return store

    def _check(self) -> None:
        m = self.manifest
        dtype = np.dtype(m["dtype"])
        tokens = self.directory / TOKENS
        expected = int(m["n_tokens"]) * dtype.itemsize
        size = tokens.stat().st_size if tokens.is_file() else -1
        if size != expected:
            raise ValueError(f"{TOKENS} holds {size} bytes, the manifest says {expected}")
        for name in SPLITS:
            ws = self.split(name)
            want = m["splits"][name]
            if len(ws) != want["windows"] or ws.n_tokens != want["tokens"]:
                raise ValueError(f"the {name} windows do not match the manifest")

    def split(self, name: Literal["train", "val"]) -> WindowSet:
        """The windows of split ``name`` (``"train"`` or ``"val"``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        if name not in self._splits:
            try:
                index = np.load(self.directory / f"{name}.windows.npy")
                segments = np.load(self.directory / f"{name}.segments.npy")
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read the {name} windows: {e}") from None
            if index.ndim != 2 or index.shape[1] != 5 or segments.ndim != 2:
                raise ValueError(f"the {name} window index has the wrong shape")
            self._splits[name] = WindowSet(self.directory / TOKENS,
                                           np.dtype(self.manifest["dtype"]), index, segments)
        return self._splits[name]

    @property
    def block_size(self) -> int:
        """Longest window, in tokens."""
        return int(self.manifest["settings"]["block_size"])

    @property
    def eos_id(self) -> int:
        """The end-of-text id that ends every document."""
        return int(self.manifest["tokenizer"]["eos_id"])


def split_windows(
    lengths: Sequence[int], offsets: Sequence[int], docs: Sequence[int], *,
    block_size: int, overlap: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Window index, segment array and packed-window count for documents ``docs``.

    ``lengths[d]`` counts document ``d``'s tokens with its EOS; ``offsets[d]`` is where they
    start in the token file. Full windows come first, in document order, then packed ones.
    """
    rows: list[tuple[int, int, int, int, int]] = []
    segs: list[tuple[int, int]] = []
    pieces: list[tuple[int, Span]] = []
    for d in docs:
        full, tail = windows(lengths[d], block_size=block_size, overlap=overlap)
        for w in full:
            rows.append((len(segs), len(segs) + 1, block_size, w.loss_start - w.start, d))
            segs.append((offsets[d] + w.start, block_size))
        if tail is not None:
            pieces.append((d, tail))
    packed = pack(pieces, block_size=block_size, overlap=overlap)
    for pw in packed:
        lo = len(segs)
        segs.extend((offsets[s.doc] + s.start, s.stop - s.start) for s in pw.segments)
        rows.append((lo, len(segs), pw.length, pw.loss_start, pw.segments[0].doc))
    index = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return index, np.array(segs, dtype=np.int64).reshape(-1, 2), len(packed)


def write_store(
    directory: Path, *, doc_tokens: Sequence[np.ndarray], eos_id: int, dtype: np.dtype[Any],
    split_of: Sequence[str], block_size: int, overlap: int, manifest: dict[str, Any],
) -> dict[str, Any]:
    """Write a token store for ``doc_tokens`` (ids without EOS) and return its manifest.

    ``split_of[d]`` is ``"train"`` or ``"val"`` for document ``d``; ``manifest`` holds
    the caller's fields (settings, tokenizer, documents, ...), completed here with the
    token dtype, offsets and per-split counts.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lengths = [len(t) + 1 for t in doc_tokens]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()
    eos = np.array([eos_id], dtype=dtype)
    parts = [p for t in doc_tokens for p in (t.astype(dtype, copy=False), eos)]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    files: dict[str, bytes | np.ndarray] = {TOKENS: flat.tobytes()}
    counts: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        docs = [d for d, s in enumerate(split_of) if s == name]
        index, segs, n_packed = split_windows(lengths, offsets, docs, block_size=block_size,
                                              overlap=overlap)
        files[f"{name}.windows.npy"] = index
        files[f"{name}.segments.npy"] = segs
        counts[name] = {
            "documents": len(docs),
            "tokens": int(sum(lengths[d] for d in docs)),
            "windows": len(index),
            "packed_windows": n_packed,
        }
    manifest = {"format": FORMAT, "version": VERSION, **manifest,
                "dtype": dtype.name, "n_tokens": int(offsets[-1]), "splits": counts}
    for d, doc in enumerate(manifest.get("documents", [])):
        doc["offset"], doc["n_tokens"] = int(offsets[d]), lengths[d]

    (directory / MANIFEST).unlink(missing_ok=True)  # no manifest = incomplete store
    for fname, data in files.items():
        atomic_write(directory / fname, data)
    atomic_write(directory / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def atomic_write(path: Path, data: bytes | np.ndarray) -> None:
    """Write ``data`` (bytes, or an array in ``.npy`` format) to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        if isinstance(data, np.ndarray):
            np.save(f, data, allow_pickle=False)
        else:
            f.write(data)
