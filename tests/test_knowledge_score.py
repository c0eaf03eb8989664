"""Knowledge scores of tiny random models: the numbers equal manual forward passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from chat_templates import build_chat_tokenizer
from doctune.data.store import IGNORE_INDEX
from doctune.knowledge.chat import prepare_chat_tokenizer, render_prompt, render_qa
from doctune.knowledge.metrics import mc_choice
from doctune.knowledge.score import (
    generate_answers,
    greedy_answers,
    option_logprobs,
    sampled_choice,
    score_mc,
    score_qa,
    stop_ids,
)

QUESTIONS = ["What is the default port?", "Which flag sets the host?", "Name the option."]


@pytest.fixture(scope="module", params=["llama3.2", "base"])
def model_and_tokenizer(request: pytest.FixtureRequest, gpt2_tokenizer_dir: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A 2-layer random Llama with the Llama 3.2 chat tokenizer, or a GPT-2 with ChatML."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    folder = build_chat_tokenizer(request.param, gpt2_tokenizer_dir,
                                  tmp_path_factory.mktemp(request.param))
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    if request.param == "llama3.2":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256,
                                           vocab_size=50257))
        prepare_chat_tokenizer(tok)
        model.resize_token_embeddings(len(tok))
    return model.eval(), tok


def _manual_logprob(model: Any, ids: list[int], labels: list[int]) -> tuple[float, int]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    total, n = 0.0, 0
    for t in range(1, len(ids) - 1):  # the final end-of-turn token is not scored
        if labels[t] != IGNORE_INDEX:
            total += float(logp[t - 1, ids[t]])
            n += 1
    return total, n


def test_option_logprobs_equal_a_manual_forward_pass(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = model_and_tokenizer
    options = ["5173", "a much longer wrong answer", "8080", "`server.port`"]
    got = option_logprobs(model, tok, QUESTIONS[0], options)
    for option, (lp, n) in zip(options, got, strict=True):
        ex = render_qa(tok, QUESTIONS[0], option)
        want, want_n = _manual_logprob(model, ex.input_ids, ex.labels)
        assert n == want_n == len(tok(option, add_special_tokens=False)["input_ids"])
        assert abs(lp - want) < 1e-4 and lp < 0


def _both_ways(model: Any, tok: Any, prompt: str, options: list[str],
               ) -> list[tuple[list[tuple[float, int]], int]]:
    """``option_logprobs`` with each option read whole, then sharing the prompt: each with
    the number of tokens the model's embedding read."""
    seen: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].numel()))
    out = []
    try:
        for share in (False, True):
            seen.clear()
            out.append((option_logprobs(model, tok, prompt, options, share_prompt=share),
                        sum(seen)))
    finally:
        hook.remove()
    return out


def test_options_read_their_shared_prompt_once(model_and_tokenizer: tuple[Any, Any]) -> None:
    """The prompt the options share is read once (its cache given to each option), with
    the numbers of reading each option whole; also through a LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    model, tok = model_and_tokenizer
    prompt = "Read this section first. " * 20 + QUESTIONS[0]
    options = ["5173", "a much longer wrong answer", "8080", "`server.port`"]
    (whole, read_whole), (shared, read_shared) = _both_ways(model, tok, prompt, options)
    prompt_len = len(render_prompt(tok, prompt))
    assert read_whole - read_shared >= (len(options) - 1) * (prompt_len - 1)
    for (a, n), (b, m) in zip(whole, shared, strict=True):
        assert n == m and abs(a - b) < 1e-4
    lora = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear",
                                            fan_in_fan_out=model.config.model_type == "gpt2",
                                            init_lora_weights=False)).eval()
    try:
        tuned = option_logprobs(lora, tok, prompt, options)
        tuned_whole = option_logprobs(lora, tok, prompt, options, share_prompt=False)
        assert all(abs(a[0] - b[0]) < 1e-4 for a, b in zip(tuned, tuned_whole, strict=True))
        assert any(abs(a[0] - b[0]) > 1e-3 for a, b in zip(tuned, whole, strict=True))
    finally:
        lora.unload()


def test_a_shared_prompt_longer_than_a_sliding_window(gpt2_tokenizer_dir: Path,
                                                      tmp_path: Path) -> None:
    """Gemma 3's local layers see a window of tokens: its cache keeps the window only, and a
    prompt read once still gives each option the numbers of reading it whole."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(build_chat_tokenizer("gemma3", gpt2_tokenizer_dir,
                                                             tmp_path))
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)).eval()
    prompt = "Read this section first. " * 12 + QUESTIONS[1]
    assert len(render_prompt(tok, prompt)) > 4 * 16
    options = ["--host", "the host flag, and a longer answer than the window", "--port"]
    (whole, read_whole), (shared, read_shared) = _both_ways(model, tok, prompt, options)
    assert read_shared < read_whole / 2  # the prompt was read once
    for (a, n), (b, m) in zip(whole, shared, strict=True):
        assert n == m and abs(a - b) < 1e-4
    # with shorter questions beside it, left-padded: the window counts real tokens only
    from doctune.knowledge.score import mc_logprobs

    questions = [prompt, QUESTIONS[0], "Read this section first. " * 5 + QUESTIONS[2]]
    lists = [options, ["5173", "8080"], ["retries", "a longer answer than most"]]
    together = mc_logprobs(model, tok, questions, lists)
    for q, o, got in zip(questions, lists, together, strict=True):
        want = option_logprobs(model, tok, q, o, share_prompt=False)
        assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)


