"""Loading a fast tokenizer and encoding many documents at once.

Encoding goes straight to the Rust tokenizer's batch encoder, which splits a batch
across threads (set ``TOKENIZERS_PARALLELISM=false`` to keep it on one core).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from doctune.errors import ModelError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

EOS_TOKEN = "<|endoftext|>"
BATCH_CHARS = 2_000_000
"""Characters per encoding batch: enough documents to keep every thread busy, while the
per-token objects the Rust encoder builds stay well under a few hundred MB."""


def load_tokenizer(name_or_dir: str | Path) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer from a local folder, a Hugging Face hub id, or a GGUF model.

    A folder is one written by ``save_pretrained``, or GPT-2's original ``vocab.json`` +
    ``merges.txt`` alone (byte-level BPE with ``<|endoftext|>``).

    Raises :class:`ModelError` when it cannot be found (offline, typo, not a tokenizer
    folder) or when only a slow (Python) tokenizer exists for it.
    """
    from transformers import AutoTokenizer

    name = str(name_or_dir)
    local = Path(name).expanduser()
    from doctune.sources import gguf_file_of, load_gguf_tokenizer

    gguf = gguf_file_of(name)
    if gguf is not None:  # a .gguf file, ollama:NAME or pip:PACKAGE: the tokenizer stored in it
        return load_gguf_tokenizer(gguf)
    looks_local = name.startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise ModelError(f"tokenizer folder `{local}` does not exist; pass a folder saved with "
                         "`save_pretrained` (tokenizer.json or vocab files) or a hub id.")
    source = str(local) if looks_local else name
    if looks_local and _bare_gpt2_files(local):
        from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]

        return GPT2TokenizerFast(vocab=str(local / "vocab.json"), merges=str(local / "merges.txt"))
    try:
        try:  # a cached copy first: no network round trips (and retries) when offline
            tok = AutoTokenizer.from_pretrained(source, use_fast=True, local_files_only=True)
        except Exception:
            if looks_local:
                raise
            tok = AutoTokenizer.from_pretrained(source, use_fast=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... here
        said = (str(e).strip().splitlines() or [type(e).__name__])[0]
        scratch = ("or train from scratch (`model.name: scratch:tiny`), which trains its own "
                   "tokenizer on your docs.")
        if looks_local:
            raise ModelError(f"`{local}` holds no tokenizer transformers can load: it needs "
                             "tokenizer.json (or vocab.json + merges.txt) as written by "
                             f"`save_pretrained`. Pass such a folder, a cached hub id, {scratch}"
                             f"\n  (transformers said: {said})") from None
        raise ModelError(
            f"could not load a tokenizer from {name!r}: it is not a local folder and it could "
            "not be downloaded from the Hugging Face hub (offline, or no cached copy). Point to a "
            "local folder holding tokenizer.json (or vocab.json + merges.txt) with "
            "`--tokenizer` (prepare) or `--set model.tokenizer=...` (train), or a local model "
            "folder with `--model`, "
            f"{scratch}\n  (transformers said: {said})") from None
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"{name!r} only has a slow (Python) tokenizer; doctune needs a fast "
                         "one (tokenizer.json). Convert it with transformers and save it.")
    return tok


def _bare_gpt2_files(folder: Path) -> bool:
    """GPT-2's original tokenizer files alone: vocab.json + merges.txt with its EOS token."""
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        return False
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return False
    try:
        return EOS_TOKEN in json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def backend(tokenizer: PreTrainedTokenizerBase | Tokenizer) -> Tokenizer:
    """The Rust :class:`tokenizers.Tokenizer` behind ``tokenizer``."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    inner = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(inner, Tokenizer):
        raise ModelError(f"{type(tokenizer).__name__} is not a fast tokenizer; doctune needs "
                         "one backed by the `tokenizers` library (tokenizer.json).")
    return inner


def eos_id(tokenizer: PreTrainedTokenizerBase | Tokenizer) -> int:
    """The id of the end-of-text token that separates documents."""
    found = getattr(tokenizer, "eos_token_id", None)
    if found is None:
        found = backend(tokenizer).token_to_id(EOS_TOKEN)
    if found is None:
        raise ModelError("the tokenizer has no end-of-text token (eos_token, or "
                         f"{EOS_TOKEN!r} in its vocabulary), which separates documents; "
                         "add one with `tokenizer.add_special_tokens({'eos_token': ...})`.")
    return int(found)


def vocab_size(tokenizer: PreTrainedTokenizerBase | Tokenizer) -> int:
    """Number of token ids, added tokens included."""
    return int(backend(tokenizer).get_vocab_size(with_added_tokens=True))


def identity(tokenizer: PreTrainedTokenizerBase | Tokenizer) -> dict[str, Any]:
    """Name, EOS id, vocabulary size and a hash of the full tokenizer definition.

    Two tokenizers with the same ``hash`` produce the same ids for the same text.
    """
    spec = backend(tokenizer).to_str()
    eos = eos_id(tokenizer)
    digest = hashlib.sha256(spec.encode("utf-8") + f"\0eos={eos}".encode()).hexdigest()
    return {
        "name": str(getattr(tokenizer, "name_or_path", "") or ""),
        "class": type(tokenizer).__name__,
        "hash": digest,
        "eos_id": eos,
        "vocab_size": vocab_size(tokenizer),
    }


def token_dtype(n_vocab: int) -> np.dtype[Any]:
    """The smallest unsigned dtype holding every id below ``n_vocab``."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


def _batches(texts: Sequence[str], max_chars: int) -> Iterator[tuple[int, int]]:
    start, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= max_chars:
            yield start, i + 1
            start, size = i + 1, 0
    if start < len(texts):
        yield start, len(texts)


def encode_batch(
    tokenizer: PreTrainedTokenizerBase | Tokenizer,
    texts: Sequence[str],
    *,
    dtype: np.dtype[Any] | None = None,
    max_chars: int = BATCH_CHARS,
) -> list[np.ndarray]:
    """Token ids of each text (no special tokens added), as 1-D arrays of ``dtype``."""
    tok = backend(tokenizer)
    dtype = dtype or token_dtype(vocab_size(tokenizer))
    # encode_batch_fast skips character offsets, which doctune never uses.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    out: list[np.ndarray] = []
    for lo, hi in _batches(texts, max_chars):
        for enc in encode(list(texts[lo:hi]), add_special_tokens=False):
            out.append(np.asarray(enc.ids, dtype=dtype))
    return out

