"""Chat templates: kept in every export (HF folder, GGUF, Ollama Modelfile), and `generate --chat`.

A tiny Llama with a SmolLM2-Instruct-like tokenizer: ChatML template, `<|im_start|>` and
`<|im_end|>` added as special tokens, `<|endoftext|>` as end-of-text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from doctune.errors import ConfigError
from doctune.export.modelfile import chat_format, modelfile
from doctune.modeling import DEFAULT_CHAT_TEMPLATE, end_of_turn_token, stop_token_ids, stop_tokens
from test_gguf_llama import bpe_tokenizer, llama_model, read

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
         "<end_of_turn>\n{% endfor %}")
PHI3 = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + '<|end|>\n' }}"
        "{% endif %}{% endfor %}<|assistant|>\n")


def chatml_tokenizer() -> Any:
    from tokenizers import AddedToken

    tok = bpe_tokenizer("smollm")
    tok.add_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)],
                   special_tokens=True)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = chatml_tokenizer()
    out = tmp_path_factory.mktemp("tiny-chat-llama")
    llama_model(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_stop_tokens_of_a_chatml_tokenizer() -> None:
    tok = chatml_tokenizer()
    assert end_of_turn_token(tok) == "<|im_end|>"
    assert stop_tokens(tok) == ["<|endoftext|>", "<|im_end|>"]
    assert stop_token_ids(tok) == [0, 301]
    base = bpe_tokenizer("smollm")  # no template: end-of-text only
    assert end_of_turn_token(base) is None and stop_tokens(base) == ["<|endoftext|>"]


def test_merged_folder_keeps_template_and_stops_at_end_of_turn(chat_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    from doctune.export.merge import merge_to_folder

    out = merge_to_folder(chat_dir, tmp_path / "merged").out
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE and tok.eos_token == "<|endoftext|>"
    assert GenerationConfig.from_pretrained(out).eos_token_id == [0, 301]
    assert "talk to it as a chat model" in (out / "README.md").read_text()


def test_gguf_and_modelfile_carry_the_chat_format(chat_dir: Path, tmp_path: Path) -> None:
    from doctune.export.gguf import export_gguf

    out = export_gguf(chat_dir, tmp_path / "gguf", quant="f16").out
    meta, _ = read(next(out.glob("*.gguf")))
    assert meta["tokenizer.chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert meta["tokenizer.ggml.eos_token_id"] == 0 and meta["tokenizer.ggml.eot_token_id"] == 301
    text = (out / "Modelfile").read_text()
    assert ('TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
            "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
            '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"""') in text
    assert "talk to it as a chat model" in (out / "README.md").read_text()
    stops = [line for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ['PARAMETER stop "<|endoftext|>"', 'PARAMETER stop "<|im_end|>"',
                     'PARAMETER stop "<|im_start|>"']


@pytest.mark.parametrize(("template", "name", "stops"), [
    (LLAMA3, "llama3", ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]),
    (GEMMA, "gemma", ["<eos>", "<end_of_turn>"]),
    (PHI3, "phi3", ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>"]),
    ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", "generic", ["</s>", "User:"]),
    (None, "completion", ["</s>"]),
])
def test_modelfile_templates_per_chat_format(template: str | None, name: str, stops: list[str]) -> None:
    assert chat_format(template).name == name
    eos = stops[0]
    text = modelfile("m.gguf", num_ctx=2048, stop=eos, chat_template=template)
    assert [line.removeprefix("PARAMETER stop ") for line in text.splitlines()
            if line.startswith("PARAMETER stop")] == [f'"{s}"' for s in stops]
    template_line = next(line for line in text.splitlines() if line.startswith("TEMPLATE"))
    if name == "completion":
        assert template_line == 'TEMPLATE """{{ .Prompt }}"""'
    else:  # every chat template puts the user's prompt in and leaves room for the reply
        assert "{{ .Prompt }}" in text and "{{ .Response }}" in text


def test_generate_chat_renders_the_template_and_stops_at_end_of_turn(chat_dir: Path) -> None:
    from doctune.generate import Sampling, chat_prompt, generate_text
    from doctune.inference import load_for_inference

    loaded = load_for_inference(chat_dir, device="cpu", dtype="fp32")
    tok = loaded.tokenizer
    assert chat_prompt(tok, "How do I install it?", system="Answer briefly.") == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nHow do I install it?<|im_end|>\n"
        "<|im_start|>assistant\n")
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")

    def always_end_turn(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        out[..., end_of_turn] += 1000.0  # a model that ends its turn at once
        return out

    loaded.model.lm_head.register_forward_hook(always_end_turn)
    greedy = Sampling(temperature=0, max_new_tokens=8)
    reply = generate_text(loaded, "How do I install it?", greedy, chat=True)
    assert reply.new_tokens == 1 and reply.text == ""  # stopped at <|im_end|>, not shown
    assert reply.prompt_tokens == len(tok(chat_prompt(tok, "How do I install it?"), add_special_tokens=False)["input_ids"])
    plain = generate_text(loaded, "How do I install it?", greedy)  # completion: end-of-text only
    assert plain.new_tokens == 8


def test_generate_chat_needs_a_template(tmp_path: Path) -> None:
    from doctune.generate import chat_prompt

    with pytest.raises(ConfigError, match=r"no chat template.*without --chat"):
        chat_prompt(bpe_tokenizer("smollm"), "hi")


SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.mark.parametrize(("family", "default"), [
    ("smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ("qwen2.5", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    ("llama3.2", None),  # dates in the system header, but no default text
    ("gemma3", None),  # no system turn: the text goes into the user's
    ("doctune", None),
    ("base", None),
])
def test_the_default_system_prompt_goes_into_the_modelfile(family: str, default: str | None,
                                                           gpt2_tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from chat_templates import build_chat_tokenizer
    from doctune.export.modelfile import default_system_prompt

    tok = AutoTokenizer.from_pretrained(build_chat_tokenizer(
        "qwen2.5" if family in ("smollm2", "doctune") else family, gpt2_tokenizer_dir, tmp_path))
    tok.chat_template = {"smollm2": SMOLLM2, "doctune": DEFAULT_CHAT_TEMPLATE}.get(family, tok.chat_template)
    assert default_system_prompt(tok) == default
    text = modelfile("m.gguf", num_ctx=2048, stop="<|im_end|>", chat_template=tok.chat_template,
                     system=default)
    assert (f'\nSYSTEM """{default}"""\n' in text) == (default is not None)
    assert ("SYSTEM" in text) == (default is not None)
