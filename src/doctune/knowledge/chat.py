"""Training examples rendered with a tokenizer's chat template, with loss masks.

A question/answer pair becomes ``input_ids`` and ``labels`` where the prompt (system and
user turns, and the assistant header) carries no loss (``IGNORE_INDEX``) and the answer plus the
end-of-turn token that closes it carry the loss; the example ends at that token. The
prompt is tokenised on its own, exactly as :func:`render_prompt` gives it to the model at
inference, and the answer after it, so training sees the token boundary generation sees.

Rules every example keeps:

- at most one BOS, at the start: the template's own (Llama 3, Gemma 3) or the one the
  tokenizer adds to plain text, never both;
- special tokens (``<|im_start|>``, ``<|eot_id|>``, ``<end_of_turn>``) are single ids;
  a rendering that would spell one out in pieces is a :class:`ModelError`;
- a tokenizer without a chat template uses :data:`DEFAULT_CHAT_TEMPLATE` (ChatML), whose
  two special tokens :func:`prepare_chat_tokenizer` adds (then resize the model's
  embeddings); export code saves that template with the model.

:func:`render_document` renders plain document text with the loss on every token, so
both kinds of example can be mixed in one batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from doctune.data.store import IGNORE_INDEX
from doctune.errors import ModelError
from doctune.modeling import DEFAULT_CHAT_TEMPLATE  # ChatML, for a tokenizer that has none

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
# Strings that are special tokens in the families doctune knows; if one is in a rendering
# but not a single token of the tokenizer, it would be learnt as plain text.
_SPECIAL_LOOKING = re.compile(r"<\|[a-z_]+\|>|<(?:start|end)_of_turn>|<bos>|<eos>")


@dataclass(frozen=True)
class Example:
    """One tokenised training example."""

    input_ids: list[int]
    labels: list[int]
    """``IGNORE_INDEX`` where no loss is taken, else the id at that position."""

    @property
    def loss_tokens(self) -> int:
        """How many positions carry loss."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def chat_template_of(tokenizer: Any) -> str:
    """The tokenizer's chat template, or :data:`DEFAULT_CHAT_TEMPLATE` when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE


def prepare_chat_tokenizer(tokenizer: Any) -> int:
    """Give a template-less tokenizer the default ChatML template and its special tokens.

    Returns how many tokens were added: when it is not 0, resize the model's embeddings
    (``model.resize_token_embeddings(len(tokenizer))``). A tokenizer with a template is
    left alone (returns 0).
    """
    if getattr(tokenizer, "chat_template", None):
        return 0
    kept = [str(t) for t in getattr(tokenizer, "additional_special_tokens", None) or []]
    new = [t for t in CHATML_TOKENS if t not in kept]
    added = tokenizer.add_special_tokens({"additional_special_tokens": kept + new})
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return int(added)


def added_chat_tokens(tokenizer: Any, n_vocab: int) -> bool:
    """True when every id of ``tokenizer`` at or above ``n_vocab`` (a model's embedding
    count) is a token :func:`prepare_chat_tokenizer` adds: the model may be resized to it."""
    extra = range(n_vocab, len(tokenizer))
    chat = {tokenizer.convert_tokens_to_ids(t) for t in CHATML_TOKENS}
    return len(extra) > 0 and all(i in chat for i in extra)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_strings(tokenizer: Any) -> dict[str, int]:
    """Special token text -> id (added special tokens and the named ones)."""
    out = {t.content: i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
           if getattr(t, "special", False)}
    for tok in getattr(tokenizer, "all_special_tokens", []):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int):
            out.setdefault(tok, tid)
    return out


def _check_special(tokenizer: Any, text: str) -> None:
    specials = _special_strings(tokenizer)
    missing = sorted({m.group() for m in _SPECIAL_LOOKING.finditer(text)} - set(specials))
    if missing:
        raise ModelError(
            f"the chat template writes {', '.join(missing)}, which this tokenizer would split "
            "into pieces (not special tokens). Call "
            "`doctune.knowledge.chat.prepare_chat_tokenizer(tokenizer)` for a tokenizer "
            "without a chat template, or add them with `tokenizer.add_special_tokens`, then "
            "resize the model's embeddings.")


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos and _encode(tokenizer, "a")[:1] != [bos]


def _one_bos(tokenizer: Any, ids: list[int]) -> list[int]:
    """``ids`` with exactly the BOS the model expects: none added twice."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return ids
    if _adds_bos(tokenizer) and ids[:1] != [bos]:
        ids = [bos, *ids]
    while ids[:2] == [bos, bos]:
        ids = ids[1:]
    return ids


