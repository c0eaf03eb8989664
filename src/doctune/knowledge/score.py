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
MC_TOKENS = 4096
"""Multiple-choice questions are read together while their option rows x (longest prompt +
longest option) stay within this many tokens of cache: 15 closed-book questions of 4
options in two groups; an open-book question, whose prompt holds its section, alone or
with one or two others."""
MC_LOGIT_BYTES = 256 * 2**20
"""... and while their options' logits (rows x longest option x vocabulary, in fp32) stay
within this many bytes: 60 options of 20 tokens of a 49k-word vocabulary are 236 MB, of a
152k-word one (Qwen) 730 MB, so those go in smaller groups."""


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
    return "cache" if _takes(model, "cache") else "past_key_values"


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


@dataclass(frozen=True)
class _Options:
    """One question's options rendered as the assistant's answers."""

    rows: list[list[int]]
    """Each option's example: prompt, answer, end of turn."""
    scored: list[list[int]]
    """Per row, the positions whose tokens are scored: its answer, not the end of turn."""
    shared: int
    """Leading tokens every row holds (the prompt, read once); 0: each row is read whole."""


def _options(tokenizer: Any, question: str, options: Sequence[str], system: str | None,
             share_prompt: bool) -> _Options:
    examples = [render_qa(tokenizer, question, o, system=system) for o in options]
    rows = [e.input_ids for e in examples]
    # the scored tokens: each option's answer, without the end-of-turn token after it
    scored = [[t for t in range(len(e.labels) - 1) if e.labels[t] != IGNORE_INDEX]
              for e in examples]
    shared = 0
    if share_prompt and len(rows) > 1:
        common = next((k for k, col in enumerate(zip(*rows, strict=False)) if len(set(col)) > 1),
                      min(len(r) for r in rows))
        # the token before each option's first scored one must be read with the options
        shared = max(0, min([common, *(p[0] - 1 for p in scored if p)]))
    return _Options(rows, scored, shared)


def _picked(logits: Any, row: list[int], positions: list[int], offset: int) -> tuple[float, int]:
    """(sum of log p(row[t]) over ``positions``, their count) from ``logits``, one row of
    them, whose first is that of position ``offset``."""
    import torch

    if not positions:
        return 0.0, 0
    # the logits at position t - 1 predict token t; only those rows are normalised
    at = torch.tensor([t - 1 - offset for t in positions], device=logits.device)
    logp = torch.log_softmax(logits[at].float(), dim=-1)
    target = torch.tensor([row[t] for t in positions], device=logits.device)
    return float(logp.gather(-1, target.unsqueeze(-1)).sum()), len(positions)


def _read_whole(model: Any, pad: int, q: _Options) -> list[tuple[float, int]]:
    """Each option of one question read whole, the options side by side."""
    import torch

    width = max(len(r) for r in q.rows)
    device = _device(model)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in q.rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in q.rows], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return [_picked(logits[k], r, p, 0) for k, (r, p) in enumerate(zip(q.rows, q.scored,
                                                                      strict=True))]


def _read_shared(model: Any, pad: int, group: Sequence[_Options]
                 ) -> list[list[tuple[float, int]]] | None:
    """The options of several questions: their prompts read once, side by side (left-padded,
    positions counted from each one's first token), then every option of every question
    after its question's key/value cache. None when the model takes no position ids or
    gives no cache that can be reordered."""
    import torch

    if not _takes(model, "position_ids"):  # left padding needs the positions given
        return None
    device, name = _device(model), _cache_name(model)
    prompts = [q.rows[0][:q.shared] for q in group]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    keep = {"logits_to_keep": 1} if _takes(model, "logits_to_keep") else {}  # only the cache
    with torch.no_grad():
        past = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                     use_cache=True, **keep).get(name)
    if past is None or not hasattr(past, "reorder_cache"):
        return None
    owner = [g for g, q in enumerate(group) for _ in q.rows]  # each option row's question
    past.reorder_cache(torch.tensor(owner, device=device))
    rest = [r[q.shared:] for q in group for r in q.rows]
    wide = max(len(r) for r in rest)
    ids = torch.tensor([r + [pad] * (wide - len(r)) for r in rest], device=device)
    mask = torch.cat([mask[owner], torch.tensor([[1] * len(r) + [0] * (wide - len(r))
                                                 for r in rest], device=device)], dim=1)
    start = torch.tensor([len(prompts[g]) for g in owner], device=device).unsqueeze(1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=True, **{name: past},
                       position_ids=start + torch.arange(wide, device=device)).logits
    out: list[list[tuple[float, int]]] = []
    k = 0
    for q in group:
        out.append([_picked(logits[k + j], r, p, q.shared)
                    for j, (r, p) in enumerate(zip(q.rows, q.scored, strict=True))])
        k += len(q.rows)
    return out


