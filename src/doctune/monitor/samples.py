"""Generation samples during training: the same prompts and the same seed at every point,
so that what changes between two samples is the model, not the dice.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_WORD = re.compile(r"\S+")


def default_prompts(texts: list[str], n: int = 3, words: int = 8) -> list[str]:
    """The first ``words`` words of the first ``n`` non-empty texts, line breaks kept.

    >>> default_prompts(["# Intro\\n\\nAstro builds fast sites.", "  ", "Hi"], n=2, words=3)
    ['# Intro\\n\\nAstro', 'Hi']
    """
    prompts: list[str] = []
    for text in texts:
        ends = [m.end() for m in _WORD.finditer(text)][:words]
        if not ends:
            continue
        prompts.append(text[: ends[-1]].lstrip())
        if len(prompts) == n:
            break
    return prompts


def generate_samples(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    device: torch.device | str,
    max_new_tokens: int,
    seed: int,
) -> list[tuple[str, str]]:
    """Return ``(prompt, completion)`` for each prompt, sampled with a fixed ``seed``.

    Each prompt gets its own generation seeded with ``seed``, inside a forked RNG, so the
    training run's random state is untouched (a resumed run stays exact). The model is put
    in eval mode and returned to the mode it was in.
    """
    import torch

    from doctune.sampling import Sampling, generate_kwargs, prompt_ids

    device = torch.device(device)
    was_training = bool(model.training)
    model.eval()
    kwargs = generate_kwargs(Sampling(max_new_tokens=max_new_tokens), tokenizer)
    out: list[tuple[str, str]] = []
    fork_kw: dict[str, Any] = {}
    if device.type in {"cuda", "mps"}:
        fork_kw = {"device_type": device.type}
    try:
        with torch.random.fork_rng(**fork_kw), torch.no_grad():
            for prompt in prompts:
                torch.manual_seed(seed)
                ids = prompt_ids(tokenizer, prompt).to(device)  # (1, P)
                out_ids = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         **kwargs)  # (1, P + new)
                new = out_ids[0, ids.shape[1]:]
                out.append((prompt, tokenizer.decode(new, skip_special_tokens=True)))
    finally:
        model.train(was_training)
    return out


def samples_markdown(step: int, samples: list[tuple[str, str]]) -> str:
    """One step's samples as a Markdown section (the prompt in bold, then the completion).

    Both sit in one fenced block whose fence is longer than any backtick run inside it, so
    generated Markdown (code fences included) cannot break the page.
    """
    parts = [f"## Step {step}\n"]
    for i, (prompt, completion) in enumerate(samples, 1):
        text = prompt + completion
        longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
        fence = "`" * max(3, longest + 1)
        parts.append(f"**Sample {i}** — prompt: {_inline(prompt)}\n\n{fence}text\n{text}\n{fence}\n")
    return "\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """``text`` as one line of inline code, whatever backticks it holds."""
    flat = " ".join(text.split())
    longest = max((len(m) for m in re.findall(r"`+", flat)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"
