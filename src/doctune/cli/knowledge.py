"""``doctune synth`` (questions, rephrasings and multiple-choice items from the docs) and the
knowledge evaluation behind ``doctune eval --knowledge``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from doctune.cli.app import JsonOpt, app
from doctune.cli.prep import ExcludeOpt, IncludeOpt
from doctune.config import default_of

_DIALECTS = "auto, mdx, markdown, mkdocs or vitepress"


@app.command()
def synth(
    docs: Annotated[Path, typer.Argument(help="Docs folder, or one .md/.mdx/.markdown file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write facts.jsonl, qa.jsonl, mc.jsonl, rephrasings.jsonl and manifest.json into.")],
    seed: Annotated[int, typer.Option(help="Seed of the splits, phrasings and distractors.")] = default_of("data.seed"),
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    dialect: Annotated[str, typer.Option("--dialect", help=f"{_DIALECTS}.")] = default_of("data.dialect"),
    heldout_fraction: Annotated[float, typer.Option(help="Share of facts whose questions are never trained.")] = default_of("knowledge.heldout_fraction"),
    control_fraction: Annotated[float, typer.Option(help="Share of documents left out of training entirely.")] = default_of("knowledge.control_fraction"),
    questions_per_fact: Annotated[int | None, typer.Option(help="Template questions per fact (default 2).", min=1)] = None,
    rephrasings_per_fact: Annotated[int | None, typer.Option(help="Template rephrasings per fact (default 2).", min=0)] = None,
    amplify: Annotated[float, typer.Option(help="Write amplified.jsonl: trained facts restated (frames, lists, Q/A, passages) to about N x the trained docs' tokens; 0 = none.", min=0)] = default_of("knowledge.amplify"),
    amplify_with: Annotated[str, typer.Option(help="What writes the amplified data: templates (offline), teacher (the teacher's study notes per section: explanations, questions, implications, flashcards, scenarios) or both (half each).")] = "templates",
    teacher_url: Annotated[str | None, typer.Option(help="OpenAI-compatible API root of a teacher model, e.g. http://localhost:8080/v1 (llama.cpp server).")] = None,
    teacher_model: Annotated[str | None, typer.Option(help="The model name the teacher server serves.")] = None,
    teacher_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the teacher's API key (default DOCTUNE_TEACHER_API_KEY, then OPENAI_API_KEY).")] = None,
    teacher_workers: Annotated[int | None, typer.Option(help="Sections asked about at the same time (default 4).", min=1)] = None,
    json_: JsonOpt = False,
) -> None:
    """Make knowledge data from the docs: facts, trained and held-out questions with answers,
    multiple-choice items and rephrasings (templates; a teacher model adds its own).

    Example: `doctune synth docs/ --out synth/ && doctune train docs/ --set knowledge.synth_dir=synth --set knowledge.qa_share=0.3`

    Amplified: `doctune synth docs/ --out synth/ --amplify 5` (then a rephrase_share trains it);
    written by a teacher: `--amplify 5 --amplify-with teacher --teacher-url http://localhost:11434/v1 --teacher-model qwen2.5:7b-instruct`.
    """
    import json

    from doctune.errors import ConfigError
    from doctune.knowledge.synth import format_summary, synthesize

    teacher = _teacher(teacher_url, teacher_model, teacher_key_env, teacher_workers)
    if teacher is None and teacher_model is not None:
        raise ConfigError("--teacher-model needs --teacher-url (the server that serves it).")
    extra: dict[str, Any] = {}
    if questions_per_fact is not None:
        extra["questions_per_fact"] = questions_per_fact
    if rephrasings_per_fact is not None:
        extra["rephrasings_per_fact"] = rephrasings_per_fact
    with _progress(show=teacher is not None and not json_) as progress:
        summary = synthesize(docs, out, seed=seed, teacher=teacher, include=tuple(include or ()),
                             exclude=tuple(exclude or ()), dialect=dialect,
                             heldout_fraction=heldout_fraction,
                             control_fraction=control_fraction, amplify=amplify,
                             amplify_with=amplify_with, progress=progress, **extra)
    if json_:
        typer.echo(json.dumps(summary.to_dict(), indent=1, ensure_ascii=False))
    else:
        typer.echo(format_summary(summary))


def _teacher(url: str | None, model: str | None, key_env: str | None,
             workers: int | None) -> Any:
    from doctune.errors import ConfigError
    from doctune.knowledge.teacher import TeacherConfig

    if url is None:
        return None
    if not model:
        raise ConfigError("--teacher-url needs --teacher-model, the name the server serves "
                          "(e.g. `--teacher-model qwen2.5-7b-instruct`).")
    kwargs: dict[str, Any] = {}
    if key_env:
        kwargs["api_key_env"] = key_env
    if workers:
        kwargs["max_workers"] = workers
    config = TeacherConfig(url, model, **kwargs)
    config.check()
    return config


class _progress:
    """A rich progress bar over the teacher's sections (a no-op callback when hidden)."""

    def __init__(self, *, show: bool) -> None:
        self.show = show
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress("teacher", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            transient=True)
        self.bar.start()
        self.task = self.bar.add_task("sections", total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def knowledge_eval(model: str, *, synth_dir: Path | None, device: str,
                   max_questions: int | None, json_: bool,
                   questions: Path | None = None) -> None:
    """``doctune eval RUN --knowledge``: base vs tuned, printed as a table or JSON, and saved
    in the run folder."""
    import json

    from rich.console import Console

    from doctune.errors import ConfigError
    from doctune.knowledge.exam import evaluate_run, save_result
    from doctune.knowledge.exam_table import knowledge_table
    from doctune.rundir import RunDir

    if not RunDir.is_run(model):
        raise ConfigError(f"--knowledge compares a run with its base: pass a run folder (the "
                          f"`--out` of `doctune train`), got {model!r}.")
    from doctune.knowledge.exam import MAX_QUESTIONS

    result = evaluate_run(model, device=device, synth_dir=synth_dir, questions=questions,
                          max_questions=max_questions or MAX_QUESTIONS)
    save_result(RunDir.open(model), result)
    result.pop("answers", None)  # in knowledge_answers.jsonl
    if json_:
        typer.echo(json.dumps(result, indent=1))
        return
    Console().print(knowledge_table(result))
