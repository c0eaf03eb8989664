"""Knowledge scores of a loaded model: greedy answers (exact match, F1, stop rate) and
multiple-choice log-likelihoods, every prompt rendered with the tokenizer's chat template
exactly as :mod:`doctune.knowledge.chat` renders training examples.

The model is used as given (device, dtype, eval mode are the caller's; gradients are off
here). Prompts are batched with left padding for generation and right padding for
scoring; a padded batch gives the same numbers as one prompt at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from doctune.config import default_of
from doctune.data.store import IGNORE_INDEX
from doctune.knowledge.chat import end_of_turn_id, render_document, render_prompt, render_qa
from doctune.knowledge.metrics import (
    Accuracy,
    accuracy,
    exact_match,
    mc_choice,
    stop_rate,
    token_f1,
)

GENERATE_TOKENS = 4096
"""Prompts of a few dozen tokens are answered more than ``batch_size`` at a time, as many
as keep rows x (longest prompt + new tokens) within this many tokens of cache: a step of a
small model costs about the same for 8 rows as for 32 (26 closed-book questions, 32 new
tokens, SmolLM2-135M on 2 CPU cores: 9.2 s in batches of 8, 5.1-5.9 s in one), and 4,096
tokens of an 8B model's cache are half a GB."""


@dataclass(frozen=True)
class Generation:
    """One answer (greedy or sampled)."""

    text: str
    """Decoded without special tokens, white space stripped (``plain`` text: as written)."""
    ids: list[int]
    """The generated ids, up to and including the stop token when one came."""
    stopped: bool
    """Whether generation ended with an end-of-turn/end-of-text token."""


@dataclass(frozen=True)
class QAScore:
    """Exact match and F1 over a set of questions."""

    exact_match: Accuracy
    f1: float
    """Mean token F1."""
    stop_rate: float
    generations: list[Generation]


@dataclass(frozen=True)
class MCScore:
    """Multiple-choice accuracy, raw and per token."""

    accuracy: Accuracy
    accuracy_per_token: Accuracy
    chance: float
    """Mean of 1 / number of options: what guessing scores."""
    logprobs: list[list[tuple[float, int]]]
    """Per item, per option: (summed log-likelihood, token count)."""


def stop_ids(tokenizer: Any) -> list[int]:
    """Ids that end an answer: the template's end-of-turn token and end-of-text."""
    ids = {end_of_turn_id(tokenizer)}
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _cache_name(model: Any) -> str:
    """What the model's forward and output call the key/value cache: ``cache`` in recent
    transformers, ``past_key_values`` before (the old name warns, then goes)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0


def greedy_answers(model: Any, tokenizer: Any, questions: Sequence[str], *,
                   max_new_tokens: int = 32, batch_size: int = default_of("eval.batch_size"),
                   system: str | None = None) -> list[Generation]:
    """The model's greedy answer to each question, stopping at end-of-turn/end-of-text."""
    return generate_answers(model, tokenizer, questions, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, system=system)


def sampled_choice(scores: Any, temperature: float) -> Any:
    """``scores`` (logits, one row per sequence) turned into rows whose argmax is a sample
    from ``softmax(scores / temperature)``: 0 at the sampled token, -inf elsewhere. The
    sample is drawn by inverting the cumulative distribution with one uniform number per
    row from torch's generator; the running total is summed in float64 (float32 on MPS,
    which has none): in float32, once it nears 1, words of probability under 6e-8 add
    nothing and could never be drawn, and a 152k-word vocabulary has thousands of them. On a
    CPU, ``torch.multinomial`` (what transformers samples with) draws an exponential number
    for every word of the vocabulary: 67 ms a step for 64 rows of a 49k-word vocabulary,
    this a few ms (``benchmarks/bench_scoring.py --replay``). A row with no finite score
    (or a NaN) is an error, as it is for ``torch.multinomial``."""
    import torch

    wide = torch.float32 if scores.device.type == "mps" else torch.float64
    cumulative = torch.softmax(scores.float() / temperature, dim=-1).to(wide).cumsum(dim=-1)
    total = cumulative[:, -1:]
    if not bool(torch.isfinite(total).all()) or not bool((total > 0).all()):
        raise ValueError(
            "cannot sample: a row of the model's scores has no finite value or holds a NaN, "
            "so its weights or its arithmetic broke (an overflow in fp16 is the usual cause); "
            "check it with `doctune generate MODEL --chat \"Hello\"`, or train without its "
            "sampled answers (`--set knowledge.replay_source=text`)")
    u = torch.rand(scores.shape[0], 1, device=scores.device, dtype=wide) * total
    picked = torch.searchsorted(cumulative, u, right=True).clamp(max=scores.shape[-1] - 1)
    return torch.full_like(scores, float("-inf")).scatter_(1, picked, 0.0)