def test_score_mc_matches_the_choices(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = model_and_tokenizer
    opts = [["5173", "8080", "3000"], ["--host", "--port"], ["retries", "timeout", "a b c d"]]
    result = score_mc(model, tok, QUESTIONS, opts, [0, 1, 2])
    raw = [mc_choice([lp for lp, _ in s]) for s in result.logprobs]
    per_tok = [mc_choice([lp for lp, _ in s], [n for _, n in s]) for s in result.logprobs]
    assert result.accuracy.correct == sum(r == a for r, a in zip(raw, [0, 1, 2], strict=True))
    assert result.accuracy_per_token.correct == sum(
        r == a for r, a in zip(per_tok, [0, 1, 2], strict=True))
    assert result.accuracy.total == 3 and abs(result.chance - (1 / 3 + 1 / 2 + 1 / 3) / 3) < 1e-12
    alone = option_logprobs(model, tok, QUESTIONS[0], opts[0])
    assert [n for _, n in result.logprobs[0]] == [n for _, n in alone]
    assert [lp for lp, _ in result.logprobs[0]] == pytest.approx([lp for lp, _ in alone], abs=1e-5)


def test_questions_are_scored_together_with_the_numbers_of_each_alone(
        model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Questions of different lengths (one with a section before it) are read together: their
    prompts side by side, left-padded, then all their options; each option's numbers are
    those of reading it whole, alone, also through a LoRA adapter. The groups stay within
    ``MC_TOKENS``."""
    from peft import LoraConfig, get_peft_model

    import doctune.knowledge.score as score

    model, tok = model_and_tokenizer
    questions = [QUESTIONS[0], "Read this section first. " * 15 + QUESTIONS[1], QUESTIONS[2],
                 "Which one?", QUESTIONS[1]]
    options = [["5173", "a much longer wrong answer", "8080"], ["--host", "--port"],
               ["retries", "timeout", "a b c d", "`x`"], ["one", "two words"], ["--host"]]
    calls: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: calls.append(args[0].shape[0]))
    lora, default, logit_bytes = None, score.MC_TOKENS, score.MC_LOGIT_BYTES
    try:
        for which in ("base", "lora"):
            if which == "lora":
                lora = get_peft_model(model, LoraConfig(
                    r=2, target_modules="all-linear", init_lora_weights=False,
                    fan_in_fan_out=model.config.model_type == "gpt2")).eval()
            m = lora if lora is not None else model
            alone = [option_logprobs(m, tok, q, o, share_prompt=False)
                     for q, o in zip(questions, options, strict=True)]
            for budget, room in ((default, logit_bytes), (1, logit_bytes), (default, 1)):
                monkeypatch.setattr(score, "MC_TOKENS", budget)
                monkeypatch.setattr(score, "MC_LOGIT_BYTES", room)  # for the options' logits
                calls.clear()
                together = score.mc_logprobs(m, tok, questions, options)
                for got, want in zip(together, alone, strict=True):
                    assert [n for _, n in got] == [n for _, n in want] and all(n for _, n in got)
                    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
                if (budget, room) == (default, logit_bytes):  # 4 prompts at once, 11 options
                    assert calls == [1, 4, 11], calls  # (one option alone: read whole)
                else:  # no room: a question a group, its prompt, then its options
                    assert sorted(calls) == sorted([1, 1, 3, 1, 2, 1, 4, 1, 2]), calls
    finally:
        hook.remove()
        if lora is not None:
            lora.unload()


def _manual_greedy(model: Any, prompt: list[int], stops: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(nxt)
        if nxt in stops:
            break
    return ids[len(prompt):]


def test_greedy_answers_batched_equal_manual_greedy(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = model_and_tokenizer
    stops = stop_ids(tok)
    # batched by length (the long one last), answered in the order asked
    asked = ["Read this section first. " * 8 + QUESTIONS[0], *QUESTIONS]
    gens = greedy_answers(model, tok, asked, max_new_tokens=6, batch_size=2)
    for q, g in zip(asked, gens, strict=True):
        assert g.ids == _manual_greedy(model, render_prompt(tok, q), stops, 6)
        assert g.stopped == (g.ids[-1] in stops)
        assert g.text == tok.decode(g.ids, skip_special_tokens=True).strip()


def _manual_sample(model: Any, prompt: list[int], stops: list[int], n: int,
                   temperature: float) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            cumulative = torch.softmax(logits / temperature, -1).double().cumsum(-1)
            u = float(torch.rand(1, 1, dtype=torch.float64)) * float(cumulative[-1])
            nxt = int((cumulative <= u).sum())  # the first word whose cumulative passes u
            ids.append(nxt)
            if nxt in stops:
                break
    return ids[len(prompt):]


def test_sampled_answers_come_from_the_whole_distribution(
        model_and_tokenizer: tuple[Any, Any]) -> None:
    """Sampling ignores the sampling settings the model's generation config holds (replay
    must be the model's own distribution), and the caller's seed makes it repeatable."""
    model, tok = model_and_tokenizer
    stops = stop_ids(tok)
    config = model.generation_config
    config.top_k, config.top_p, config.do_sample = 2, 0.5, True
    config.temperature, config.repetition_penalty = 0.3, 1.3
    try:
        for q in QUESTIONS:
            torch.manual_seed(7)
            got = generate_answers(model, tok, [q], max_new_tokens=6, temperature=0.7)[0]
            torch.manual_seed(7)
            assert got.ids == _manual_sample(model, render_prompt(tok, q), stops, 6, 0.7)
        torch.manual_seed(3)
        one = generate_answers(model, tok, QUESTIONS * 4, max_new_tokens=6, temperature=1.0)
        torch.manual_seed(3)
        two = generate_answers(model, tok, QUESTIONS * 4, max_new_tokens=6, temperature=1.0)
        assert [g.ids for g in one] == [g.ids for g in two]
        assert len({tuple(g.ids) for g in one}) > len(QUESTIONS)  # not the greedy answers
    finally:
        config.top_k, config.top_p, config.do_sample = None, None, False
        config.temperature, config.repetition_penalty = None, None


def test_short_prompts_are_answered_more_than_a_batch_at_a_time() -> None:
    """At least ``batch_size`` prompts a batch (the old way), more while rows x the longest
    prompt and its new tokens fit in GENERATE_TOKENS."""
    from doctune.knowledge.score import GENERATE_TOKENS, _batches

    lengths = [10] * 5 + [GENERATE_TOKENS // 3 + 1] * 3
    assert _batches(range(8), lengths, 2) == [[0, 1, 2, 3, 4], [5, 6], [7]]
    assert _batches(range(8), lengths, 3) == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert _batches([2, 0, 1], [GENERATE_TOKENS] * 3, 1) == [[2], [0], [1]]
    assert _batches([], [], 8) == []


def test_sampled_choice_draws_each_word_with_its_probability() -> None:
    """The argmax of :func:`sampled_choice`'s rows is a sample from the softmax at the
    temperature: over 40,000 seeded draws each word's frequency is within 0.01 of its
    probability (4 standard deviations at most), a word of probability 0 never comes, and
    each row is 0 at one word and -inf elsewhere."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    for temperature in (1.0, 0.5):
        want = torch.softmax(logits[0] / temperature, -1)
        torch.manual_seed(0)
        rows = sampled_choice(logits.expand(40_000, 5), temperature)
        assert ((rows == 0).sum(-1) == 1).all() and (rows.isinf().sum(-1) == 4).all()
        got = torch.bincount(rows.argmax(-1), minlength=5).float() / 40_000
        assert got[4] == 0
        assert (got - want).abs().max() < 0.01, (got, want)


def test_sampled_choice_tells_apart_words_too_rare_for_float32(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Three words of probability 1e-9 after one that holds the rest: a float32 running
    total is 1.0 at every one of them (the step near 1 is 6e-8), so none could be drawn;
    summed in float64, a uniform number that falls in the second one's 1e-9 draws it (in
    float32 the last word would come, the search clamped to the vocabulary)."""
    logits = torch.log(torch.tensor([[1.0, 1e-9, 1e-9, 1e-9]]))
    cumulative = torch.softmax(logits, -1).double().cumsum(-1)
    middle = float((cumulative[0, 1] + cumulative[0, 2]) / 2 / cumulative[0, 3])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full((1, 1), middle,
                                                                    dtype=torch.float64))
    assert int(sampled_choice(logits, 1.0).argmax()) == 2
    assert torch.softmax(logits, -1).cumsum(-1)[0].unique().tolist() == [1.0]  # float32


def test_sampled_choice_refuses_a_row_it_cannot_sample() -> None:
    for bad in (float("nan"), float("-inf")):
        with pytest.raises(ValueError, match="cannot sample"):
            sampled_choice(torch.tensor([[0.0, 1.0], [bad, bad]]), 1.0)


def test_plain_text_is_written_on_from_the_opening(model_and_tokenizer: tuple[Any, Any]) -> None:
    """``plain``: no chat template; the opening rendered as a document (its BOS, no EOS) and
    the text written on from it, not stripped (opening + text is the text as written)."""
    from doctune.knowledge.chat import render_document

    model, tok = model_and_tokenizer
    stops = stop_ids(tok)
    for opening in ("The old harbour was quiet, and", "Bread is"):
        prompt = render_document(tok, opening, add_eos=False).input_ids
        torch.manual_seed(11)
        got = generate_answers(model, tok, [opening], max_new_tokens=6, temperature=1.0,
                               plain=True)[0]
        torch.manual_seed(11)
        assert got.ids == _manual_sample(model, prompt, stops, 6, 1.0)
        assert got.text == tok.decode(got.ids, skip_special_tokens=True)  # not stripped
        greedy = generate_answers(model, tok, [opening], max_new_tokens=6, plain=True)[0]
        assert greedy.ids == _manual_greedy(model, prompt, stops, 6)


def test_score_qa_against_its_own_answers(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = model_and_tokenizer
    gens = greedy_answers(model, tok, QUESTIONS, max_new_tokens=6)
    golds = [g.text or "x" for g in gens]
    result = score_qa(model, tok, QUESTIONS, golds, max_new_tokens=6)
    expected = sum(1 for g in gens if g.text)  # an empty answer does not match "x"
    assert result.exact_match.correct == expected and result.exact_match.total == 3
    assert result.stop_rate == sum(g.stopped for g in gens) / 3
    wrong = score_qa(model, tok, QUESTIONS, [["zzz qqq"]] * 3, max_new_tokens=6)
    assert wrong.exact_match.correct == 0 and 0.0 <= wrong.f1 < 1.0


def test_a_model_that_takes_no_positions_reads_each_question_whole(
        model_and_tokenizer: tuple[Any, Any]) -> None:
    """Left-padded prompts need their positions given: a model whose forward takes none (some
    remote code) is read a question at a time, each option whole, with the same numbers."""
    from doctune.knowledge.score import mc_logprobs

    model, tok = model_and_tokenizer

    class NoPositions(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    options = [["5173", "a much longer wrong answer"], ["--host", "--port", "x"]]
    got = mc_logprobs(NoPositions(), tok, QUESTIONS[:2], options)
    for q, o, scores in zip(QUESTIONS[:2], options, got, strict=True):
        want = option_logprobs(model, tok, q, o, share_prompt=False)
        assert [lp for lp, _ in scores] == pytest.approx([lp for lp, _ in want], abs=1e-5)
