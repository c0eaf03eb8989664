"""The ``doctune`` command line: thin typer commands, each calling one library function.

Heavy libraries (torch, transformers) are imported inside the commands, so that
``doctune --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from doctune import __version__
from doctune.errors import DoctuneError


class _Group(typer.core.TyperGroup):
    """Turns doctune's own errors into a one-line message and exit status 2, no traceback."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except DoctuneError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
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
        if not (resume / "config.yaml").is_file():
            raise fail(f"{resume} is not a doctune run folder (no config.yaml in it). Pass the "
                       "folder a previous `doctune train` wrote (its `--out`).")
        extra["train.output_dir"] = str(resume)
        cfg = load_config(resume / "config.yaml", set_, extra)
    else:
        cfg = load_config(config, set_, extra)
    result = run_training(cfg, resume=resume is not None, quiet=quiet)
    if result.stopped_early:
        raise typer.Exit(130)


@app.command()
def clean(
    src: Annotated[Path, typer.Argument(help="Docs folder, or one .md/.mdx/.markdown file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the cleaned files into (same relative paths).")],
    dialect: Annotated[str, typer.Option("--dialect", help="auto, mdx, markdown or mkdocs.")] = "auto",
    include: Annotated[list[str] | None, typer.Option("--include", help="Glob a file must match, e.g. `docs/**` (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Glob to skip, e.g. `blog` (repeatable; node_modules, .git, build folders always skipped).")] = None,
    title_heading: Annotated[bool, typer.Option("--title-heading/--no-title-heading", help="Turn the front-matter title into a `# Title` when a page has no H1.")] = True,
    json_: JsonOpt = False,
) -> None:
    """Clean Markdown/MDX/MkDocs docs into plain Markdown: the text a reader sees, code kept.

    Example: `doctune clean docs/ --out clean/ --dialect auto`
    """
    import json

    from doctune.data.cleantree import clean_tree, format_summary

    try:
        summary = clean_tree(src, out, dialect=dialect, include=tuple(include or ()),
                             exclude=tuple(exclude or ()), title_heading=title_heading)
    except DoctuneError as e:
        raise fail(str(e)) from None
    typer.echo(json.dumps(summary.to_dict(), indent=2) if json_ else format_summary(summary))
    if not summary.files:
        raise fail("no file could be cleaned; see the reasons above.", code=1)


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


@app.command()
def plan(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: Annotated[str | None, typer.Option("--device", help="Plan for cpu, cuda or mps. [default: `train.device`; auto = this machine]")] = None,
    json_: JsonOpt = False,
) -> None:
    """Estimate the peak memory of a training run, check it against the budget, suggest settings that fit.

    Example: `doctune plan --config doctune.yaml --set train.micro_batch_size=8 --device mps`
    """
    import json

    from doctune.config import load_config
    from doctune.plan import estimate_memory, plan_device, render_plan

    try:
        cfg = load_config(config, set_)
        result = estimate_memory(cfg, device=plan_device(device or cfg.train.device))
    except DoctuneError as e:
        raise fail(str(e)) from None
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_ else render_plan(result, cfg))


# generate, eval, merge and export live in their own module; importing it registers them
from doctune import cli_use  # noqa: E402, F401


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