def _sample_processor(temperature: float) -> Any:
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Sample(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            return sampled_choice(scores, temperature)

    return LogitsProcessorList([_Sample()])


def generate_answers(model: Any, tokenizer: Any, questions: Sequence[str], *,
                     max_new_tokens: int = 32, batch_size: int = default_of("eval.batch_size"),
                     system: str | None = None, temperature: float = 0.0,
                     plain: bool = False) -> list[Generation]:
    """The model's answer to each question, stopping at end-of-turn/end-of-text: greedy at
    ``temperature`` 0, else sampled from the model's own distribution at that temperature
    (none of the top-k, top-p, min-p, temperature or repetition penalty the model's
    generation config may set; processors that ban words, such as ``no_repeat_ngram_size``
    or ``suppress_tokens``, still apply, as they did to transformers' own sampling; the
    caller seeds torch's generator). ``plain``: each "question" is the opening of a plain
    text (no chat template) and its answer the text the model writes on, not stripped, so
    that opening + answer is the text as written."""
    import torch

    # sampled as an argmax too (:func:`sampled_choice`): never transformers' top-k, top-p
    # or other warpers, whatever the model's generation config says
    how: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        how.update(logits_processor=_sample_processor(temperature), repetition_penalty=1.0)

    stops = stop_ids(tokenizer)
    pad = _pad_id(tokenizer)
    rendered = [render_document(tokenizer, q, add_eos=False).input_ids if plain else
                render_prompt(tokenizer, q, system=system) for q in questions]
    # batched by length: an open-book prompt holds a section, and a batch is as wide as its
    # longest prompt (in the given order about 1.6x the tokens to read, sorted 1.1x)
    order = sorted(range(len(rendered)), key=lambda k: len(rendered[k]))
    out: list[Generation | None] = [None] * len(rendered)
    for batch in _batches(order, [len(r) + max_new_tokens for r in rendered], batch_size):
        prompts = [rendered[k] for k in batch]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(_device(model)),
                                 attention_mask=mask.to(_device(model)), **how,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=pad)
        for k, row in zip(batch, gen[:, width:].tolist(), strict=True):
            cut = next((n + 1 for n, t in enumerate(row) if t in stops), len(row))
            row = row[:cut]
            text = tokenizer.decode(row, skip_special_tokens=True)
            text = text if plain else text.strip()
            out[k] = Generation(text=text, ids=row, stopped=bool(row) and row[-1] in stops)
    return [g for g in out if g is not None]


