"""``doctune generate``, ``eval``, ``merge`` and ``export``: using and shipping a trained model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from doctune.cli.app import JsonOpt, app
from doctune.config import default_of
from doctune.errors import ConfigError
from doctune.sampling import Sampling

ModelArg = Annotated[str, typer.Argument(
    help="A run folder, checkpoint folder, model folder, LoRA adapter folder or hub id.")]
BaseOpt = Annotated[Path | None, typer.Option(
    "--base", help="Base model for an adapter whose recorded base is not on this machine.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cuda, mps or cpu.")]
_SAMPLING = Sampling()


@app.command()
def generate(
    model: ModelArg,
    prompt: Annotated[str | None, typer.Argument(help="Text to continue (omit with --interactive).")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy (always the most likely token).")] = _SAMPLING.temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = _SAMPLING.top_p,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0 = no limit).")] = _SAMPLING.top_k,
    repetition_penalty: Annotated[float, typer.Option(help="Above 1 discourages repeats.")] = _SAMPLING.repetition_penalty,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = _SAMPLING.max_new_tokens,
    seed: Annotated[int | None, typer.Option(help="Seed: same seed, same text.")] = _SAMPLING.seed,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Read prompts from stdin, one per line (`\\n` for a line break; `exit` ends).")] = False,
    chat: Annotated[bool, typer.Option("--chat", help="Treat the prompt as a user message: format it with the model's chat template and stop at the end of the turn.")] = False,
    system: Annotated[str | None, typer.Option("--system", help="A system message for --chat.")] = None,
    base: BaseOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Continue a prompt with a trained model, streaming tokens as they come.

    Example: `doctune generate runs/mydocs "To install the CLI," --max-new-tokens 80 --seed 1`

    An instruct model: `doctune generate runs/mydocs --chat "How do I start the dev server?"`
    """
    import json

    from doctune.generate import generate_text
    from doctune.generate import interactive as prompt_loop
    from doctune.inference import load_for_inference

    if system is not None and not chat:
        raise ConfigError("--system goes with --chat (a system message is part of a conversation).")
    if prompt is None and not interactive:
        raise ConfigError('give a prompt (`doctune generate MODEL "Once"`) or use --interactive.')
    sampling = Sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    sampling.check()
    loaded = load_for_inference(model, device=device, base=base)
    if interactive:
        ask = None if json_ or not sys.stdin.isatty() else (lambda: write("> "))
        prompt_loop(loaded, sampling, prompts=sys.stdin, write=write, ask=ask, chat=chat)
        return
    assert prompt is not None
    if json_:
        g = generate_text(loaded, prompt, sampling, chat=chat, system=system)
        typer.echo(json.dumps({"prompt": g.prompt, "text": g.text, "new_tokens": g.new_tokens,
                               "prompt_tokens": g.prompt_tokens, **loaded.info}, indent=1))
        return
    if not chat:  # a completion continues the prompt; a chat answer stands alone
        write(prompt)
    g = generate_text(loaded, prompt, sampling, on_text=write, chat=chat, system=system)
    write("\n")
    if g.dropped_prompt_tokens:
        typer.echo(f"note: the first {g.dropped_prompt_tokens} prompt tokens were cut to fit "
                   "the model's context.", err=True)


