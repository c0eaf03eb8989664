"""Load a trained model for use: generation, evaluation, merging and export.

``load_for_inference(source)`` accepts whatever a user is likely to point at:

* a run folder (``RUN/``, with ``config.yaml``): its ``final/`` model, or for a LoRA run the
  base model with the adapter on top;
* a checkpoint folder (``RUN/checkpoints/step-N/``): the base rebuilt from the run's config
  and the checkpoint's weights loaded into it;
* a bare PEFT adapter folder (``adapter_config.json``): loaded onto the base it names;
* a transformers model folder (a merged or exported one, or any local model);
* a GGUF file, ``ollama:NAME[:TAG]`` or ``pip:PACKAGE`` (see :mod:`doctune.sources`);
* a Hugging Face hub id.

``resolve_source`` answers what a source is without importing torch, so commands can
check their input before the slow part.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from doctune.errors import CheckpointError, ModelError
from doctune.rundir import CheckpointDir, RunDir, read_json_object
from doctune.sources import shared_gguf_reading

if TYPE_CHECKING:
    import torch

SourceKind = Literal["run", "checkpoint", "adapter", "model", "hub"]


@dataclass(frozen=True)
class Source:
    """What a model reference points at, before anything is loaded."""

    kind: SourceKind
    given: str
    """The reference as the user wrote it."""
    model: str
    """Folder (or hub id) holding the weights: ``final/``, the adapter, the checkpoint, the model."""
    base: str | None = None
    """The base model of an adapter or a checkpoint (hub id or folder); None for full models."""
    run: RunDir | None = None
    """The run folder this came from, when there is one."""
    lora: bool = False
    """True when ``model`` holds LoRA weights that go on top of ``base``."""


@dataclass
class Loaded:
    """A model ready to run, its tokenizer, and where it came from."""

    model: Any
    """A transformers causal LM (or a PEFT model wrapping one), in eval mode."""
    tokenizer: Any
    source: Source
    device: torch.device
    dtype: torch.dtype

    @property
    def info(self) -> dict[str, Any]:
        """A JSON-friendly summary: kind, paths, base, device and dtype."""
        s = self.source
        return {"kind": s.kind, "source": s.given, "model": s.model, "base": s.base,
                "run_dir": str(s.run.path) if s.run else None, "lora": s.lora,
                "device": self.device.type, "dtype": str(self.dtype).removeprefix("torch.")}


def resolve_source(source: str | Path, *, base: str | Path | None = None) -> Source:
    """Say what ``source`` is (see the module docstring); ``base`` overrides an adapter's base.

    Raises :class:`CheckpointError` for a run without a final model, and :class:`ModelError`
    for a folder that holds nothing loadable.
    """
    given = str(source)
    path = Path(given).expanduser()
    base_s = str(base) if base is not None else None
    if not path.exists():
        if given.startswith((".", "/", "~")) or given.count("/") > 1 or "\\" in given:
            raise ModelError(f"{path} does not exist. Pass a run folder, a model folder, an "
                             "adapter folder or a Hugging Face hub id (e.g. `distilgpt2`).")
        return Source("hub", given, given)
    if not path.is_dir():
        from doctune.sources import is_gguf_file

        if is_gguf_file(path):  # a GGUF file: loaded dequantised, with the tokenizer inside it
            return Source("model", given, str(path.resolve()))
        raise ModelError(f"{path} is a file; pass the folder that holds the model (or a .gguf file).")
    path = path.resolve()
    if RunDir.is_run(path):
        run = RunDir.open(path)
        final = str(run.require_final())
        if run.final_is_adapter():
            return Source("run", given, final, base_s or run.base_model(), run, lora=True)
        return Source("run", given, final, None, run)
    if CheckpointDir.is_checkpoint(path):
        if not RunDir.is_run(path.parent.parent):
            raise CheckpointError(f"{path} looks like a checkpoint, but {path.parent.parent} is "
                                  "not its run folder (no config.yaml). Keep checkpoints inside "
                                  "their run.")
        run = RunDir.open(path.parent.parent)
        return Source("checkpoint", given, str(path), base_s or run.base_model(), run,
                      lora=run.config().lora.enabled)
    if (path / "adapter_config.json").is_file():
        named = read_json_object(path / "adapter_config.json").get("base_model_name_or_path")
        found = base_s or (str(named) if named else None)
        if not found:
            raise ModelError(f"The adapter in {path} does not name its base model. Point to it "
                             "with `--base PATH` (the model folder or hub id it was trained on).")
        return Source("adapter", given, str(path), found, lora=True)
    if (path / "config.json").is_file():
        return Source("model", given, str(path))
    raise ModelError(f"{path} holds no model: expected a doctune run folder (config.yaml), a "
                     "transformers model folder (config.json), or a LoRA adapter folder "
                     "(adapter_config.json).")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def _tokenizer_for(src: Source) -> Any:
    from doctune.data.tokenize import load_tokenizer

    own = Path(src.model)
    if src.kind != "hub" and _has_tokenizer(own):
        return load_tokenizer(str(own))
    if src.run is not None:
        if _has_tokenizer(src.run.tokenizer_dir):
            return load_tokenizer(str(src.run.tokenizer_dir))
        m = src.run.config().model
        return load_tokenizer(m.tokenizer or m.name)
    return load_tokenizer(src.base or src.model)


def _load_base(src: Source, *, dense: bool = False) -> Any:
    """The base model of an adapter or checkpoint, with a message that says how to point to it.

    A run trained on a quantised base (``lora.quantize``) gets its base quantised the same
    way, since that is what its adapter learned to correct; ``dense`` then dequantises it
    again (fp32), for merging: merged = dequantised base + adapter."""
    import torch

    from doctune.modeling import load_pretrained
    from doctune.quantize import BaseFormat, dequantize_base, prepare_base

    assert src.base is not None
    base = Path(src.base).expanduser()
    if base.is_absolute() and not base.exists():
        raise ModelError(f"{src.model} was trained on the base model {src.base}, which does not "
                         "exist on this machine. Point to a copy of it with `--base PATH`.")
    kwargs: dict[str, Any] = {}
    quantize = "none"
    if src.run is not None:  # the same revision, code trust and quantisation as in training
        cfg = src.run.config()
        kwargs = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
        quantize = cfg.lora.quantize if src.lora else "none"
    try:
        if quantize == "none":
            return load_pretrained(src.base, **kwargs)
        model = load_pretrained(src.base, **kwargs, dtype="auto")
        prepare_base(model, BaseFormat("fp32", quantize), model.device)
        if dense:
            dequantize_base(model, torch.float32)
        return model
    except ModelError as e:
        raise ModelError(f"{src.model} was trained on the base model {src.base!r}, which cannot "
                         f"be loaded here. Point to it with `--base PATH` (a folder holding that "
                         f"model, or its hub id once cached).\n  ({e})") from None


def _load_checkpoint(src: Source, tokenizer: Any, *, dense: bool = False) -> Any:
    """Rebuild the run's model and load a checkpoint's trainable weights into it."""
    from safetensors.torch import load_file

    from doctune.config import is_scratch
    from doctune.modeling import apply_lora, build_scratch_model

    assert src.run is not None
    cfg = src.run.config()
    if src.lora:
        lo = cfg.lora
        model = apply_lora(_load_base(src, dense=dense), r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                           target_modules=lo.target_modules, dora=lo.dora)
    elif is_scratch(cfg.model.name):  # every weight is in the checkpoint: the init does not matter
        model = build_scratch_model(cfg.model.name, tokenizer, block_size=cfg.data.block_size)
    else:
        model = _load_base(src)
    weights = {k.replace("_orig_mod.", ""): v
               for k, v in load_file(str(CheckpointDir(Path(src.model)).weights)).items()}
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{src.model} does not match the model its run describes: "
                              f"unexpected weights {result.unexpected_keys[:5]}. Was config.yaml "
                              "edited after training?")
    return model


def _to_dtype(choice: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: the precision training would pick here; else fp32, bf16 or fp16."""
    import torch

    from doctune.device import resolve_precision

    if isinstance(choice, torch.dtype):
        return choice
    precision = resolve_precision(choice or "auto", device)
    return precision.autocast_dtype or torch.float32


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-weight progress bars (nor a stray deprecation warning) while a model loads."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # PEFT asks transformers 5 a question by its deprecated name; nothing a user can do.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                    category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*TorchaoLoraLinear.*", category=UserWarning)
            yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@shared_gguf_reading()  # a GGUF base: its header parsed once for config, tokenizer and weights
