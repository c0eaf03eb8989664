"""Merge a LoRA run into its base and write a standard Hugging Face model folder.

The folder holds ``model.safetensors``, ``config.json``, ``generation_config.json``, the
tokenizer files (with the chat template, if the model has one; ``generation_config`` then
stops at its end-of-turn token too) and a model card ``README.md``; ``from_pretrained`` (and the hub) read it
with no doctune and no PEFT. A full fine-tune is re-saved the same way, with the card.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from doctune.errors import ExportError
from doctune.rundir import RunDir

if TYPE_CHECKING:
    from doctune.inference import Loaded, Source


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    out: Path
    """The output folder."""
    files: list[Path]
    """The files in it, sorted."""
    source: Source
    merged_lora: bool
    """True when a LoRA adapter was merged into its base on the way."""


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_out_dir(out: Path, src: Source, *, force: bool) -> Path:
    """Resolve ``out`` and refuse to overwrite anything without ``force``, or the source at all."""
    out = out.expanduser().resolve()
    protected = [Path(src.model).resolve()] if src.kind != "hub" else []
    if src.run is not None:
        protected.append(src.run.path.resolve())
    for p in protected:
        if out == p or _inside(p, out) or (src.run is None and _inside(out, p)):
            raise ExportError(f"--out {out} would overwrite the model being exported ({p}). "
                              "Choose a new folder, e.g. `--out exports/my-model`.")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; pass a folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} already exists and is not empty. Pass --force to replace "
                          "it, or choose another folder.")
    return out


def staging_dir(out: Path) -> Path:
    """An empty temporary folder beside ``out`` (renamed over it once complete)."""
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, out: Path) -> list[Path]:
    """Replace ``out`` with the finished ``tmp`` folder; return the files now in ``out``."""
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return sorted(p for p in out.rglob("*") if p.is_file())


def load_merged(src: Source) -> Loaded:
    """``src`` loaded on CPU in fp32 with any LoRA adapter merged into the base weights."""
    from doctune.inference import load_for_inference

    return load_for_inference(src, device="cpu", dtype="fp32", merge=True)


def export_name(src: Source) -> str:
    """A short name for exported files: the run's folder name, else the model's."""
    model = Path(src.model.rstrip("/"))
    name = src.run.path.name if src.run else model.name.removesuffix(".gguf")
    if not name or model == RunDir(model.parent).final_dir:  # a run's final/ given directly
        name = model.parent.name or "model"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def merge_to_folder(source: str | Path, out: Path, *, base: str | Path | None = None,
                    force: bool = False) -> Exported:
    """Write ``source`` as a plain transformers folder at ``out`` (LoRA merged), with a card.

    Raises :class:`ExportError` when ``out`` is not empty (without ``force``) or is the source.
    """
    from doctune.export.card import model_card
    from doctune.inference import resolve_source
    from doctune.modeling import chat_template, stop_token_ids

    src = resolve_source(source, base=base)
    out = check_out_dir(out, src, force=force)
    loaded = load_merged(src)
    tmp = staging_dir(out)
    try:
        model = loaded.model
        model.config.use_cache = True  # training may have turned it off (checkpointing)
        stops = stop_token_ids(loaded.tokenizer)
        if len(stops) > 1:  # a chat model: `generate` stops at the end of a turn too
            model.generation_config.eos_token_id = stops
        model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        if not (tmp / "generation_config.json").is_file():
            model.generation_config.save_pretrained(tmp)
        title = f"{export_name(src)} (doctune)"
        card = model_card(src, out=out, title=title, chat=chat_template(loaded.tokenizer) is not None)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out, files, src, merged_lora=src.lora)