@app.command("eval")
def eval_(
    model: ModelArg,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Docs folder (or file) to score.", exists=True)] = None,
    compare: Annotated[str | None, typer.Option("--compare", help="Also score this model (`base` = the run's base) and show both.")] = None,
    block_size: Annotated[int | None, typer.Option(help="Window size (default: the run's `data.block_size`).")] = None,
    overlap: Annotated[int | None, typer.Option(help="Window overlap (default: the run's `data.overlap`).")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.", min=1)] = default_of("eval.batch_size"),
    precision: Annotated[str | None, typer.Option(help="auto, bf16, fp16 or fp32 (default: the run's).")] = None,
    base: BaseOpt = None,
    device: DeviceOpt = "auto",
    knowledge: Annotated[bool, typer.Option("--knowledge", help="Base vs tuned: questions (exact match, F1), multiple choice, held-out and general perplexity, stop rate.")] = False,
    synth_dir: Annotated[Path | None, typer.Option("--synth", help="With --knowledge: a `doctune synth` folder (default: the run's).", exists=True, file_okay=False)] = None,
    max_questions: Annotated[int | None, typer.Option(help="With --knowledge: questions scored per split at most (default 200).", min=1)] = None,
    questions: Annotated[Path | None, typer.Option("--questions", help="With --knowledge: a JSONL file of your own questions (question, answer, aliases, distractors, doc, section), scored beside the generated ones.", exists=True, dir_okay=False)] = None,
    json_: JsonOpt = False,
) -> None:
    """Perplexity per document and overall, with the same cleaning and windows as training;
    with `--knowledge`, what a run knows of its docs compared with its base.

    Example: `doctune eval runs/mydocs --data docs/ --compare base`, or
    `doctune eval runs/mydocs --knowledge --questions my_questions.jsonl`
    """
    import json

    if knowledge:
        from doctune.cli.knowledge import knowledge_eval

        knowledge_eval(model, synth_dir=synth_dir, device=device, max_questions=max_questions,
                       json_=json_, questions=questions)
        return
    if data is None:
        raise ConfigError("give the docs to score with `--data DOCS` (or use --knowledge).")

    from rich.console import Console

    from doctune.perplexity import evaluate, notes, results_table

    result, other = evaluate(model, data, compare=compare, base=base, device=device,
                             precision=precision, block_size=block_size, overlap=overlap,
                             batch_size=batch_size)
    if json_:
        payload = result.to_dict()
        if other is not None:
            payload["compare"] = other.to_dict()
        typer.echo(json.dumps(payload, indent=1, allow_nan=True))
        return
    console = Console()
    console.print(results_table(result, other))
    for note in notes(result, other):
        console.print(f"note: {note}", style="yellow")


@app.command()
def merge(
    run: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (must be new or empty).")],
    base: BaseOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it holds files.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Merge a LoRA run into its base and write a standard Hugging Face model folder with a card.

    Example: `doctune merge runs/mydocs --out exports/mydocs`
    """
    _write_export(run, out, fmt="hf", quant=None, base=base, force=force, json_=json_)


@app.command()
def export(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (must be new or empty).")],
    format_: Annotated[str, typer.Option("--format", "-f", help="gguf (llama.cpp, Ollama) or hf (transformers, the hub).")] = "gguf",
    quant: Annotated[str | None, typer.Option("--quant", "-q", help="GGUF weights: f16 (default), q8_0 or f32.")] = None,
    base: BaseOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it holds files.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Export a model for llama.cpp/Ollama (GGUF + Modelfile) or the Hugging Face hub.

    Example: `doctune export runs/mydocs --format gguf --quant q8_0 --out exports/gguf`
    then `cd exports/gguf && ollama create mydocs -f Modelfile`.
    """
    _write_export(model, out, fmt=format_, quant=quant, base=base, force=force, json_=json_)


def _write_export(source: str, out: Path, *, fmt: str, quant: str | None, base: Path | None,
                  force: bool, json_: bool) -> None:
    import json

    if fmt not in {"gguf", "hf"}:
        raise ConfigError(f"--format must be gguf or hf, got {fmt!r}.")
    if fmt == "hf" and quant is not None:
        raise ConfigError("--quant applies to --format gguf only; an hf export keeps fp32 weights.")
    if fmt == "gguf":
        from doctune.export.gguf import export_gguf

        result = export_gguf(source, out, quant=quant or "f16", base=base, force=force)
    else:
        from doctune.export.merge import merge_to_folder

        result = merge_to_folder(source, out, base=base, force=force)
    if json_:
        typer.echo(json.dumps({"out": str(result.out), "format": fmt, "merged_lora": result.merged_lora,
                               "files": [str(f) for f in result.files]}, indent=1))
        return
    what = "merged LoRA adapter into its base; " if result.merged_lora else ""
    typer.echo(f"{what}wrote {result.out}:")
    for f in result.files:
        typer.echo(f"  {f.relative_to(result.out)}  ({f.stat().st_size / 1e6:,.1f} MB)")
    if fmt == "gguf":
        typer.echo(f"next: cd {result.out} && ollama create my-docs -f Modelfile && ollama run my-docs")
    else:
        typer.echo(f"upload: hf upload YOUR-NAME/{result.out.name} {result.out} .")
