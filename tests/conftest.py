"""Shared test fixtures: the real GPT-2 tokenizer from test data, tiny GPT-2 models, small docs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One thread per test process: with `-n 2` the two workers fill the two cores, and OpenMP
# threads spinning against each other would make tiny models hundreds of times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that ``AutoTokenizer.from_pretrained`` reads: the real GPT-2 tokenizer."""
    from transformers import GPT2TokenizerFast

    src = FIXTURES / "tokenizers" / "gpt2"
    tok = GPT2TokenizerFast(vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"))
    assert tok("Hello world")["input_ids"] == [15496, 995]
    out = tmp_path_factory.mktemp("gpt2-tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path) -> Path:
    """A 2-layer GPT-2 (random weights, seed 0) saved with the GPT-2 tokenizer, like a hub model."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, vocab_size=50257,
                     bos_token_id=50256, eos_token_id=50256)
    model = GPT2LMHeadModel(cfg)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gpt2_tokenizer_dir).save_pretrained(out)
    return out
