"""Text generation from a loaded model, streamed piece by piece as tokens arrive.

``generate_text`` runs transformers' ``generate`` with a streamer that hands each finished
piece of text to a callback (no thread needed). Temperature 0 means greedy decoding.
With ``chat=True`` the prompt is a user message, rendered through the model's chat template
(:func:`chat_prompt`), and generation stops at end-of-text or the template's end of turn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from doctune.errors import ConfigError
from doctune.sampling import Sampling, generate_kwargs, prompt_ids

if TYPE_CHECKING:
    from doctune.inference import Loaded


@dataclass(frozen=True)
class Generation:
    """One completion and what shaped it."""

    prompt: str
    text: str
    """The generated text only (the prompt is not repeated)."""
    new_tokens: int
    prompt_tokens: int
    dropped_prompt_tokens: int
    """Prompt tokens cut from the start so that prompt + new tokens fit the context."""


def _streamer(tokenizer: Any, on_text: Callable[[str], None]) -> Any:
    from transformers import TextStreamer

    class _CallbackStreamer(TextStreamer):
        # TextStreamer holds text back until a word (or a character) is complete.
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def chat_prompt(tokenizer: Any, message: str, *, system: str | None = None) -> str:
    """``message`` as a user turn rendered by the tokenizer's chat template, ready for the reply.

    Raises :class:`ConfigError` when the model has no chat template (a base model).
    """
    from doctune.modeling import chat_template

    template = chat_template(tokenizer)
    if template is None:
        raise ConfigError("This model has no chat template (it is a base, completion model), so "
                          "--chat cannot format a conversation. Generate without --chat, or use an "
                          "instruct model or one trained on chat data.")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(text)


def generate_text(loaded: Loaded, prompt: str, sampling: Sampling | None = None, *,
                  on_text: Callable[[str], None] | None = None, chat: bool = False,
                  system: str | None = None) -> Generation:
    """Complete ``prompt``; each finished piece of text goes to ``on_text`` as it comes.

    ``chat=True``: ``prompt`` is a user message (``system`` an optional system message),
    rendered by :func:`chat_prompt`; the reply stops at end-of-text or end of turn.
    """
    import torch

    from doctune.inference import context_length
    from doctune.modeling import stop_token_ids

    s = (sampling or Sampling()).check()
    model, tok = loaded.model, loaded.tokenizer
    # a chat template writes its own BOS where the model wants one
    ids = prompt_ids(tok, chat_prompt(tok, prompt, system=system) if chat else prompt)  # (1, P)
    n_ctx = context_length(model)
    dropped = 0
    if n_ctx is not None:
        if s.max_new_tokens >= n_ctx:
            raise ConfigError(f"--max-new-tokens is {s.max_new_tokens}, but this model reads at "
                              f"most {n_ctx} tokens; use --max-new-tokens {n_ctx // 2} or less.")
        dropped = max(0, ids.shape[1] + s.max_new_tokens - n_ctx)
        ids = ids[:, dropped:]
    kwargs = generate_kwargs(s, tok)
    if chat:  # stop at the end of the turn as well as at end-of-text
        kwargs["eos_token_id"] = stop_token_ids(tok) or tok.eos_token_id
    if on_text is not None:
        kwargs["streamer"] = _streamer(tok, on_text)
    if s.seed is not None:
        torch.manual_seed(s.seed)
    ids = ids.to(loaded.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)  # (1, P + N)
    new = out[0, ids.shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    return Generation(prompt, text, int(new.numel()), int(ids.shape[1]), dropped)


def interactive(loaded: Loaded, sampling: Sampling, *, prompts: Iterable[str],
                write: Callable[[str], None], ask: Callable[[], None] | None = None,
                chat: bool = False) -> int:
    """Answer each prompt from ``prompts`` (e.g. lines of stdin) until it ends or says ``exit``.

    With a seed, the n-th prompt uses ``seed + n`` so that answers differ yet replay exactly.
    ``chat=True`` treats each line as a user message (see :func:`generate_text`).
    Returns how many prompts were answered.
    """
    n = 0
    if ask:
        ask()
    for line in prompts:
        prompt = line.rstrip("\n").replace("\\n", "\n")
        if prompt.strip() in {"exit", "quit", ":q"}:
            break
        if prompt.strip():
            seed = None if sampling.seed is None else sampling.seed + n
            generate_text(loaded, prompt, replace(sampling, seed=seed), on_text=write, chat=chat)
            write("\n")
            n += 1
        if ask:
            ask()
    return n