def load_for_inference(source: str | Path | Source, *, device: str = "auto",
                       dtype: str | torch.dtype | None = None, base: str | Path | None = None,
                       merge: bool = False) -> Loaded:
    """Load ``source`` (run, checkpoint, adapter, model folder or hub id, or a :class:`Source`
    already resolved) ready to run.

    ``device`` is ``auto|cuda|mps|cpu``; ``dtype`` is ``auto`` (None), ``fp32``, ``bf16``,
    ``fp16`` or a torch dtype. ``base`` replaces the base model an adapter names.
    With ``merge=True`` LoRA weights are merged into the base (a plain transformers model).
    """
    from doctune.device import resolve_device
    from doctune.modeling import load_pretrained
    from doctune.quantize import import_torchao_quietly, to_keeping_quantized

    import_torchao_quietly()  # transformers' model code imports it when it is installed

    src = source if isinstance(source, Source) else resolve_source(source, base=base)
    dev = resolve_device(device)
    torch_dtype = _to_dtype(dtype, dev)
    tokenizer = _tokenizer_for(src)
    with _quiet_loading():
        if src.kind == "checkpoint":
            model = _load_checkpoint(src, tokenizer, dense=merge)
        elif src.lora:
            from peft import PeftModel

            model = PeftModel.from_pretrained(_load_base(src, dense=merge), src.model)
        else:
            model = load_pretrained(src.model)
    if merge and src.lora:
        model = merge_lora(model)
    to_keeping_quantized(model, dev, torch_dtype)  # a quantised base stays quantised
    model.eval()
    model.requires_grad_(False)
    return Loaded(model, tokenizer, src, dev, torch_dtype)


def merge_lora(model: Any) -> Any:
    """Fold a PEFT LoRA model into its base: ``W + scale * B @ A`` (GPT-2's Conv1D included)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return model.merge_and_unload()


def context_length(model: Any) -> int | None:
    """How many tokens the model reads at most (None when its config does not say)."""
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
