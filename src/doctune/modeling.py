"""Models and tokenizers: hub ids, local folders, from-scratch presets, and LoRA via PEFT.

``model.name`` is one of:

* a from-scratch preset, ``scratch:tiny`` or ``scratch:small``: a GPT-2 architecture
  built from a config, with a byte-level BPE tokenizer trained on the user's docs;
* a local folder holding a transformers model (``config.json`` + weights);
* a GGUF file (``model.gguf``, as llama.cpp and Ollama use) or ``ollama:NAME[:TAG]``, a model
  pulled by Ollama: loaded through transformers' GGUF support, dequantised to fp32;
* a Hugging Face hub id (``distilgpt2``, ``gpt2``, ``HuggingFaceTB/SmolLM2-135M-Instruct``, any causal LM).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from doctune.config import is_scratch
from doctune.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EOS_TOKEN = "<|endoftext|>"

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, the chat format used when a model has no template of its own and is trained on
chat data: ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` per message (Qwen and SmolLM2's own format)."""


END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eom_id|>")
"""Tokens chat templates end a turn with: ChatML (Qwen, SmolLM2), Llama 3, Gemma, Phi-3."""


def chat_template(tokenizer: Any) -> str | None:
    """The tokenizer's own chat template (Jinja), or None for a base model without one."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The token the chat template ends each turn with, when it is one token of the vocabulary."""
    template = chat_template(tokenizer)
    if template is None:
        return None
    vocab = tokenizer.get_vocab()
    return next((t for t in END_OF_TURN_TOKENS if t in template and t in vocab), None)


def stop_tokens(tokenizer: Any) -> list[str]:
    """Tokens that end a reply: end-of-text, and the chat template's end of turn (no repeats)."""
    found = [tokenizer.eos_token, end_of_turn_token(tokenizer)]
    return list(dict.fromkeys(t for t in found if t))


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids of :func:`stop_tokens` (what generation stops at)."""
    vocab = tokenizer.get_vocab()
    return [int(vocab[t]) for t in stop_tokens(tokenizer) if t in vocab]


@dataclass(frozen=True)
class Preset:
    """A GPT-2-shaped model trained from nothing, with its own tokenizer."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    """Size of the byte-level BPE vocabulary trained on the docs."""
    n_positions: int = 1024


PRESETS: dict[str, Preset] = {
    # ~3.4M parameters: trains on a laptop CPU in minutes and already writes doc-like text.
    "scratch:tiny": Preset(n_layer=4, n_embd=192, n_head=4, vocab_size=8192),
    # ~17M parameters: better text, still fine on CPU for small docs sets.
    "scratch:small": Preset(n_layer=6, n_embd=384, n_head=6, vocab_size=16384),
}


def preset(name: str) -> Preset:
    """The :class:`Preset` called ``name``; an unknown one is a :class:`ConfigError`."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"`model.name` {name!r} is not a known preset; choose one of {', '.join(PRESETS)}."
        ) from None


