"""Fixed-seed generation samples and their default prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from doctune.monitor import default_prompts, generate_samples


def test_default_prompts_keep_line_breaks_and_skip_empty_texts() -> None:
    texts = ["# Install\n\nRun `pip install doctune` to get the command line tool.", "   \n", "Short one",
             "Third text here", "Fourth"]
    assert default_prompts(texts, n=3, words=5) == [
        "# Install\n\nRun `pip install", "Short one", "Third text here"]
    assert default_prompts(["  lead  space and more"], words=2) == ["lead  space"]
    assert default_prompts([], n=3) == []


@pytest.fixture(scope="module")
def tiny(gpt2_tokenizer_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64,
                                       vocab_size=50257, bos_token_id=50256, eos_token_id=50256))
    return model, AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)


def test_samples_are_repeatable_and_leave_training_state_alone(tiny: tuple[Any, Any]) -> None:
    import torch

    model, tok = tiny
    model.train()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    prompts = ["# Getting started", "Install the"]
    first = generate_samples(model, tok, prompts, device="cpu", max_new_tokens=6, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched
    assert model.training
    second = generate_samples(model, tok, prompts, device="cpu", max_new_tokens=6, seed=7)
    assert first == second
    assert [p for p, _ in first] == prompts
    assert all(isinstance(c, str) and c for _, c in first)
    other = generate_samples(model, tok, prompts, device="cpu", max_new_tokens=6, seed=8)
    assert other != first


def test_an_empty_prompt_starts_from_end_of_text(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    model.eval()
    [(prompt, completion)] = generate_samples(model, tok, [""], device="cpu", max_new_tokens=4, seed=0)
    assert prompt == "" and completion
    assert not model.training


def test_a_training_sample_is_what_doctune_generate_writes_with_that_seed(tiny: tuple[Any, Any]) -> None:
    import torch

    from doctune.generate import generate_text
    from doctune.inference import Loaded, Source
    from doctune.sampling import Sampling

    model, tok = tiny
    [(_, sampled)] = generate_samples(model, tok, ["Install the"], device="cpu", max_new_tokens=8, seed=5)
    loaded = Loaded(model.eval(), tok, Source("model", "tiny", "tiny"), torch.device("cpu"), torch.float32)
    assert generate_text(loaded, "Install the", Sampling(max_new_tokens=8, seed=5)).text == sampled


def test_prompts_are_tokenised_as_training_tokenised_the_docs(gpt2_tokenizer_dir: Path) -> None:
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from doctune.sampling import prompt_ids

    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    # a tokenizer that adds a start token by default, as Llama's does
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 50256)])
    assert tok("Hello world")["input_ids"] == [50256, 15496, 995]
    assert prompt_ids(tok, "Hello world").tolist() == [[15496, 995]]  # no special tokens, as in prepare
    assert prompt_ids(tok, "").tolist() == [[50256]]  # an empty prompt starts a new document
