"""Export to GGUF (llama.cpp, Ollama, LM Studio) with an Ollama ``Modelfile`` beside it.

Supported: the GPT-2 architecture (gpt2, distilgpt2, gpt2-medium/large/xl and doctune's
``scratch:*`` presets). The layout follows llama.cpp's own ``convert_hf_to_gguf.py``
(class ``GPT2Model``): Conv1D weights, stored ``[in, out]`` by transformers, are transposed
to ``[out, in]``; 1-D tensors, norms and the position embeddings stay F32; the rest is
F16 or Q8_0. The output projection is tied to the token embeddings (llama.cpp re-uses
``token_embd.weight`` when no ``output.weight`` is present). The byte-level BPE tokenizer
(vocabulary, merges, token types, special ids) goes inside the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

    from doctune.export.merge import Exported

QUANTS = ("f16", "q8_0", "f32")
SUPPORTED = "GPT-2 (gpt2, distilgpt2, gpt2-medium, gpt2-large, gpt2-xl, scratch:tiny, scratch:small)"
# GELU written three ways in transformers, all the tanh approximation llama.cpp computes.
_TANH_GELU = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}
_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ExportError('GGUF export needs the `gguf` package: pip install "doctune[gguf]"') from None
    return gguf


def check_architecture(config: Any) -> None:
    """Raise :class:`ExportError` unless ``config`` is a GPT-2 llama.cpp computes exactly."""
    model_type = getattr(config, "model_type", None)
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


def _check_tokenizer(spec: dict[str, Any]) -> None:
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    ok = (model.get("type") == "BPE" and pre.get("type") == "ByteLevel"
          and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
          and not spec.get("normalizer"))
    if not ok:
        raise ExportError("GGUF export needs a GPT-2 style byte-level BPE tokenizer (ByteLevel "
                          "pre-tokenizer, no prefix space, no normalizer); this one is "
                          f"{model.get('type')} with {pre.get('type')}. Use `--format hf` and "
                          "llama.cpp's convert_hf_to_gguf.py instead.")


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Token list, token types, merges and special ids as llama.cpp's ``gpt2`` tokenizer reads them."""
    gguf = _import_gguf()
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    _check_tokenizer(spec)
    vocab: dict[str, int] = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise ExportError(f"The tokenizer has ids up to {max(vocab.values())}, but the model's "
                          f"embedding has only {vocab_size} rows; they do not belong together.")
    by_id = {i: t for t, i in vocab.items()}
    added = {i: tok for i, tok in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows no token uses (vocab padded to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ExportError("The tokenizer has no end-of-text token; llama.cpp needs one to stop.")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    return {"tokens": tokens, "types": types, "merges": merges, "eos": eos, "bos": bos,
            "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id}


def _tensor_plan(name: str, data: np.ndarray, new_name: str, quant: str) -> Any:
    """The GGML type of one tensor, following convert_hf_to_gguf.py's rules."""
    gguf = _import_gguf()
    q = gguf.GGMLQuantizationType
    if data.ndim <= 1 or new_name.endswith("_norm.weight") or new_name.startswith("position_embd"):
        return q.F32
    return {"f32": q.F32, "f16": q.F16, "q8_0": q.Q8_0}[quant]


def write_gguf(model: Any, tokenizer: Any, path: Path, *, quant: str = "f16", name: str = "model") -> list[str]:
    """Write ``model`` (a transformers GPT-2 in fp32) and its tokenizer to the GGUF file ``path``.

    Returns notes (e.g. tensors kept in F16 because Q8_0 needs rows divisible by 32).
    """
    import numpy as np

    gguf = _import_gguf()
    if quant not in QUANTS:
        raise ExportError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}.")
    cfg = model.config
    check_architecture(cfg)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    n_embd, n_layer = int(cfg.n_embd), int(cfg.n_layer)
    tok = tokenizer_fields(tokenizer, int(cfg.vocab_size))

    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(n_layer)
    w.add_context_length(int(cfg.n_positions))
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(int(cfg.n_inner or 4 * n_embd))
    w.add_head_count(int(cfg.n_head))
    w.add_layer_norm_eps(float(cfg.layer_norm_epsilon))
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex, which byte-level BPE tokenizers use
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    w.add_bos_token_id(tok["bos"])
    w.add_eos_token_id(tok["eos"])
    if tok["unk"] is not None:
        w.add_unk_token_id(tok["unk"])
    if tok["pad"] is not None:
        w.add_pad_token_id(tok["pad"])
    w.add_add_bos_token(False)  # doctune trains on documents without a leading BOS
    w.add_add_eos_token(False)

    notes: list[str] = []
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, n_layer)
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
        qtype = _tensor_plan(hf_name, data, new_name, quant)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(new_name, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(new_name, data.astype(np.float16))
        else:
            try:
                w.add_tensor(new_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            except gguf.QuantError:
                notes.append(f"{new_name} kept in F16 ({data.shape[-1]} columns is not a multiple of 32)")
                w.add_tensor(new_name, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return notes


REPEAT_PENALTY = 1.1
"""Ollama's repeat_penalty in the Modelfile: small models loop without a little of it."""


def modelfile(gguf_name: str, *, num_ctx: int, stop: str | None) -> str:
    """An Ollama ``Modelfile`` for the GGUF file ``gguf_name`` in the same folder.

    Sampling defaults are those of ``doctune generate``.
    """
    from doctune.generate import Sampling

    s = Sampling()
    lines = ["# Ollama model file written by doctune. Create and run the model with:",
             "#   ollama create my-docs -f Modelfile",
             '#   ollama run my-docs "How do I"',
             f"FROM ./{gguf_name}",
             "",
             "# A base (completion) model: the prompt is passed through unchanged.",
             'TEMPLATE """{{ .Prompt }}"""',
             f"PARAMETER num_ctx {num_ctx}",
             f"PARAMETER temperature {s.temperature:g}",
             f"PARAMETER top_p {s.top_p:g}",
             f"PARAMETER repeat_penalty {REPEAT_PENALTY:g}"]
    if stop:
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


def _gguf_usage(gguf_name: str, out: Path) -> list[str]:
    return ["```bash", f'llama-cli -m {out / gguf_name} -p "How do I" -n 64',
            f"cd {out} && ollama create my-docs -f Modelfile && ollama run my-docs \"How do I\"",
            "```", ""]


def export_gguf(source: str | Path, out: Path, *, quant: str = "f16", base: str | Path | None = None,
                force: bool = False) -> Exported:
    """Write ``OUT/<name>-<quant>.gguf``, ``OUT/Modelfile`` and ``OUT/README.md`` for ``source``.

    LoRA runs and adapters are merged into their base first. Raises :class:`ExportError`
    for an architecture llama.cpp's GPT-2 loader cannot run, naming what is supported.
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

    _import_gguf()
    if quant not in QUANTS:
        raise ExportError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}.")
    src = resolve_source(source, base=base)
    out = check_out_dir(out, src, force=force)
    loaded = load_merged(source, base=base)
    check_architecture(loaded.model.config)
    name = export_name(src)
    file_name = f"{name}-{quant}.gguf"
    tmp = staging_dir(out)
    try:
        notes = write_gguf(loaded.model, loaded.tokenizer, tmp / file_name, quant=quant, name=name)
        tok = loaded.tokenizer
        (tmp / "Modelfile").write_text(modelfile(file_name, num_ctx=context_length(loaded.model) or 1024,
                                                 stop=tok.eos_token), encoding="utf-8")
        card = model_card(src, out=out, title=f"{name} (doctune, GGUF {quant})",
                          usage=_gguf_usage(file_name, out) + [f"- {n}" for n in notes])
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out, files, src, merged_lora=src.lora)