def preset_config(name: str, *, vocab_size: int | None = None, n_positions: int | None = None,
                  eos_token_id: int = 0) -> Any:
    """The ``GPT2Config`` of a preset (vocabulary and context length may be overridden)."""
    from transformers import GPT2Config

    p = preset(name)
    return GPT2Config(
        n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head,
        vocab_size=vocab_size or p.vocab_size,
        n_positions=max(n_positions or 0, p.n_positions),
        bos_token_id=eos_token_id, eos_token_id=eos_token_id,
        activation_function="gelu_pytorch_tanh",
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a GPT-2-style byte-level BPE tokenizer on ``texts`` (with ``<|endoftext|>``)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOS_TOKEN], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS_TOKEN,
                                  eos_token=EOS_TOKEN, unk_token=EOS_TOKEN)
    tok.model_max_length = 1_000_000_000  # windows are cut by doctune, not the tokenizer
    return tok


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads batches: the end-of-text token (0 for a tokenizer without one).

    Padding sits after the real tokens and carries no loss, so its value never matters for
    the numbers; end-of-text keeps it a token the model knows.
    """
    eos = tokenizer.eos_token_id
    return int(eos) if eos is not None else 0


def build_scratch_model(name: str, tokenizer: PreTrainedTokenizerBase, *, block_size: int,
                        attn_implementation: str | None = None) -> PreTrainedModel:
    """A freshly initialised GPT-2 for preset ``name``, sized to ``tokenizer``."""
    from transformers import AutoModelForCausalLM

    cfg = preset_config(name, vocab_size=len(tokenizer), n_positions=block_size,
                        eos_token_id=pad_token_id(tokenizer))
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_config(cfg, **kwargs)


# ---------------------------------------------------------------------------
# Where a model comes from: preset, folder, hub id, GGUF file or Ollama model (doctune.sources)


@dataclass(frozen=True)
class ModelSource:
    """What ``model.name`` points at, before anything is loaded."""

    kind: Literal["scratch", "folder", "gguf", "hub"]
    given: str
    """``model.name`` as written."""
    path: str
    """The preset name, the folder, the hub id, or the GGUF file (absolute)."""

    @property
    def gguf_file(self) -> Path | None:
        """The GGUF file to read (None unless ``kind == "gguf"``)."""
        return Path(self.path) if self.kind == "gguf" else None


def resolve_model_source(name: str) -> ModelSource:
    """Say what ``model.name`` is: a scratch preset, a folder, a GGUF file, or a hub id.

    ``ollama:NAME[:TAG]`` resolves to the GGUF blob Ollama keeps for that model, ``pip:PACKAGE``
    to the GGUF file an installed Python package ships (see
    :func:`doctune.sources.gguf_file_of`). Raises :class:`ModelError` for a missing file or one
    that is not GGUF.
    """
    from doctune.sources import gguf_file_of

    if is_scratch(name):
        return ModelSource("scratch", name, name)
    gguf = gguf_file_of(name)
    if gguf is not None:
        return ModelSource("gguf", name, str(gguf))
    local = Path(name).expanduser()
    if local.exists():
        return ModelSource("folder", name, str(local.resolve()))
    return ModelSource("hub", name, name)


def _offline_hint(name: str) -> str:
    return (f"Could not load model {name!r}: it is not a local folder and it could not be "
            "downloaded from the Hugging Face hub (offline, or no cached copy). Either point "
            "`model.name` at a local folder holding a transformers model (config.json + "
            "weights), or train from scratch with `--set model.name=scratch:tiny`.")


def _has_hub_kernels() -> bool:
    """Whether this transformers can swap layers for hub kernels (``use_kernels``)."""
    from transformers import PreTrainedModel

    return hasattr(PreTrainedModel, "set_use_kernels")


def load_pretrained(name: str, *, revision: str | None = None, trust_remote_code: bool = False,
                    attn_implementation: str | None = None, dtype: Any = None) -> PreTrainedModel:
    """Load a causal LM from a hub id, local folder or GGUF file, safetensors preferred, in fp32.

    ``dtype="auto"`` loads a checkpoint in its own dtype instead (a bf16 one stays bf16: what
    a bf16 or quantised base starts from, see :mod:`doctune.quantize`), a GGUF file in bf16.
    A GGUF file (or ``ollama:NAME``) is dequantised by transformers tensor by tensor, straight
    to that dtype; see :func:`resolve_model_source`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    src = resolve_model_source(name)
    local = Path(name).expanduser()
    if (src.kind == "folder" or (src.kind == "hub" and name.startswith((".", "/", "~")))) and \
            not (local / "config.json").is_file():
        raise ModelError(f"{local} is not a transformers model folder (no config.json in it). Pass "
                         "a folder saved with `save_pretrained`, a .gguf file, a hub id, or a scratch preset.")
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code,
                              "dtype": torch.float32 if dtype is None else dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if _has_hub_kernels():
        # transformers 5 swaps layers for kernels downloaded from the hub (code run from the
        # hub: only with trust_remote_code), and does it again at each .train()/.eval(),
        # undoing doctune's own layers (train/fused_blocks.py)
        kwargs["use_kernels"] = trust_remote_code
    from doctune.sources import gguf_config, quiet_gguf, shared_gguf_reading

    where = src.path
    try:
        if src.gguf_file is not None:
            from transformers.utils.quantization_config import GgufConfig

            # dequantize=True: plain fp32 Linear layers to train (transformers would otherwise
            # keep quantised blocks where a GGUF kernel exists, as a model that cannot train
            # nor be saved)
            where = str(src.gguf_file.parent)
            kwargs.update(gguf_file=src.gguf_file.name,
                          quantization_config=GgufConfig(dequantize=True))
            if kwargs["dtype"] == "auto":  # a quantised GGUF's blocks: straight to bf16
                kwargs["dtype"] = torch.bfloat16
        with quiet_gguf(), shared_gguf_reading():
            if src.gguf_file is not None:
                kwargs["config"] = gguf_config(src.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except OSError as e:
        raise ModelError(_offline_hint(name) + f"\n  (transformers said: {str(e).splitlines()[0]})") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(f"{name!r} needs to run its own code from the hub. If you trust it, "
                             "set `--set model.trust_remote_code=true`.") from None
        if "Unrecognized configuration class" in str(e) or "does not recognize" in str(e):
            raise ModelError(f"{name!r} is not a causal language model transformers can load "
                             f"with AutoModelForCausalLM: {str(e).splitlines()[0]}") from None
        if src.gguf_file is not None and "not supported" in str(e):
            raise ModelError(f"transformers cannot read the GGUF file {src.gguf_file}: "
                             f"{str(e).splitlines()[0]} Start from the model's transformers folder "
                             "or hub id instead.") from None
        raise
    if src.gguf_file is not None:
        # PEFT looks for config.json beside `name_or_path` (the GGUF's folder) when it saves an
        # adapter, and warns when it finds none; the run records the GGUF file itself instead.
        model.name_or_path = ""
    _use_fused_gelu(model)
    return model


def _use_fused_gelu(model: PreTrainedModel) -> None:
    """Swap GPT-2's ``gelu_new`` (a chain of element-wise ops) for the identical fused tanh GELU.

    Same function, fewer intermediate tensors: it saves memory and time in every MLP.
    """
    cfg = model.config
    if getattr(cfg, "activation_function", None) != "gelu_new":
        return
    from transformers.activations import ACT2FN

    fused = ACT2FN["gelu_pytorch_tanh"]
    for module in model.modules():
        if hasattr(module, "act") and type(module.act).__name__ == "NewGELUActivation":
            module.act = fused
    cfg.activation_function = "gelu_pytorch_tanh"


# ---------------------------------------------------------------------------
# LoRA


_LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_TARGETS: dict[str, list[str]] = {
    # every linear layer of attention and MLP (not the embeddings nor the output head):
    # adapting the MLP as well as attention is what makes LoRA come close to full fine-tuning
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D; c_proj is both attn.c_proj and mlp.c_proj
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                     "smollm3", "olmo", "olmo2", "granite", "starcoder2"), _LLAMA_LINEAR),
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
}
"""LoRA's default targets per ``model_type``; ``lora.target_modules`` overrides them."""


