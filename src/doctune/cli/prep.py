"""``doctune init``, ``clean``, ``prepare`` and ``plan``: from docs to data, and the memory plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from doctune.cli.app import ConfigOpt, JsonOpt, SetOpt, app
from doctune.config import default_of
from doctune.errors import ConfigError, DataError

_DIALECTS = "auto, mdx, markdown, mkdocs or vitepress"
IncludeOpt = Annotated[list[str] | None, typer.Option(
    "--include", help="Glob a file must match, e.g. `docs/**` (repeatable).")]
ExcludeOpt = Annotated[list[str] | None, typer.Option(
    "--exclude", help="Glob to skip, e.g. `blog` (repeatable; node_modules, .git, build folders always skipped).")]


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
        raise ConfigError(f"{out} already exists; pass --force to overwrite it.")
    cfg, notes = machine_defaults()
    text = commented_yaml(cfg)
    if notes:
        text = "".join(f"# {n}\n" for n in notes) + text
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}")


@app.command()
def clean(
    src: Annotated[Path, typer.Argument(help="Docs folder, or one .md/.mdx/.markdown file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the cleaned files into (same relative paths).")],
    dialect: Annotated[str, typer.Option("--dialect", help=f"{_DIALECTS}.")] = default_of("data.dialect"),
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    title_heading: Annotated[bool, typer.Option("--title-heading/--no-title-heading", help="Turn the front-matter title into a `# Title` when a page has no H1.")] = default_of("data.title_heading"),
    json_: JsonOpt = False,
) -> None:
    """Clean Markdown/MDX/MkDocs docs into plain Markdown: the text a reader sees, code kept.

    Example: `doctune clean docs/ --out clean/ --dialect auto`
    """
    import json

    from doctune.data.cleantree import clean_tree, format_summary

    summary = clean_tree(src, out, dialect=dialect, include=tuple(include or ()),
                         exclude=tuple(exclude or ()), title_heading=title_heading)
    typer.echo(json.dumps(summary.to_dict(), indent=2) if json_ else format_summary(summary))
    if not summary.files:
        raise DataError("no file could be cleaned; see the reasons above.", exit_code=1)


@app.command()
def prepare(
    src: Annotated[Path | None, typer.Argument(help="Docs folder, or one .md/.mdx file (sets `data.path`).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", "-t", help="Fast tokenizer: a local folder or a cached hub id (sets `model.tokenizer`; unset: `model.name`).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the token store, reused when nothing changed (sets `data.cache_dir`).")] = None,
    block_size: Annotated[int | None, typer.Option("--block-size", help=f"Tokens per window (sets `data.block_size`). [default: {default_of('data.block_size')}]")] = None,
    overlap: Annotated[int | None, typer.Option("--overlap", help=f"Tokens shared by consecutive windows of a document (sets `data.overlap`). [default: {default_of('data.overlap')}]")] = None,
    val_fraction: Annotated[float | None, typer.Option("--val-fraction", help=f"Share of documents held out for validation (sets `data.val_fraction`). [default: {default_of('data.val_fraction')}]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help=f"Seed of the train/validation split (sets `data.seed`). [default: {default_of('data.seed')}]")] = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    dialect: Annotated[str | None, typer.Option("--dialect", help=f"{_DIALECTS} (sets `data.dialect`). [default: {default_of('data.dialect')}]")] = None,
    json_: JsonOpt = False,
) -> None:
    """Clean, tokenise and cut a docs folder into train/validation windows (a token store).

    Example: `doctune prepare examples/docs --tokenizer gpt2 --out data/`

    With a config: `doctune prepare --config doctune.yaml --set data.block_size=256 --out data/`
    """
    import json

    from doctune.config import is_scratch, load_config
    from doctune.data.prepare import format_summary
    from doctune.data.prepare import prepare as run_prepare
    from doctune.data.settings import DataSettings
    from doctune.paths import check_apart

    cfg = load_config(config, set_, {
        "data.path": str(src) if src else None, "data.cache_dir": str(out) if out else None,
        "data.block_size": block_size, "data.overlap": overlap, "data.val_fraction": val_fraction,
        "data.seed": seed, "data.include": include or None, "data.exclude": exclude or None,
        "data.dialect": dialect, "model.tokenizer": tokenizer})
    d, m = cfg.data, cfg.model
    if d.path is None:
        raise ConfigError("No docs folder given: pass it as `doctune prepare DOCS` or set `data.path`.")
    if d.cache_dir is None:
        raise ConfigError("Where should the token store go? Pass `--out FOLDER` or set `data.cache_dir`.")
    check_apart(Path(d.path), Path(d.cache_dir), what="--out",
                fix="Choose a folder outside it, e.g. `--out data/`.")
    name = m.tokenizer or m.name
    if is_scratch(name):
        raise ConfigError(f"{name} trains its own tokenizer during `doctune train`; `prepare` needs "
                          "an existing one: `--tokenizer gpt2` (a hub id or a local folder).")
    summary = run_prepare(Path(d.path), Path(d.cache_dir), DataSettings.from_config(d),
                          tokenizer=name)
    typer.echo(json.dumps(summary.to_dict(), indent=2) if json_ else format_summary(summary))


@app.command()
def plan(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: Annotated[str | None, typer.Option("--device", help="Plan for cpu, cuda or mps. [default: `train.device`; auto = this machine]")] = None,
    machine: Annotated[str | None, typer.Option("--machine", help="Instead: which models fit this machine, with which settings, how fast: mac16, cpu24, gpu24 or gpu80.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Estimate the peak memory of a training run, check it against the budget, suggest settings that fit.

    Example: `doctune plan --config doctune.yaml --set train.micro_batch_size=8 --device mps`;
    `doctune plan --machine mac16` (every model of the catalogue on a 16 GB Mac)
    """
    import json

    from doctune.config import load_config
    from doctune.plan import estimate_memory, plan_device, render_plan

    cfg = load_config(config, set_)
    if machine is not None:
        from doctune.plan_machines import plan_machine, render_machine

        rows = plan_machine(machine, cfg)
        if json_:
            typer.echo(json.dumps([{"model": k, "params": n, **{o.base: {
                "peak_mb": round(o.peak_mb), "fits": o.fits, "tokens_per_s": round(o.tokens_per_s, 1),
                "micro_batch_size": o.cfg.train.micro_batch_size,
                "grad_checkpointing": o.cfg.train.grad_checkpointing} for o in opts}}
                for k, n, opts in rows], indent=2))
        else:
            typer.echo(render_machine(machine, rows, cfg))
        return
    result = estimate_memory(cfg, device=plan_device(device or cfg.train.device))
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_ else render_plan(result, cfg))
