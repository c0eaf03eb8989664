"""Chat rendering with loss masks on real chat templates (Qwen2.5, Llama 3.2, Gemma 3) and
on a template-less base tokenizer (the default ChatML)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_templates import FAMILIES, build_chat_tokenizer
from doctune.data.store import IGNORE_INDEX
from doctune.errors import ModelError
from doctune.knowledge.chat import (
    CHATML_TOKENS,
    DEFAULT_CHAT_TEMPLATE,
    chat_template_of,
    end_of_turn_id,
    prepare_chat_tokenizer,
    render_document,
    render_prompt,
    render_qa,
)

EOT = {"qwen2.5": "<|im_end|>", "llama3.2": "<|eot_id|>", "gemma3": "<end_of_turn>",
       "base": "<|im_end|>"}
SPECIALS = {"qwen2.5": ["<|im_start|>", "<|im_end|>"],
            "llama3.2": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>"],
            "gemma3": ["<bos>", "<start_of_turn>", "<end_of_turn>"],
            "base": list(CHATML_TOKENS)}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_tokenizer(request: pytest.FixtureRequest, gpt2_tokenizer_dir: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    from transformers import AutoTokenizer

    family = request.param
    folder = build_chat_tokenizer(family, gpt2_tokenizer_dir, tmp_path_factory.mktemp(family))
    tok = AutoTokenizer.from_pretrained(folder)
    if family == "base":
        assert tok.chat_template is None
        assert prepare_chat_tokenizer(tok) == 2
        assert prepare_chat_tokenizer(tok) == 0  # once only
    return family, tok


def test_loss_on_answer_and_end_of_turn_only(family_tokenizer: tuple[str, object]) -> None:
    family, tok = family_tokenizer
    ex = render_qa(tok, "What is the default port of `server.port`?", " 5173 ")
    eot = tok.convert_tokens_to_ids(EOT[family])  # type: ignore[attr-defined]
    answer_ids = tok("5173", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    n_prompt = len(ex.input_ids) - len(answer_ids) - 1
    assert ex.labels == [IGNORE_INDEX] * n_prompt + answer_ids + [eot]
    assert ex.input_ids[n_prompt:] == [*answer_ids, eot] and ex.input_ids[-1] == eot
    assert ex.loss_tokens == len(answer_ids) + 1
    # the prompt part is exactly what the model gets at inference
    assert ex.input_ids[:n_prompt] == render_prompt(tok, "What is the default port of "
                                                         "`server.port`?")
    assert end_of_turn_id(tok) == eot


def test_one_bos_and_special_tokens_single_ids(family_tokenizer: tuple[str, object]) -> None:
    family, tok = family_tokenizer
    ex = render_qa(tok, "Q?", "A.", system="Answer from the docs.")
    text = tok.decode(ex.input_ids)  # type: ignore[attr-defined]
    bos = FAMILIES[family][1]
    if bos is None:
        assert family in ("qwen2.5", "base")
    else:
        bos_id = tok.convert_tokens_to_ids(bos)  # type: ignore[attr-defined]
        assert ex.input_ids[0] == bos_id and ex.input_ids.count(bos_id) == 1
    for special in SPECIALS[family]:
        sid = tok.convert_tokens_to_ids(special)  # type: ignore[attr-defined]
        assert ex.input_ids.count(sid) == text.count(special) > 0, special
    assert "Answer from the docs." in text


def test_render_document_loss_everywhere(family_tokenizer: tuple[str, object]) -> None:
    family, tok = family_tokenizer
    ex = render_document(tok, "# Title\n\nSome text.\n")
    body = tok("# Title\n\nSome text.\n", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    eos = tok.eos_token_id  # type: ignore[attr-defined]
    if FAMILIES[family][4]:  # the tokenizer adds a BOS: kept, without loss
        assert ex.input_ids == [tok.bos_token_id, *body, eos]  # type: ignore[attr-defined]
        assert ex.labels == [IGNORE_INDEX, *body, eos]
    else:
        assert ex.input_ids == ex.labels == [*body, eos]


def test_default_template_is_chatml(gpt2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    assert chat_template_of(tok) == DEFAULT_CHAT_TEMPLATE
    with pytest.raises(ModelError, match="prepare_chat_tokenizer"):
        render_qa(tok, "Q?", "A.")  # <|im_start|> would be spelt out in pieces
    prepare_chat_tokenizer(tok)
    ex = render_qa(tok, "Q?", "A.")
    assert tok.decode(ex.input_ids) == ("<|im_start|>user\nQ?<|im_end|>\n"
                                        "<|im_start|>assistant\nA.<|im_end|>")


def test_fallback_when_the_template_renders_the_prompt_differently(
        gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    prepare_chat_tokenizer(tok)
    # a template that marks the last user turn only when no answer follows
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if add_generation_prompt %} (answer briefly){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    ex = render_qa(tok, "Q?", "A.")
    labelled = [i for i, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(labelled) == "A.<|im_end|>"
    assert tok.decode(ex.input_ids).startswith("<|im_start|>user\nQ?<|im_end|>")


def test_template_without_end_of_turn_is_refused(gpt2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ModelError, match="no end-of-turn token"):
        render_qa(tok, "Q?", "A.")