def default_lora_targets(model: PreTrainedModel) -> list[str]:
    """The modules LoRA adapts by default: all linear layers of attention and MLP.

    From :data:`LORA_TARGETS` for the architectures doctune knows, else the names of every
    ``Linear``/``Conv1D`` layer inside the model other than its output head.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    model_type = getattr(model.config, "model_type", "")
    if model_type in LORA_TARGETS:
        return list(LORA_TARGETS[model_type])
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                    if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head and "." in n})
    if not names:
        raise ConfigError(f"doctune has no default LoRA targets for model type {model_type!r}; set "
                          "`lora.target_modules` to the names of its attention and MLP layers.")
    return names


def apply_lora(model: PreTrainedModel, *, r: int, alpha: int, dropout: float,
               target_modules: list[str] | None = None, dora: bool = False) -> Any:
    """Wrap ``model`` in a PEFT LoRA model; only the adapter weights stay trainable.

    GPT-2 stores its projections as ``Conv1D`` (weight shaped [in, out]); PEFT needs
    ``fan_in_fan_out=True`` for those, which is set here from the modules actually targeted.
    ``dora=True`` trains DoRA (PEFT's ``use_dora``): each adapted weight's magnitude as well.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = target_modules or default_lora_targets(model)
    matched = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets]
    if not matched:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if not list(m.children())})
        raise ConfigError(f"`lora.target_modules` {targets} match no layer of this model. "
                          f"Its leaf layers are: {', '.join(names[:30])}.")
    conv1d = [isinstance(m, Conv1D) for m in matched]
    if any(conv1d) and not all(conv1d):
        raise ConfigError(f"`lora.target_modules` {targets} mix Conv1D and Linear layers; LoRA "
                          "needs one kind per adapter. Target one kind only.")
    cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout,
                     target_modules=targets, fan_in_fan_out=all(conv1d), use_dora=dora)
    with warnings.catch_warnings():  # PEFT asks transformers 5 by a deprecated attribute name
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        # an int8 base (lora.quantize) is never merged as it is: doctune dequantises it first
        warnings.filterwarnings("ignore", category=UserWarning, message=".*TorchaoLoraLinear.*")
        return get_peft_model(model, cfg)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (tied weights counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def unwrap_peft(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def transformer_blocks(model: Any) -> list[Any]:
    """The repeated transformer blocks of ``model`` (e.g. every ``GPT2Block``): the modules
    transformers never splits across devices (``_no_split_modules``). Empty when the model
    names none."""
    base = unwrap_peft(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.modules() if type(m).__name__ in names]


def enable_grad_checkpointing(model: Any) -> None:
    """Turn on activation recomputation (non-reentrant, so it works with frozen LoRA bases)."""
    base = unwrap_peft(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(base).__name__} does not support gradient checkpointing; "
                          "set `train.grad_checkpointing: false`.")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False
