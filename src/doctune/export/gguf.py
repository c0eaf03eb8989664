"""Export to GGUF (llama.cpp, Ollama, LM Studio) with an Ollama ``Modelfile`` beside it.

Supported: GPT-2 (gpt2, distilgpt2, gpt2-medium/large/xl and doctune's ``scratch:*``
presets), Llama (``model_type`` "llama": SmolLM/SmolLM2, Llama 3), Qwen2 (Qwen2,
Qwen2.5), Qwen3, Gemma 3 (text) and Phi-3, with a byte-level BPE tokenizer (SentencePiece ones, as TinyLlama's, are not
written yet). The layout follows llama.cpp's own ``convert_hf_to_gguf.py``: for GPT-2 (class ``GPT2Model``) the Conv1D weights, stored
``[in, out]`` by transformers, are transposed to ``[out, in]``; the Llama-family specifics
are in :mod:`doctune.export.gguf_llama`, the tokenizer in :mod:`doctune.export.gguf_vocab`.
1-D tensors, norms and position embeddings stay F32; the rest is F16 or Q8_0. Tied output
projections are not written twice (llama.cpp re-uses ``token_embd.weight`` when no
``output.weight`` is present).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.errors import ExportError
from doctune.export.modelfile import default_system_prompt, modelfile

if TYPE_CHECKING:
    import numpy as np

    from doctune.export.merge import Exported

QUANTS = ("f16", "q8_0", "f32")
SUPPORTED = ("GPT-2 (gpt2, distilgpt2, gpt2-medium/large/xl, scratch:tiny, scratch:small), "
             "Llama (SmolLM, SmolLM2, Llama 3), Qwen2 (Qwen2, Qwen2.5), Qwen3, Gemma 3 (text, "
             "Gemma3ForCausalLM) and Phi-3, with a byte-level BPE tokenizer")
# GELU written three ways in transformers, all the tanh approximation llama.cpp computes.
_TANH_GELU = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}
_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ExportError('GGUF export needs the `gguf` package: pip install "doctune[gguf]"') from None
    return gguf


def check_architecture(config: Any) -> str:
    """The llama.cpp architecture of ``config``; :class:`ExportError` unless llama.cpp computes it exactly."""
    from doctune.export import gguf_llama

    model_type = getattr(config, "model_type", None)
    if model_type in gguf_llama.ARCHES:
        gguf_llama.check_config(config)
        return gguf_llama.gguf_arch(config)
    if model_type != "gpt2":
        raise ExportError(
            f"GGUF export supports {SUPPORTED}; this model is {model_type!r}. Export a "
            "transformers folder with `doctune export SRC --format hf --out DIR`, then convert it "
            "with llama.cpp's own script: `python convert_hf_to_gguf.py DIR --outtype f16`.")
    act = getattr(config, "activation_function", "gelu_new")
    problems = []
    if act not in _TANH_GELU:
        problems.append(f"activation_function={act!r} (llama.cpp uses the tanh GELU)")
    if not getattr(config, "scale_attn_weights", True) or getattr(config, "scale_attn_by_inverse_layer_idx", False):
        problems.append("non-standard attention scaling")
    if problems:
        raise ExportError(f"This GPT-2 variant cannot be exported to GGUF faithfully: "
                          f"{'; '.join(problems)}. Use `--format hf` instead.")
    return "gpt2"


def _gpt2_hparams(writer: Any, cfg: Any) -> None:
    n_embd = int(cfg.n_embd)
    writer.add_block_count(int(cfg.n_layer))
    writer.add_context_length(int(cfg.n_positions))
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(int(cfg.n_inner or 4 * n_embd))
    writer.add_head_count(int(cfg.n_head))
    writer.add_layer_norm_eps(float(cfg.layer_norm_epsilon))


def _gpt2_tensors(model: Any) -> Iterator[tuple[str, np.ndarray]]:
    """``(gguf name, fp32 array)`` for every tensor of the GPT-2 ``model`` (class GPT2Model)."""
    import numpy as np

    gguf = _import_gguf()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, int(model.config.n_layer))
    state = model.state_dict()
    tied = "lm_head.weight" in state and state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    for hf_name, tensor in state.items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias")) or (hf_name == "lm_head.weight" and tied):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ExportError(f"GGUF export does not know where the weight {hf_name!r} goes.")
        data = tensor.detach().to("cpu").float().numpy()
        if hf_name.endswith(_CONV1D):
            data = np.ascontiguousarray(data.T)  # Conv1D [in, out] -> [out, in]
        yield new_name, data


def _tensor_type(data: np.ndarray, new_name: str, quant: str) -> Any:
    """The GGML type of one tensor, following convert_hf_to_gguf.py's rules."""
    gguf = _import_gguf()
    q = gguf.GGMLQuantizationType
    if data.ndim <= 1 or new_name.endswith("_norm.weight") or new_name.startswith("position_embd"):
        return q.F32
    return {"f32": q.F32, "f16": q.F16, "q8_0": q.Q8_0}[quant]


