"""How doctune samples text: one set of defaults and one tokenisation rule for the prompt,
shared by ``doctune generate`` and the samples written during training.

A prompt is tokenised as training tokenised the docs: without special tokens (no BOS is
added), and an empty prompt starts where a new document starts in training, after the
end-of-text token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from doctune.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token."""

    temperature: float = 0.8
    """Softmax temperature; 0 picks the most likely token every time (greedy)."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest set of tokens whose probabilities sum to top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: no limit)."""
    repetition_penalty: float = 1.0
    """Above 1 makes tokens already in the text less likely (1: off)."""
    max_new_tokens: int = 128
    """How many tokens to generate at most (generation also stops at end-of-text)."""
    seed: int | None = None
    """Seed of the sampler: the same seed, prompt and model give the same text."""

    def check(self) -> Sampling:
        """Return self, or raise :class:`ConfigError` naming the first value out of range."""
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be 0 (greedy) or more, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be 0 (off) or more, got {self.top_k}.")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"--repetition-penalty must be above 0 (1 = off), got {self.repetition_penalty}.")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}.")
        return self


def prompt_ids(tokenizer: Any, prompt: str) -> torch.Tensor:
    """``prompt`` as a ``(1, P)`` tensor of ids, tokenised as training tokenised the docs."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:  # an empty prompt starts a new document, as in training
        eos = tokenizer.eos_token_id
        ids = torch.tensor([[eos if eos is not None else 0]])
    return ids


def generate_kwargs(s: Sampling, tokenizer: Any) -> dict[str, Any]:
    """The arguments of transformers' ``generate`` for ``s`` (greedy when temperature is 0)."""
    eos = tokenizer.eos_token_id
    kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens,
                              "repetition_penalty": s.repetition_penalty,
                              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
                              "eos_token_id": eos}
    if s.temperature == 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    return kwargs