def _messages(question: str, system: str | None) -> list[dict[str, str]]:
    sys_turn = [{"role": "system", "content": system}] if system else []
    return [*sys_turn, {"role": "user", "content": question}]


def render_prompt(tokenizer: Any, question: str, *, system: str | None = None) -> list[int]:
    """The ids of a question as the model sees it at inference: the chat template with the
    generation prompt (the assistant header), one BOS."""
    text = tokenizer.apply_chat_template(_messages(question, system), tokenize=False,
                                         add_generation_prompt=True,
                                         chat_template=chat_template_of(tokenizer))
    _check_special(tokenizer, text)
    return _one_bos(tokenizer, _encode(tokenizer, text))


def _answer_span(prompt: str, full: str, answer: str) -> tuple[int, int]:
    """Where the answer sits in the full rendering (chars).

    Normally the prompt with the generation header is a prefix of the full rendering and
    the answer follows it (templates may trim it). Some templates render the earlier turns
    differently once an assistant turn follows; then the last occurrence of the answer is
    taken: the assistant turn comes last.
    """
    shown = answer.strip()
    if full.startswith(prompt):
        at = full.find(shown, len(prompt))
        if at >= 0 and not full[len(prompt):at].strip():
            return at, at + len(shown)
    at = full.rfind(shown)
    if at < 0 or not shown:
        raise ModelError("cannot find the answer in the chat template's rendering; the "
                         "template changes the assistant's text. Use another template.")
    return at, at + len(shown)


def _end_of_turn(tokenizer: Any, rest: str) -> int:
    """The special token that closes the assistant turn: the first text after the answer."""
    specials = _special_strings(tokenizer)
    for tok in sorted(specials, key=len, reverse=True):
        if tok and rest.startswith(tok):
            return specials[tok]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and rest.lstrip().startswith(eos):
        return int(tokenizer.eos_token_id)
    raise ModelError(f"the chat template puts no end-of-turn token after the answer (it "
                     f"continues with {rest[:20]!r}); the model could not learn to stop. Use "
                     "a template that closes each turn with a special token.")


def end_of_turn_id(tokenizer: Any) -> int:
    """The id of the token that closes an assistant turn in this tokenizer's template."""
    ex = render_qa(tokenizer, "q", "a")
    return ex.input_ids[-1]


def render_qa(tokenizer: Any, question: str, answer: str, *,
              system: str | None = None) -> Example:
    """A question/answer pair with the loss on the answer and the end-of-turn token only.

    The answer is rendered without surrounding white space (some templates trim it, some
    do not: the same tokens either way)."""
    answer = answer.strip()
    template = chat_template_of(tokenizer)
    msgs = _messages(question, system)
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                           chat_template=template)
    full = tokenizer.apply_chat_template([*msgs, {"role": "assistant", "content": answer}],
                                         tokenize=False, chat_template=template)
    _check_special(tokenizer, full)
    start, end = _answer_span(prompt, full, answer)
    eot = _end_of_turn(tokenizer, full[end:])
    prompt_ids = _one_bos(tokenizer, _encode(tokenizer, full[:start]))
    answer_ids = [*_encode(tokenizer, full[start:end]), eot]
    return Example(input_ids=prompt_ids + answer_ids,
                   labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids)


def render_document(tokenizer: Any, text: str, *, add_eos: bool = True) -> Example:
    """Document text as an example with the loss on every token (the BOS, which nothing
    predicts, excepted), ending with end-of-text when ``add_eos``."""
    body = _encode(tokenizer, text)
    ids = _one_bos(tokenizer, body)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        ids.append(int(eos))
    labels = list(ids)
    if len(ids) > len(body) + (add_eos and eos is not None):
        labels[0] = IGNORE_INDEX  # the BOS added in front
    return Example(input_ids=ids, labels=labels)
