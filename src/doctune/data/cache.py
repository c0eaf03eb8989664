"""Reading and cleaning the docs for ``prepare``, remembering what earlier runs did.

``OUT/cache/clean.json`` maps a key of (file content, path, cleaning settings, cleaner
code) to the cleaning result without its text: the cleaned text's hash, size, warnings
and what was dropped. Token ids are not cached apart: the previous store in ``OUT`` holds
every used document's ids, found by the hash of its cleaned text. So a file is cleaned
again only when its key is new, or when its cleaned text's ids are not in the previous
store (another tokenizer, or a document that was a duplicate before).

Cleaning is pure Python; with enough text, on Linux, it runs in a pool of forked
processes, one per core.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from doctune import __version__
from doctune.data.store import TOKENS, TokenStore, atomic_write

CACHE_VERSION = 2
POOL_MIN_CHARS = 1_000_000
"""Below this much text to clean, forking workers costs more than it saves."""


@dataclass
class Cleaned:
    """The cleaning result of one file; ``text`` is None when it came from the cache."""

    clean_hash: str
    n_bytes: int
    dialect: str
    warnings: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    empty: bool = False
    """Nothing but whitespace was left: the file is skipped."""
    text: str | None = None


@dataclass
class ReadFile:
    """A docs file that was read and cleaned."""

    rel: str
    content_hash: str
    n_bytes: int
    clean: Cleaned


@lru_cache(maxsize=1)
def cleaner_version() -> str:
    """A hash of doctune's version and the data package's code, which cleaning depends on."""
    h = hashlib.sha256(__version__.encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def text_hash(data: bytes) -> str:
    """The content hash used for files and cleaned texts (128-bit BLAKE2b, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Cache:
    """Cleaning results of earlier runs, and the token ids of the previous store."""

    def __init__(self, directory: Path, *, previous: TokenStore | None,
                 tokenizer_hash: str) -> None:
        self.directory = directory
        self._entries: dict[str, dict[str, Any]] = {}
        self._used: dict[str, dict[str, Any]] = {}
        self._spans: dict[str, tuple[int, int]] = {}  # clean hash -> (offset, n_tokens)
        self._tokens_path: Path | None = None
        self._dtype = np.dtype(np.uint16)
        self.cleaned = self.clean_hits = self.tokenized = self.token_hits = 0
        try:
            saved = json.loads((directory / "clean.json").read_text(encoding="utf-8"))
            if saved.get("version") == CACHE_VERSION:
                self._entries = dict(saved["entries"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no cache yet, or an unreadable one: start afresh
        if previous is not None and previous.manifest["tokenizer"]["hash"] == tokenizer_hash:
            m = previous.manifest
            self._tokens_path = previous.directory / TOKENS
            self._dtype = np.dtype(m["dtype"])
            for doc in m["documents"]:
                # n_tokens counts the EOS that ends each document in the store
                self._spans[doc["clean_hash"]] = (doc["offset"], doc["n_tokens"] - 1)

    def get_clean(self, key: str) -> Cleaned | None:
        """The cached cleaning result for ``key``, if its token ids are at hand too."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            found = Cleaned(**entry)
        except TypeError:
            return None
        if not found.empty and found.clean_hash not in self._spans:
            return None
        self._used[key] = entry
        self.clean_hits += 1
        return found

    def put_clean(self, key: str, result: Cleaned) -> None:
        """Remember ``result`` (without its text) under ``key``."""
        entry = asdict(result)
        entry.pop("text")
        self._entries[key] = self._used[key] = entry
        self.cleaned += 1

    def tokens(self, clean_hashes: Sequence[str]) -> list[np.ndarray | None]:
        """Token ids (without EOS) of each cleaned text in the previous store, or None."""
        if self._tokens_path is None or not self._spans:
            return [None] * len(clean_hashes)
        mm = np.memmap(self._tokens_path, dtype=self._dtype, mode="r")
        try:
            out: list[np.ndarray | None] = []
            for h in clean_hashes:
                span = self._spans.get(h)
                # a copy: the store file is about to be replaced
                out.append(None if span is None else np.array(mm[span[0]:span[0] + span[1]]))
        finally:
            del mm
        return out

    def save(self) -> None:
        """Write the cleaning results used in this run (older ones are forgotten)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {"version": CACHE_VERSION, "entries": self._used}
        atomic_write(self.directory / "clean.json", json.dumps(data).encode())

    def counts(self) -> dict[str, int]:
        """Files cleaned and tokenised in this run, and those taken from earlier runs."""
        return {"cleaned": self.cleaned, "clean_hits": self.clean_hits,
                "tokenized": self.tokenized, "token_hits": self.token_hits}


def clean_one(text: str, path: Path, root: Path, rel: str, dialect: str,
              title_heading: bool) -> Cleaned:
    """Clean one document (``dialect`` "auto": detected from its folder and text)."""
    from doctune.data.clean import clean_markdown
    from doctune.data.dialect import detect_dialect

    if dialect == "auto":
        dialect = detect_dialect(path, root, text)
    res = clean_markdown(text, dialect=dialect, path=rel, title_heading=title_heading)
    data = res.text.encode("utf-8")
    return Cleaned(clean_hash=text_hash(data), n_bytes=len(data), dialect=res.dialect,
                   warnings=list(res.warnings), dropped=dict(res.dropped),
                   empty=not res.text.strip(), text=res.text)


@contextmanager
def _quiet_tokenizers_fork() -> Iterator[None]:
    # A process forked after the Rust tokenizer used its threads prints a warning unless
    # TOKENIZERS_PARALLELISM is set. The workers never tokenise; keep the parent's setting.
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = before or "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]


def _pool_size(workers: int | None, n_jobs: int, chars: int) -> int:
    if workers is not None:
        return max(1, min(workers, n_jobs))
    if not sys.platform.startswith("linux") or chars < POOL_MIN_CHARS:
        return 1  # elsewhere workers are spawned, which needs a __main__ guard in scripts
    return max(1, min(len(os.sched_getaffinity(0)), n_jobs))


def _clean_all(jobs: Sequence[tuple[str, Path, Path, str, str, bool]],
               workers: int | None) -> list[Cleaned]:
    """Run :func:`clean_one` on each job, in a process pool when it pays."""
    n = _pool_size(workers, len(jobs), sum(len(j[0]) for j in jobs))
    if n <= 1:
        return [clean_one(*j) for j in jobs]
    import multiprocessing

    import doctune.data.clean  # noqa: F401  (imported once, before forking)

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    # Longest first, so that no worker is left alone with a big file at the end.
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][0]))
    results: dict[int, Cleaned] = {}
    with _quiet_tokenizers_fork(), ProcessPoolExecutor(
            n, mp_context=multiprocessing.get_context(method)) as pool:
        futures = {i: pool.submit(clean_one, *jobs[i]) for i in order}
        for i, fut in futures.items():
            results[i] = fut.result()
    return [results[i] for i in range(len(jobs))]


