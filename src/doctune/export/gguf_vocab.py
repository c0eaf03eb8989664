"""The tokenizer inside a GGUF file: llama.cpp's ``gpt2`` tokenizer model (byte-level BPE).

llama.cpp re-implements each pre-tokenizer (the regex that splits text before BPE) in C++
and picks one by the name stored in ``tokenizer.ggml.pre``. Its converter,
``convert_hf_to_gguf.py`` (``get_vocab_base_pre``), finds that name by hashing the ids the
tokenizer gives for a fixed test text. doctune does the same for the tokenizers of the
model families it exports; for any other tokenizer (one trained on the docs, say) it reads
the pre-tokenizer from ``tokenizer.json`` and accepts only those whose llama.cpp regex is
the same. Anything else is an :class:`ExportError`: a wrong name gives a file that loads,
runs, and tokenizes text differently from the model it was trained with.
"""

from __future__ import annotations

import json
from hashlib import sha256
from typing import Any

from doctune.errors import ExportError
from doctune.modeling import chat_template, end_of_turn_token

# convert_hf_to_gguf.py's `chktxt`, character for character: the hash below is of the ids
# the tokenizer gives for it, so one changed character changes every hash.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 "
    "33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

KNOWN_HASHES = {
    # A subset of get_vocab_base_pre's table: the tokenizers of the families doctune exports.
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # gpt2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM(2)
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5-2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 embedding
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
}

# The split regexes of tokenizer.json that llama.cpp's pre-tokenizers reproduce.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BYTES_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_BYTES_ONLY = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
_STRUCTURES: list[tuple[str, list[dict[str, Any]], bool]] = [
    # (llama.cpp name, pre-tokenizer steps, BPE ignore_merges llama.cpp applies for it)
    ("gpt-2", [_BYTES_REGEX], False),
    ("smollm", [{"type": "Digits", "individual_digits": True}, _BYTES_REGEX], False),
    ("llama-bpe", [{"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated",
                    "invert": False}, _BYTES_ONLY], True),
    ("qwen2", [{"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated",
                "invert": False}, _BYTES_ONLY], False),
]
_HINT = ("Export with `--format hf` and convert the folder with llama.cpp's "
         "`convert_hf_to_gguf.py` (it knows more tokenizers), or train with a byte-level BPE "
         "tokenizer of GPT-2, Llama 3, SmolLM or Qwen2.")


def check_hash(tokenizer: Any) -> str:
    """The hash ``convert_hf_to_gguf.py`` computes to identify ``tokenizer``'s pre-tokenizer."""
    return sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()


def _steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre["pretokenizers"] for s in _steps(p)]
    return [pre]


def _matches(step: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(step.get(k) == v for k, v in want.items())


def _spec_problem(spec: dict[str, Any]) -> str | None:
    """Why ``spec`` (a tokenizer.json) is no byte-level BPE, or None when it is one."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"a {model.get('type')} model, not byte-level BPE"
    norm = spec.get("normalizer") or {}
    norm_types = {n.get("type") for n in norm.get("normalizers", [norm])}
    pre_types = {s.get("type") for s in _steps(spec.get("pre_tokenizer"))}
    if model.get("byte_fallback") or "Metaspace" in pre_types or "Prepend" in norm_types:
        return ("a SentencePiece-style tokenizer (Llama 2, TinyLlama, Mistral), which GGUF export "
                "does not write yet")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
        return "a BPE model with subword prefixes, suffixes or dropout"
    return None


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the pre-tokenizer of ``tokenizer``.

    Raises :class:`ExportError` when llama.cpp would not split text as ``tokenizer`` does.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    problem = _spec_problem(spec)
    if problem:
        raise ExportError(f"GGUF export needs a byte-level BPE tokenizer; this one is {problem}. {_HINT}")
    chkhsh = check_hash(tokenizer)
    if chkhsh in KNOWN_HASHES:
        return KNOWN_HASHES[chkhsh]
    steps = _steps(spec.get("pre_tokenizer"))
    norm = (spec.get("normalizer") or {}).get("type")
    for name, want, ignore_merges in _STRUCTURES:
        if (len(steps) == len(want) and all(_matches(s, w) for s, w in zip(steps, want, strict=True))
                and bool(spec["model"].get("ignore_merges")) == ignore_merges
                and (norm is None or (norm == "NFC" and name == "qwen2"))):  # Qwen2's own has NFC
            return name
    found = " + ".join(str(s.get("type")) for s in steps) or "none"
    raise ExportError(f"llama.cpp has no pre-tokenizer known to split text as this tokenizer does "
                      f"(pre-tokenizer: {found}; normalizer: {norm}; convert_hf_to_gguf.py hash "
                      f"{chkhsh}), so a GGUF file would tokenize differently. {_HINT}")


def _looks_special(token: str) -> bool:
    """convert_hf_to_gguf.py's ``does_token_look_special``: added tokens it marks CONTROL."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _merges(spec: dict[str, Any]) -> list[str]:
    # tokenizer.json holds "a b" strings, or [a, b] pairs (which may contain spaces, encoded
    # as gguf's SpecialVocab does: U+0120 for ' ').
    return [m if isinstance(m, str) else
            " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in m)
            for m in spec["model"].get("merges", [])]


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Token list, token types, merges, special ids and ``pre`` as llama.cpp's ``gpt2`` model reads them.

    Follows ``get_vocab_base`` in convert_hf_to_gguf.py: one entry per embedding row, rows no
    token uses as ``[PAD{i}]`` (UNUSED), added tokens CONTROL when special, else USER_DEFINED.
    """
    import gguf

    pre = pre_tokenizer_name(tokenizer)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise ExportError(f"The tokenizer has ids up to {max(vocab.values())}, but the model's "
                          f"embedding has only {vocab_size} rows; they do not belong together.")
    by_id = {i: t for t, i in vocab.items()}
    added = dict(tokenizer.added_tokens_decoder)
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows no token uses (vocab padded to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = by_id[i]
        if i not in added:
            types.append(gguf.TokenType.NORMAL)
        else:
            if not added[i].normalized:  # llama.cpp assumes added tokens are pre-normalized
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added[i].special or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        tokens.append(token)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ExportError("The tokenizer has no end-of-text token; llama.cpp needs one to stop.")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    eot = end_of_turn_token(tokenizer)
    return {"tokens": tokens, "types": types, "merges": _merges(spec), "pre": pre, "eos": eos,
            "bos": bos, "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id,
            "eot": vocab[eot] if eot is not None else None, "chat_template": chat_template(tokenizer)}


def add_tokenizer(writer: Any, tok: dict[str, Any]) -> None:
    """Write ``tok`` (from :func:`tokenizer_fields`) to the GGUF ``writer``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    writer.add_bos_token_id(tok["bos"])
    writer.add_eos_token_id(tok["eos"])
    if tok.get("eot") is not None:  # llama.cpp stops a chat reply here (end of generation)
        writer.add_eot_token_id(tok["eot"])
    if tok.get("chat_template"):
        writer.add_chat_template(tok["chat_template"])
    if tok["unk"] is not None:
        writer.add_unk_token_id(tok["unk"])
    if tok["pad"] is not None:
        writer.add_pad_token_id(tok["pad"])
    # doctune trains and generates without a leading BOS (add_special_tokens=False), and
    # llama.cpp would add one for Llama 3 tokenizers unless told not to.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