def _batches(order: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """``order`` (by length, shortest first) cut into batches of ``batch_size`` prompts, or
    more while the batch's cache (rows x its longest ``lengths``: prompt and new tokens)
    stays within :data:`GENERATE_TOKENS`."""
    batches: list[list[int]] = []
    for k in order:
        last = batches[-1] if batches else None
        if last is not None and (len(last) < batch_size
                                 or (len(last) + 1) * lengths[k] <= GENERATE_TOKENS):
            last.append(k)
        else:
            batches.append([k])
    return batches


def score_qa(model: Any, tokenizer: Any, questions: Sequence[str],
             answers: Sequence[str | Sequence[str]], **kwargs: Any) -> QAScore:
    """Exact match (with its Wilson interval), mean F1 and stop rate of greedy answers;
    ``answers[k]`` is the gold answer (or answers) of ``questions[k]``."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    gens = greedy_answers(model, tokenizer, questions, **kwargs)
    em = [exact_match(g.text, a) for g, a in zip(gens, answers, strict=True)]
    f1 = [token_f1(g.text, a) for g, a in zip(gens, answers, strict=True)]
    return QAScore(exact_match=accuracy([x == 1.0 for x in em]),
                   f1=sum(f1) / len(f1) if f1 else 0.0,
                   stop_rate=stop_rate([g.ids for g in gens], stop_ids(tokenizer)),
                   generations=gens)


def option_logprobs(model: Any, tokenizer: Any, question: str, options: Sequence[str], *,
                    system: str | None = None, share_prompt: bool = True,
                    ) -> list[tuple[float, int]]:
    """(sum of log p(option tokens | question prompt), option token count) per option.

    Each option is rendered as the assistant's answer (:func:`render_qa`); the end-of-turn
    token after it is not scored, so an option is not rewarded for ending. ``share_prompt``:
    the prompt the options share is read once and its key/value cache given to every
    option (an open-book prompt holds a whole section: reading it once per option was most
    of the scoring's time); the same numbers within float rounding. A model that gives no
    cache that can be repeated is read whole, option by option."""
    import torch

    examples = [render_qa(tokenizer, question, o, system=system) for o in options]
    rows = [e.input_ids for e in examples]
    # the scored tokens: each option's answer, without the end-of-turn token after it
    scored = [[t for t in range(len(e.labels) - 1) if e.labels[t] != IGNORE_INDEX]
              for e in examples]
    device = _device(model)
    shared, past = 0, None
    if share_prompt and len(rows) > 1:
        common = next((k for k, col in enumerate(zip(*rows, strict=False)) if len(set(col)) > 1),
                      min(len(r) for r in rows))
        # the token before each option's first scored one must be read with the options
        shared = min([common, *(p[0] - 1 for p in scored if p)])
    name = _cache_name(model)
    if shared > 0:
        with torch.no_grad():
            past = model(input_ids=torch.tensor([rows[0][:shared]], device=device),
                         use_cache=True).get(name)
        if past is None or not hasattr(past, "batch_repeat_interleave"):
            shared, past = 0, None
        else:
            past.batch_repeat_interleave(len(rows))
    rest = [r[shared:] for r in rows]
    width = max(len(r) for r in rest)
    pad = _pad_id(tokenizer)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rest], device=device)
    mask = torch.tensor([[1] * (shared + len(r)) + [0] * (width - len(r)) for r in rest],
                        device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=past is not None,
                       **({name: past} if past is not None else {})).logits
    out = []
    for k, positions in enumerate(scored):
        if not positions:
            out.append((0.0, 0))
            continue
        # the logits at position t - 1 predict token t; only those rows are normalised
        at = torch.tensor([t - 1 - shared for t in positions], device=logits.device)
        logp = torch.log_softmax(logits[k, at].float(), dim=-1)
        target = torch.tensor([rows[k][t] for t in positions], device=logits.device)
        out.append((float(logp.gather(-1, target.unsqueeze(-1)).sum()), len(positions)))
    return out


def score_mc(model: Any, tokenizer: Any, questions: Sequence[str],
             options: Sequence[Sequence[str]], answer_index: Sequence[int], *,
             system: str | None = None, share_prompt: bool = True) -> MCScore:
    """Multiple-choice accuracy (raw and per token) from option log-likelihoods
    (``share_prompt``: see :func:`option_logprobs`)."""
    if not len(questions) == len(options) == len(answer_index):
        raise ValueError(f"{len(questions)} questions, {len(options)} option lists and "
                         f"{len(answer_index)} answers: one each per item")
    scored = [option_logprobs(model, tokenizer, q, o, system=system, share_prompt=share_prompt)
              for q, o in zip(questions, options, strict=True)]
    raw = [mc_choice([lp for lp, _ in s]) == a for s, a in zip(scored, answer_index, strict=True)]
    per_token = [mc_choice([lp for lp, _ in s], [n for _, n in s]) == a
                 for s, a in zip(scored, answer_index, strict=True)]
    chance = sum(1 / len(o) for o in options) / len(options) if options else 0.0
    return MCScore(accuracy(raw), accuracy(per_token), chance, scored)