def _vocab(model: Any) -> int:
    """The size of the model's output vocabulary (262,144, Gemma 3's, when it cannot say)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    return int(getattr(getattr(model, "config", None), "vocab_size", 0) or 262_144)


def _positions(mask: Any) -> Any:
    """Position ids of left-padded rows: 0 at each row's first real token (padding: 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _takes(model: Any, argument: str) -> bool:
    """Whether the model's forward takes ``argument``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return argument in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _groups(order: Sequence[int], questions: Sequence[_Options], vocab: int) -> list[list[int]]:
    """``order`` (by shared prompt length) cut into groups read together: as many questions
    as keep option rows x (longest prompt + longest option) within :data:`MC_TOKENS`, and
    their logits (rows x longest option x ``vocab`` floats) within :data:`MC_LOGIT_BYTES`."""
    groups: list[list[int]] = []
    rows = prompt = rest = 0
    for k in order:
        q = questions[k]
        n, p, r = rows + len(q.rows), max(prompt, q.shared), max(rest, *(len(x) - q.shared
                                                                         for x in q.rows))
        if groups and n * (p + r) <= MC_TOKENS and 4 * n * r * vocab <= MC_LOGIT_BYTES:
            groups[-1].append(k)
            rows, prompt, rest = n, p, r
        else:
            groups.append([k])
            rows, prompt, rest = len(q.rows), q.shared, max(len(x) - q.shared for x in q.rows)
    return groups


def mc_logprobs(model: Any, tokenizer: Any, questions: Sequence[str],
                options: Sequence[Sequence[str]], *, system: str | None = None,
                share_prompt: bool = True) -> list[list[tuple[float, int]]]:
    """Per question, per option: (sum of log p(option tokens | question prompt), option
    token count).

    Each option is rendered as the assistant's answer (:func:`render_qa`); the end-of-turn
    token after it is not scored, so an option is not rewarded for ending. ``share_prompt``:
    the prompt a question's options share is read once and its key/value cache given to
    each option (an open-book prompt holds a whole section: reading it once per option was
    most of the scoring's time), and questions are read together, a few thousand tokens at
    a time (``benchmarks/bench_scoring.py --mc-only``: 15 closed-book questions of
    SmolLM2-135M in bf16 on 2 CPU cores, 0.20 s a question one at a time, 0.14 s together;
    open book, its prompts long, 0.63 and 0.61 s); the same numbers within float rounding.
    A model that takes no position ids or gives no cache that can be reordered is read
    whole, a question at a time."""
    items = [_options(tokenizer, q, o, system, share_prompt)
             for q, o in zip(questions, options, strict=True)]
    pad = _pad_id(tokenizer)
    out: list[list[tuple[float, int]] | None] = [None] * len(items)
    for k, q in enumerate(items):
        if q.shared == 0:
            out[k] = _read_whole(model, pad, q)
    order = sorted((k for k, q in enumerate(items) if q.shared > 0), key=lambda k: items[k].shared)
    for group in _groups(order, items, _vocab(model)):
        got = _read_shared(model, pad, [items[k] for k in group])
        for n, k in enumerate(group):
            out[k] = got[n] if got is not None else _read_whole(model, pad, items[k])
    return [o for o in out if o is not None]


def option_logprobs(model: Any, tokenizer: Any, question: str, options: Sequence[str], *,
                    system: str | None = None, share_prompt: bool = True,
                    ) -> list[tuple[float, int]]:
    """(sum of log p(option tokens | question prompt), option token count) per option of
    one question (:func:`mc_logprobs`)."""
    return mc_logprobs(model, tokenizer, [question], [options], system=system,
                       share_prompt=share_prompt)[0]


def score_mc(model: Any, tokenizer: Any, questions: Sequence[str],
             options: Sequence[Sequence[str]], answer_index: Sequence[int], *,
             system: str | None = None, share_prompt: bool = True) -> MCScore:
    """Multiple-choice accuracy (raw and per token) from option log-likelihoods
    (``share_prompt``: see :func:`option_logprobs`)."""
    if not len(questions) == len(options) == len(answer_index):
        raise ValueError(f"{len(questions)} questions, {len(options)} option lists and "
                         f"{len(answer_index)} answers: one each per item")
    scored = mc_logprobs(model, tokenizer, questions, options, system=system,
                         share_prompt=share_prompt)
    raw = [mc_choice([lp for lp, _ in s]) == a for s, a in zip(scored, answer_index, strict=True)]
    per_token = [mc_choice([lp for lp, _ in s], [n for _, n in s]) == a
                 for s, a in zip(scored, answer_index, strict=True)]
    chance = sum(1 / len(o) for o in options) / len(options) if options else 0.0
    return MCScore(accuracy(raw), accuracy(per_token), chance, scored)
