"""The ``doctune`` command line: thin typer commands, each calling one library function.

Heavy libraries (torch, transformers) are imported inside the commands, so that
``doctune --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from doctune import __version__
from doctune.errors import DoctuneError

app = typer.Typer(
    name="doctune",
    help="Fine-tune small language models on a folder of Markdown/MDX documentation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (see `doctune init`).",
                 exists=True, dir_okay=False, readable=True),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: `--set train.lr=3e-4` (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"doctune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Fine-tune small language models on a folder of Markdown/MDX documentation."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error (no traceback) and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def init(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the file.")] = Path("doctune.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented `doctune.yaml` with defaults suited to this machine.

    Example: `doctune init && doctune train --config doctune.yaml`
    """
    from doctune.config import commented_yaml
    from doctune.machine import machine_defaults

    if out.exists() and not force:
        raise fail(f"{out} already exists; pass --force to overwrite it.")
    cfg, notes = machine_defaults()
    text = commented_yaml(cfg)
    if notes:
        text = "".join(f"# {n}\n" for n in notes) + text
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}")


@app.command()
def train(
    docs: Annotated[Path | None, typer.Argument(help="Docs folder (sets `data.path`).", exists=True)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (sets `train.output_dir`).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (sets `model.name`): hub id, folder or scratch:tiny.")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapter or full fine-tuning (sets `lora.enabled`).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps (sets `train.max_steps`).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder from its last checkpoint.", exists=True, file_okay=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and the result.")] = False,
) -> None:
    """Fine-tune a model on a docs folder: prepare the data, train, evaluate, save.

    Example: `doctune train docs/ --model distilgpt2 --lora --out runs/mydocs`

    Offline, from scratch: `doctune train examples/docs --model scratch:tiny --max-steps 200`
    """
    from doctune.config import load_config
    from doctune.train.loop import train as run_training

    extra = {"data.path": str(docs) if docs else None, "train.output_dir": str(out) if out else None,
             "model.name": model, "lora.enabled": lora, "train.max_steps": max_steps}
    if resume is not None:
        if config is not None:
            raise fail("--resume continues a run with its own config.yaml; drop --config "
                       "(use --set for the few keys you want to change, e.g. train.max_steps).")
        extra["train.output_dir"] = str(resume)
        cfg = load_config(resume / "config.yaml", set_, extra)
    else:
        cfg = load_config(config, set_, extra)
    result = run_training(cfg, resume=resume is not None, quiet=quiet)
    if result.stopped_early:
        raise typer.Exit(130)


@app.command()
def prepare(
    src: Annotated[Path, typer.Argument(help="Docs folder, or one .md/.mdx file.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="Fast tokenizer: a local folder or a cached hub id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the token store (reused when nothing changed).")],
    block_size: Annotated[int | None, typer.Option("--block-size", help="Tokens per window. [default: 512]")] = None,
    overlap: Annotated[int | None, typer.Option("--overlap", help="Tokens shared by consecutive windows of a document. [default: 64]")] = None,
    val_fraction: Annotated[float | None, typer.Option("--val-fraction", help="Share of documents held out for validation. [default: 0.05]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the train/validation split. [default: 0]")] = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="Glob a file must match, e.g. `docs/**` (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Glob to skip, e.g. `blog` (repeatable; node_modules, .git, build folders always skipped).")] = None,
    dialect: Annotated[str | None, typer.Option("--dialect", help="auto, mdx, markdown or mkdocs. [default: auto]")] = None,
    json_: JsonOpt = False,
) -> None:
    """Clean, tokenise and cut a docs folder into train/validation windows (a token store).

    Example: `doctune prepare examples/docs --tokenizer gpt2 --out data/`
    """
    import json

    from doctune.config import DataConfig
    from doctune.data.prepare import prepare as run_prepare

    d = DataConfig()  # the defaults live in the config schema
    try:
        summary = run_prepare(
            src, out, tokenizer=tokenizer,
            block_size=d.block_size if block_size is None else block_size,
            overlap=d.overlap if overlap is None else overlap,
            val_fraction=d.val_fraction if val_fraction is None else val_fraction,
            seed=d.seed if seed is None else seed,
            include=tuple(include or d.include), exclude=tuple(exclude or d.exclude),
            dialect=d.dialect if dialect is None else dialect, title_heading=d.title_heading)
    except DoctuneError as e:
        raise fail(str(e)) from None
    if json_:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    from doctune.data.prepare import format_summary

    typer.echo(format_summary(summary))


def main() -> None:
    """Console entry point: run the app, turning doctune's errors into clean messages."""
    try:
        app()
    except DoctuneError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