def _add_tensor(writer: Any, new_name: str, data: np.ndarray, quant: str) -> str | None:
    """Write one tensor; a note when Q8_0 was asked for and F16 written instead."""
    import numpy as np

    gguf = _import_gguf()
    qtype = _tensor_type(data, new_name, quant)
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(new_name, np.ascontiguousarray(data, dtype=np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(new_name, np.ascontiguousarray(data, dtype=np.float16))
    else:
        try:
            writer.add_tensor(new_name, gguf.quants.quantize(np.ascontiguousarray(data), qtype), raw_dtype=qtype)
        except gguf.QuantError:
            writer.add_tensor(new_name, np.ascontiguousarray(data, dtype=np.float16))
            return f"{new_name} kept in F16 ({data.shape[-1]} columns is not a multiple of 32)"
    return None


def write_gguf(model: Any, tokenizer: Any, path: Path, *, quant: str = "f16", name: str = "model") -> list[str]:
    """Write ``model`` (a transformers model of an architecture above, fp32) and its tokenizer to ``path``.

    Returns notes (e.g. tensors kept in F16 because Q8_0 needs rows divisible by 32).
    """
    from doctune.export import gguf_llama
    from doctune.export.gguf_vocab import add_tokenizer, tokenizer_fields

    gguf = _import_gguf()
    if quant not in QUANTS:
        raise ExportError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}.")
    cfg = model.config
    arch = check_architecture(cfg)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    tok = tokenizer_fields(tokenizer, int(cfg.vocab_size))

    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    if arch == "gpt2":
        _gpt2_hparams(w, cfg)
        plan = _gpt2_tensors(model)
    else:
        gguf_llama.add_hparams(w, cfg)
        plan = gguf_llama.tensors(model)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, tok)
    notes = [note for new_name, data in plan if (note := _add_tensor(w, new_name, data, quant))]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return notes


def _gguf_usage(gguf_name: str, out: Path) -> list[str]:
    return ["```bash", f'llama-cli -m {out / gguf_name} -p "How do I" -n 64',
            f"cd {out} && ollama create my-docs -f Modelfile && ollama run my-docs \"How do I\"",
            "```", ""]


def export_gguf(source: str | Path, out: Path, *, quant: str = "f16", base: str | Path | None = None,
                force: bool = False) -> Exported:
    """Write ``OUT/<name>-<quant>.gguf``, ``OUT/Modelfile`` and ``OUT/README.md`` for ``source``.

    LoRA runs and adapters are merged into their base first. Raises :class:`ExportError`
    for an architecture or tokenizer llama.cpp cannot run as transformers does, naming
    what is supported.
    """
    from doctune.export.card import model_card
    from doctune.export.merge import (
        Exported,
        check_out_dir,
        export_name,
        load_merged,
        publish,
        staging_dir,
    )
    from doctune.inference import context_length, resolve_source
    from doctune.modeling import chat_template, stop_tokens

    _import_gguf()
    if quant not in QUANTS:
        raise ExportError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}.")
    src = resolve_source(source, base=base)
    out = check_out_dir(out, src, force=force)
    loaded = load_merged(src)
    check_architecture(loaded.model.config)
    name = export_name(src)
    file_name = f"{name}-{quant}.gguf"
    tmp = staging_dir(out)
    try:
        notes = write_gguf(loaded.model, loaded.tokenizer, tmp / file_name, quant=quant, name=name)
        tok = loaded.tokenizer
        text = modelfile(file_name, num_ctx=context_length(loaded.model) or 1024, stop=stop_tokens(tok),
                         chat_template=chat_template(tok), system=default_system_prompt(tok))
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
        card = model_card(src, out=out, title=f"{name} (doctune, GGUF {quant})",
                          usage=_gguf_usage(file_name, out) + [f"- {n}" for n in notes],
                          chat=chat_template(tok) is not None)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out, files, src, merged_lora=src.lora)