def read_and_clean(
    src: Path, cache: Cache, *, include: Sequence[str], exclude: Sequence[str],
    dialect: str, title_heading: bool, workers: int | None,
) -> tuple[list[ReadFile], list[dict[str, str]], int]:
    """Find, read and clean the docs under ``src``, using and filling ``cache``.

    Returns every file read (sorted by path; those with nothing left after cleaning
    have ``clean.empty``), the files that could not be read as ``{"rel", "reason"}``,
    and the number of docs files found.
    """
    from doctune.data.cleantree import read_docs

    # Each folder is one docs set: its generator config, the suffix and what its pages show
    # decide how each page is read, exactly as `doctune clean` does.
    read = read_docs(src, include=include, exclude=exclude, dialect=dialect)
    skipped = [{"rel": s.rel, "reason": s.reason} for s in read.skipped]
    version = cleaner_version()
    files: list[ReadFile] = []
    pending: list[tuple[ReadFile, str]] = []  # (file, cache key) still to clean
    jobs: list[tuple[str, Path, Path, str, str, bool]] = []
    for source in read.docs:
        doc, text, doc_dialect = source.doc, source.raw, source.dialect
        data = text.encode("utf-8")
        content_hash = text_hash(data)
        key = text_hash(f"{version}\0{doc_dialect}\0{title_heading}\0{doc.rel}\0"
                        f"{content_hash}".encode())
        found = cache.get_clean(key)
        f = ReadFile(doc.rel, content_hash, len(data), found or Cleaned("", 0, doc_dialect))
        files.append(f)
        if found is None:
            pending.append((f, key))
            jobs.append((text, doc.path, read.root, doc.rel, doc_dialect, title_heading))
    for (f, key), result in zip(pending, _clean_all(jobs, workers), strict=True):
        cache.put_clean(key, result)
        f.clean = result
    skipped.sort(key=lambda s: s["rel"])
    return files, skipped, read.found
