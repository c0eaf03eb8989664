"""The Ollama ``Modelfile`` written beside a GGUF file: prompt template, stop tokens, sampling.

Ollama formats prompts with Go templates, not with the Jinja chat template of the tokenizer
(which also goes into the GGUF as ``tokenizer.chat_template`` for llama.cpp). The chat
formats of today's small models are recognised by their marker tokens and written as the
equivalent Go template; any other chat template gets a plain ``User:``/``Assistant:``
template that still stops, at the end-of-text token and at the next ``User:``. A model
without a chat template is a completion model: the prompt goes in unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REPEAT_PENALTY = 1.1
"""Ollama's repeat_penalty in the Modelfile: small models loop without a little of it."""
MAX_NUM_CTX = 8192
"""The Modelfile's num_ctx at most: Ollama allocates the KV cache for all of it up front, and
Llama 3.2's 131072 positions would take gigabytes of a laptop's memory."""


@dataclass(frozen=True)
class ChatFormat:
    """A chat format: the Go template Ollama renders it with and the strings that end a reply."""

    name: str
    marker: tuple[str, ...]
    """Strings whose presence in the Jinja template identifies the format (all of them)."""
    template: str
    stop: tuple[str, ...]


CHAT_FORMATS = (
    ChatFormat("chatml", ("<|im_start|>",),
               "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
               "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
               "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
               ("<|im_start|>", "<|im_end|>")),
    ChatFormat("llama3", ("<|start_header_id|>",),
               "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
               "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
               "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>",
               ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    # Gemma has no system role: its template puts the system text at the top of the user turn.
    ChatFormat("gemma", ("<start_of_turn>",),
               "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
               "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n",
               ("<end_of_turn>",)),
    ChatFormat("phi3", ("<|assistant|>", "<|end|>"),
               "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
               "{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}"
               "<|assistant|>\n{{ .Response }}<|end|>\n",
               ("<|end|>", "<|user|>", "<|assistant|>")),
)
GENERIC = ChatFormat("generic", (),
                     "{{ if .System }}{{ .System }}\n\n{{ end }}{{ if .Prompt }}User: {{ .Prompt }}\n{{ end }}"
                     "Assistant: {{ .Response }}\n",
                     ("User:",))
COMPLETION = ChatFormat("completion", (), "{{ .Prompt }}", ())


def chat_format(chat_template: str | None) -> ChatFormat:
    """The :data:`CHAT_FORMATS` entry a Jinja chat template is written in; :data:`GENERIC` for
    an unknown one, :data:`COMPLETION` for none."""
    if not chat_template:
        return COMPLETION
    for fmt in CHAT_FORMATS:
        if all(m in chat_template for m in fmt.marker):
            return fmt
    return GENERIC


def default_system_prompt(tokenizer: Any) -> str | None:
    """The system text a chat template puts in when the conversation has none (SmolLM2's
    "You are a helpful AI assistant named SmolLM...", Qwen2.5's "You are Qwen..."), or None.

    Found by rendering one user turn with a marker system turn and without one: where the
    second has text in the marker's place, that text is the default. Ollama never runs the
    Jinja template, so the Modelfile states it as ``SYSTEM``."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    mark, user = "doctune-system-marker", "doctune-user-marker"

    def render(messages: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True))

    try:
        with_mark = render([{"role": "system", "content": mark}, {"role": "user", "content": user}])
        without = render([{"role": "user", "content": user}])
    except Exception:  # a template that refuses a system turn (or any other input) has none
        return None
    if with_mark.count(mark) != 1:
        return None
    pre, post = with_mark.split(mark)
    if len(without) < len(pre) + len(post) or not (without.startswith(pre) and without.endswith(post)):
        return None
    text = without[len(pre):len(without) - len(post)]
    return text if text.strip() else None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(gguf_name: str, *, num_ctx: int, stop: str | list[str] | None,
              chat_template: str | None = None, system: str | None = None) -> str:
    """An Ollama ``Modelfile`` for the GGUF file ``gguf_name`` in the same folder.

    ``stop`` is the end-of-text token (or the model's stop tokens); the chat format's own
    stop strings are added. Sampling defaults are those of ``doctune generate``;
    ``num_ctx`` is capped at :data:`MAX_NUM_CTX`. ``system`` (the template's default system
    prompt, :func:`default_system_prompt`) becomes the ``SYSTEM`` line.
    """
    from doctune.generate import Sampling

    s = Sampling()
    fmt = chat_format(chat_template)
    given = [stop] if isinstance(stop, str) else list(stop or [])
    stops = list(dict.fromkeys([*given, *fmt.stop]))
    about = {"completion": "A base (completion) model: the prompt is passed through unchanged.",
             "generic": "The model's chat template is not one doctune translates; a plain "
                        "User:/Assistant: format that stops at the next User: turn."}
    lines = ["# Ollama model file written by doctune. Create and run the model with:",
             "#   ollama create my-docs -f Modelfile",
             '#   ollama run my-docs "How do I"',
             f"FROM ./{gguf_name}",
             "",
             "# " + about.get(fmt.name, f"The model's chat template ({fmt.name}), as an Ollama template."),
             f'TEMPLATE """{fmt.template}"""',
             f"PARAMETER num_ctx {min(num_ctx, MAX_NUM_CTX)}",
             f"PARAMETER temperature {s.temperature:g}",
             f"PARAMETER top_p {s.top_p:g}",
             f"PARAMETER repeat_penalty {REPEAT_PENALTY:g}"]
    lines += [f"PARAMETER stop {_quote(t)}" for t in stops]
    if system and fmt.name not in ("completion",):
        lines += ["", "# The chat template's default system prompt (used when a chat has none).",
                  f'SYSTEM """{system.replace(chr(34) * 3, chr(39) * 3)}"""']
    return "\n".join(lines) + "\n"
