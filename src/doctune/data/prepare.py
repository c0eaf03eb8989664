"""``prepare``: a docs folder in, a token store out (clean, dedupe, split, tokenise, window).

Steps, each one pass over the files:

1. find and read the docs (``corpus``), clean each one (``clean``);
2. drop exact duplicates (same cleaned text: versioned docs folders repeat pages);
3. split by document: a document goes to validation when a hash of ``(seed, path)`` falls
   below ``val_fraction``, so adding files never moves the others;
4. tokenise with the fast tokenizer in batches, cut into windows, write the store.

``OUT/cache/clean.json`` keeps each file's cleaning result (keyed by its content, path
and the cleaning settings) and the previous store keeps each cleaned text's token ids, so
a second run cleans and tokenises only what changed, and rewrites nothing when nothing
changed (see :mod:`doctune.data.cache`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from doctune.data.cache import Cache, Cleaned, ReadFile, cleaner_version, read_and_clean
from doctune.data.chunk import check_sizes
from doctune.data.dialect import DIALECTS as CLEAN_DIALECTS
from doctune.data.settings import DataSettings
from doctune.data.store import FORMAT, MANIFEST, VERSION, TokenStore, write_store
from doctune.data.tokenize import encode_batch, identity, load_tokenizer, token_dtype
from doctune.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

DIALECTS = ("auto", *CLEAN_DIALECTS)


@dataclass
class PrepareSummary:
    """What :func:`prepare` did; ``to_dict()`` is the ``--json`` summary."""

    src: str
    out: str
    files_found: int
    files_used: int
    skipped: list[dict[str, str]]
    """``{"rel", "reason"}`` for every file passed over (unreadable, empty, ...)."""
    duplicates: list[dict[str, str]]
    """``{"rel", "same_as"}`` for every exact duplicate removed."""
    bytes_before: int
    """Bytes of the files read (UTF-8), before cleaning."""
    bytes_after: int
    """Bytes of the cleaned text of the files used."""
    documents: dict[str, int]
    tokens: dict[str, int]
    """Tokens per split, one EOS per document included; ``total`` is their sum."""
    windows: dict[str, int]
    cache: dict[str, int]
    """``cleaned`` / ``tokenized``: files processed this run; ``*_hits``: taken from cache."""
    store_reused: bool
    """True when nothing changed and the existing store was kept as it is."""
    tokenizer: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    """What cleaning dropped on purpose (includes, API directives, ...), summed over files."""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent reading + cleaning, tokenising, and writing the store."""

    @property
    def files_skipped(self) -> int:
        """Number of files passed over."""
        return len(self.skipped)

    @property
    def duplicates_removed(self) -> int:
        """Number of exact duplicates removed."""
        return len(self.duplicates)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the summary, counts included."""
        d = asdict(self)
        d["files_skipped"] = self.files_skipped
        d["duplicates_removed"] = self.duplicates_removed
        return d


@dataclass
class _Doc:
    """One file on its way through the pipeline."""

    rel: str
    content_hash: str
    bytes_before: int
    clean: Cleaned
    split: str = "train"


def prepare(
    src: Path,
    out: Path,
    settings: DataSettings,
    *,
    tokenizer: str | Path | PreTrainedTokenizerBase | Tokenizer | None = None,
    make_tokenizer: Callable[[list[str]], PreTrainedTokenizerBase] | None = None,
    workers: int | None = None,
) -> PrepareSummary:
    """Turn the docs under ``src`` into a token store in ``out``, read and cut as ``settings``
    say, and say what was done.

    ``tokenizer`` is a hub id, a local folder or an already loaded fast tokenizer; or,
    instead, ``make_tokenizer`` trains one on the cleaned texts (a from-scratch model's), so
    that the docs are cleaned once for both.
    ``workers`` is the number of processes that clean files (None: one per CPU core when
    there is enough text to repay starting them). Raises :class:`DataError` for bad
    settings or when no usable document is left.
    """
    started = time.perf_counter()
    s = settings
    _check_settings(s.block_size, s.overlap, s.val_fraction, s.dialect)
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if (tokenizer is None) == (make_tokenizer is None):
        raise ValueError("prepare() takes a tokenizer or make_tokenizer, not both or neither")
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer

    previous = _open_previous(out)
    # a tokenizer still to be trained needs every text: no cleaning result is reused then
    cache = Cache(out / "cache", previous=previous, tokenizer_hash=identity(tok)["hash"] if tok else "")
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    files, skipped, n_found = read_and_clean(
        src, cache, include=s.include, exclude=s.exclude, dialect=s.dialect,
        title_heading=s.title_heading, workers=workers)
    timings["read_clean"] = time.perf_counter() - tick
    docs, duplicates = _usable_docs(src, files, skipped)
    _split(docs, val_fraction=s.val_fraction, seed=s.seed)
    if make_tokenizer is not None:
        tok = make_tokenizer([d.clean.text or "" for d in docs])
    assert tok is not None
    tok_id = identity(tok)

    fingerprint = _fingerprint(s.to_dict(), tok_id["hash"], docs)
    reused = previous is not None and previous.manifest.get("fingerprint") == fingerprint
    if reused:
        assert previous is not None
        manifest = previous.manifest
        cache.token_hits += len(docs)
    else:
        manifest = _write_tokens(out, src, s, docs, cache, tok, tok_id, timings, {
            "fingerprint": fingerprint, "duplicates": duplicates, "skipped": skipped})
    cache.save()
    timings["total"] = time.perf_counter() - started
    return _summary(src, out, manifest, files=files, docs=docs, n_found=n_found,
                    skipped=skipped, duplicates=duplicates, cache=cache, reused=reused,
                    tokenizer=tok_id, timings=timings)


def _usable_docs(src: Path, files: list[ReadFile], skipped: list[dict[str, str]],
                 ) -> tuple[list[_Doc], list[dict[str, Any]]]:
    """The files with text left after cleaning, exact duplicates removed (``skipped`` gains
    the empty ones, sorted); a :class:`DataError` that lists why when none is left."""
    for f in files:
        if f.clean.empty:
            skipped.append({"rel": f.rel, "reason": "no text left after cleaning"})
    skipped.sort(key=lambda s: s["rel"])
    docs = [_Doc(f.rel, f.content_hash, f.n_bytes, f.clean) for f in files if not f.clean.empty]
    docs, duplicates = _dedupe(docs)
    if not docs:
        reasons = "; ".join(f"{s['rel']}: {s['reason']}" for s in skipped[:5])
        raise DataError(f"no usable document under `{src}` ({len(skipped)} skipped: "
                        f"{reasons}). Fix or remove these files, or point SRC elsewhere.")
    return docs, duplicates


def _write_tokens(out: Path, src: Path, settings: DataSettings, docs: list[_Doc], cache: Cache,
                  tok: Any, tok_id: dict[str, Any], timings: dict[str, float],
                  manifest: dict[str, Any]) -> dict[str, Any]:
    """Tokenise ``docs`` (reusing cached ids) and write the store; its manifest."""
    dtype = token_dtype(tok_id["vocab_size"])
    tick = time.perf_counter()
    ids = _token_ids(docs, cache, tok, dtype)
    timings["tokenize"] = time.perf_counter() - tick
    tick = time.perf_counter()
    written = write_store(
        out, doc_tokens=ids, eos_id=tok_id["eos_id"], dtype=dtype,
        split_of=[d.split for d in docs], block_size=settings.block_size,
        overlap=settings.overlap,
        manifest={"fingerprint": manifest["fingerprint"], "settings": settings.to_dict(),
                  "tokenizer": tok_id, "src": str(src), "documents": [_doc_entry(d) for d in docs],
                  "duplicates": manifest["duplicates"], "skipped": manifest["skipped"]})
    timings["write"] = time.perf_counter() - tick
    return written


def _summary(src: Path, out: Path, manifest: dict[str, Any], *, files: list[ReadFile],
             docs: list[_Doc], n_found: int, skipped: list[dict[str, str]],
             duplicates: list[dict[str, Any]], cache: Cache, reused: bool,
             tokenizer: dict[str, Any], timings: dict[str, float]) -> PrepareSummary:
    splits = manifest["splits"]
    dropped: dict[str, int] = {}
    for d in docs:
        for k, v in d.clean.dropped.items():
            dropped[k] = dropped.get(k, 0) + v

    def per_split(key: str) -> dict[str, int]:
        return {"train": splits["train"][key], "val": splits["val"][key],
                "total": splits["train"][key] + splits["val"][key]}

    return PrepareSummary(
        src=str(src), out=str(out), files_found=n_found, files_used=len(docs),
        skipped=skipped, duplicates=duplicates,
        bytes_before=sum(f.n_bytes for f in files),
        bytes_after=sum(d.clean.n_bytes for d in docs),
        documents=per_split("documents"), tokens=per_split("tokens"),
        windows=per_split("windows"), cache=cache.counts(), store_reused=reused,
        tokenizer={k: tokenizer[k] for k in ("name", "hash", "vocab_size", "eos_id")},
        warnings=[w for d in docs for w in d.clean.warnings], dropped=dropped,
        seconds=round(timings.pop("total"), 3),
        timings={k: round(v, 3) for k, v in timings.items()})


def _check_settings(block_size: int, overlap: int, val_fraction: float, dialect: str) -> None:
    check_sizes(block_size, overlap)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"`val_fraction` must be at least 0 and below 1, got {val_fraction}.")
    if dialect not in DIALECTS:
        raise DataError(f"`dialect` must be one of {', '.join(DIALECTS)}, got {dialect!r}.")


def _dedupe(docs: list[_Doc]) -> tuple[list[_Doc], list[dict[str, Any]]]:
    """Keep the first document (by path) of each distinct cleaned text."""
    first: dict[str, str] = {}
    kept: list[_Doc] = []
    duplicates: list[dict[str, Any]] = []
    for d in docs:
        same_as = first.setdefault(d.clean.clean_hash, d.rel)
        if same_as == d.rel:
            kept.append(d)
        else:
            duplicates.append({"rel": d.rel, "same_as": same_as, "bytes": d.bytes_before})
    return kept, duplicates


def _unit_hash(seed: int, rel: str) -> float:
    digest = hashlib.blake2b(f"{seed}\0{rel}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _split(docs: list[_Doc], *, val_fraction: float, seed: int) -> None:
    """Set each document's split from a hash of ``(seed, rel)``: stable when files are added.

    With ``val_fraction > 0`` and at least two documents, validation gets at least one
    (the lowest hash) and training keeps at least one (the highest).
    """
    u = [_unit_hash(seed, d.rel) for d in docs]
    for d, x in zip(docs, u, strict=True):
        d.split = "val" if x < val_fraction else "train"
    if val_fraction > 0 and len(docs) >= 2:
        if all(d.split == "train" for d in docs):
            docs[int(np.argmin(u))].split = "val"
        if all(d.split == "val" for d in docs):
            docs[int(np.argmax(u))].split = "train"


def _fingerprint(settings: dict[str, Any], tokenizer_hash: str, docs: list[_Doc]) -> str:
    """A hash of everything the store's content depends on."""
    data = {"format": [FORMAT, VERSION], "settings": settings, "tokenizer": tokenizer_hash,
            "cleaner": cleaner_version(),
            "docs": [[d.rel, d.clean.clean_hash, d.split] for d in docs]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _open_previous(out: Path) -> TokenStore | None:
    """The intact store already in ``out`` (its ids are reused), else None."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        return TokenStore.open(out)
    except DataError:
        return None


def _token_ids(docs: list[_Doc], cache: Cache, tok: Any,
               dtype: np.dtype[Any]) -> list[np.ndarray]:
    """Each document's token ids: from the previous store, or tokenised now in batches."""
    ids = cache.tokens([d.clean.clean_hash for d in docs])
    todo = [i for i, x in enumerate(ids) if x is None]
    texts = [docs[i].clean.text for i in todo]
    if any(t is None for t in texts):  # a cache entry was trusted for ids that are gone
        raise DataError(f"the cache in `{cache.directory}` does not match the store next to "
                        "it; delete that folder and run prepare again.")
    for i, encoded in zip(todo, encode_batch(tok, texts, dtype=dtype), strict=True):  # type: ignore[arg-type]
        ids[i] = encoded
    cache.tokenized += len(todo)
    cache.token_hits += len(docs) - len(todo)
    return [x for x in ids if x is not None]


def _doc_entry(d: _Doc) -> dict[str, Any]:
    return {"rel": d.rel, "split": d.split, "content_hash": d.content_hash,
            "clean_hash": d.clean.clean_hash, "dialect": d.clean.dialect,
            "bytes": d.bytes_before, "clean_bytes": d.clean.n_bytes}


def format_summary(s: PrepareSummary, *, max_listed: int = 20) -> str:
    """A short human-readable report of a :class:`PrepareSummary`."""
    t, w = s.tokens, s.windows
    lines = [
        f"{'reused' if s.store_reused else 'wrote'} {s.out} in {s.seconds:.1f} s",
        f"  files     {s.files_used:,} used of {s.files_found:,} found, "
        f"{s.files_skipped:,} skipped, {s.duplicates_removed:,} exact duplicates removed",
        f"  bytes     {s.bytes_before:,} read, {s.bytes_after:,} after cleaning",
        f"  tokens    train {t['train']:,}, val {t['val']:,} "
        f"({s.documents['train']:,} / {s.documents['val']:,} documents)",
        f"  windows   train {w['train']:,}, val {w['val']:,}",
        f"  cache     {s.cache['cleaned']:,} files cleaned, {s.cache['tokenized']:,} tokenised, "
        f"{s.cache['token_hits']:,} taken from the previous run",
    ]
    if s.dropped:
        lines.append("  dropped   " + ", ".join(f"{k} {v:,}" for k, v in s.dropped.items()))
    for title, items in (("skipped", [f"{x['rel']}: {x['reason']}" for x in s.skipped]),
                         ("duplicates", [f"{x['rel']} = {x['same_as']}" for x in s.duplicates]),
                         ("warnings", s.warnings)):
        if items:
            lines.append(f"{title}:")
            lines += [f"  {x}" for x in items[:max_listed]]
            if len(items) > max_listed:
                lines.append(f"  ... and {len(items) - max_listed:,} more (see --json)")
    return "\n".join(lines)
