"""The run folder: the contract between ``doctune train`` and everything that reads a run.

A run folder holds::

    config.yaml          the resolved configuration (``--resume`` reads it back)
    run.json             the run's facts (:class:`RunFacts`): model, base, sizes, results
    data_summary.json    what ``prepare`` found in the docs
    metrics.jsonl        one JSON line per logged step and evaluation
    samples.jsonl        generation samples; samples.md shows them as Markdown
    report.html, plots/  the report and its PNG plots
    tensorboard/         TensorBoard event files
    data/                the token store (unless ``data.cache_dir`` puts it elsewhere)
    knowledge/           questions, rephrasings and facts made from the docs (``knowledge.auto``)
    knowledge_eval.json  base vs tuned knowledge scores (``doctune eval --knowledge``, the report)
    knowledge_answers.jsonl  each exam question with the base, open-book and tuned answers
    replay.jsonl         the base model's answers to general prompts, replayed in training
    selfstudy.jsonl      the base model's open-book answers to the trained questions (self-study)
    tokenizer/           the tokenizer trained for a from-scratch preset
    base/                the random base of a from-scratch LoRA run
    checkpoints/step-N/  weights.safetensors, optimizer.pt, trainer.pt, state.json (last)
    best/                the trainable weights of the step that answered the dev questions best
    final/               the finished model: a transformers folder or a LoRA adapter

:class:`RunDir` is the only module that knows these names. Commands resolve a folder into
one ``RunDir`` and pass it down; it reads ``config.yaml`` and ``run.json`` at most once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from doctune.atomic import TMP_GLOB, write_text
from doctune.config import Config, dump_config, load_config
from doctune.errors import CheckpointError, ConfigError

RUN_FORMAT = 1
"""Version of the run folder's layout and of ``run.json``. 0 is a run written before it was
recorded (same layout); a higher number than this is a run from a newer doctune."""


class RunFacts(BaseModel):
    """What a run was and how it went: ``run.json``. Every field is optional, since a run
    that stopped early has only some of them; keys a newer doctune adds are kept."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    format: int = RUN_FORMAT
    """Layout version (:data:`RUN_FORMAT`)."""
    model_name: str | None = None
    """``model.name`` as configured (hub id, folder or preset)."""
    base_model: str | None = None
    """The base an adapter goes on: a hub id or an absolute folder."""
    lora: bool | None = None
    device: str | None = None
    precision: str | None = None
    params_total: int | None = None
    params_trainable: int | None = None
    total_steps: int | None = None
    train_windows: int | None = None
    val_windows: int | None = None
    val_loss_before: float | None = None
    val_ppl_before: float | None = None
    val_loss_after: float | None = None
    val_ppl_after: float | None = None
    steps: int | None = None
    """Optimizer steps done when the final model was saved."""
    tokens_seen: int | None = None
    time_to_first_step_s: float | None = None
    train_time_s: float | None = None
    processes: int | None = None
    """Processes that trained together (``torchrun``); 1 without it."""
    parallel: str | None = None
    """``ddp`` or ``fsdp`` with several processes, ``none`` with one."""
    compile: str | None = None
    """``train.compile`` setting; ``compiled`` says whether the blocks were compiled."""
    compiled: bool | None = None
    compile_reason: str | None = None
    compile_s: float | None = None
    compiled_step_s: float | None = None
    """Median compiled step, scaled to the run's mean step (by input tokens)."""
    eager_step_s: float | None = None
    """The last eager step before compiling, scaled the same way."""
    source_gguf: str | None = None
    """The GGUF file the weights were loaded from (dequantised), when the run started from one."""
    gguf_architecture: str | None = None
    gguf_file_type: str | None = None
    """The GGUF's quantisation, e.g. ``Q4_1``."""
    quantized: bool | None = None
    """True when the starting weights were stored quantised (so they are an approximation)."""
    quant_types: dict[str, int] | None = None
    knowledge: dict[str, Any] | None = None
    """The knowledge mix: shares, examples per pass, distinct examples, what was left out."""
    final_choice: dict[str, Any] | None = None
    """Which step's weights ``final/`` holds and why: the dev split's facts, questions and
    checks (:mod:`doctune.train.choose`), or why the last step is final."""
    adapter_scale: dict[str, Any] | None = None
    """``knowledge.forgetting_budget``: the share of the adapter ``final/`` keeps, the
    general-text perplexities that chose it, and why (:mod:`doctune.train.forgetting`)."""

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several facts at once (each one checked against its type)."""
        for key, value in values.items():
            setattr(self, key, value)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the facts that are known (newer keys kept)."""
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True)
class CheckpointDir:
    """One checkpoint folder, ``checkpoints/step-N/``, and the files in it."""

    path: Path

    @property
    def step(self) -> int:
        return int(self.path.name.removeprefix("step-"))

    @property
    def weights(self) -> Path:
        """The trainable parameters (safetensors)."""
        return self.path / "weights.safetensors"

    @property
    def optimizer(self) -> Path:
        return self.path / "optimizer.pt"

    @property
    def trainer(self) -> Path:
        """Scheduler, gradient scaler and RNG states."""
        return self.path / "trainer.pt"

    @property
    def state(self) -> Path:
        """The counters, written last: a folder without it is incomplete."""
        return self.path / "state.json"

    @staticmethod
    def is_checkpoint(path: Path) -> bool:
        """True for a folder holding a complete checkpoint."""
        c = CheckpointDir(path)
        return c.state.is_file() and c.weights.is_file()


class RunDir:
    """A run folder: its paths, its config and facts (read once), checkpoints, final model."""

    def __init__(self, path: str | Path) -> None:
        p = self.path = Path(path)
        self.config_file = p / "config.yaml"
        self.facts_file = p / "run.json"
        self.data_summary_file = p / "data_summary.json"
        self.metrics_file = p / "metrics.jsonl"
        self.samples_file = p / "samples.jsonl"
        self.samples_md = p / "samples.md"
        self.report_file = p / "report.html"
        self.plots_dir = p / "plots"
        self.tensorboard_dir = p / "tensorboard"
        self.data_dir = p / "data"
        """The token store's default place (``data.cache_dir`` unset)."""
        self.knowledge_dir = p / "knowledge"
        """``doctune synth`` output made for this run (``knowledge.auto``)."""
        self.knowledge_eval_file = p / "knowledge_eval.json"
        """Base vs tuned knowledge scores, as ``doctune eval --knowledge --json`` prints them."""
        self.knowledge_answers_file = p / "knowledge_answers.jsonl"
        """One line per question of the knowledge exam: expected, base, open-book and tuned answers."""
        self.replay_file = p / "replay.jsonl"
        """The base model's answers to general prompts (``knowledge.replay_source: self``)."""
        self.selfstudy_file = p / "selfstudy.jsonl"
        """The base model's open-book answers to the trained questions (``knowledge.self_study``)."""
        self.tokenizer_dir = p / "tokenizer"
        """The tokenizer trained for a from-scratch preset."""
        self.base_dir = p / "base"
        """The random base model of a from-scratch LoRA run."""
        self.checkpoints_dir = p / "checkpoints"
        self.final_dir = p / "final"
        self.best_dir = p / "best"
        """The best dev check's trainable weights (:mod:`doctune.train.choose`)."""
        self.final_staging = p / ".tmp-final"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ---- opening ---------------------------------------------------------------------
    @staticmethod
    def is_run(path: str | Path) -> bool:
        """True for a doctune run folder (it holds ``config.yaml``)."""
        return RunDir(path).config_file.is_file()

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run folder (absolute), or a :class:`CheckpointError` that says what to pass."""
        run = cls(Path(path).expanduser().resolve())
        run.require_run()
        return run

    def require_run(self) -> None:
        """A :class:`CheckpointError` that says what to pass unless this folder holds a run
        that this doctune can read."""
        if not self.is_run(self.path):
            raise CheckpointError(f"{self.path} is not a doctune run folder (no config.yaml in "
                                  "it). Pass the folder a previous `doctune train` wrote (its `--out`).")
        self.facts  # noqa: B018 (a run from a newer doctune is refused here, before any work)

    def check_new(self, *, overwrite: bool = False) -> None:
        """Refuse to start a new run where it would mix with other files: a file, a folder
        holding another run (unless ``overwrite``: then that run's files are removed), or a
        folder holding files that are not a run's."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise ConfigError(f"The run folder {p} is a file. Choose another "
                              "`train.output_dir` (e.g. `--out runs/mydocs`).")
        if not p.is_dir():
            return
        ours = self.run_files()
        if ours and overwrite:
            self.clear()
        elif self.checkpoints() or self.final_dir.exists():
            raise ConfigError(f"{p} already holds a run. Continue it with `doctune train "
                              f"--resume {p}`, start it anew with `--overwrite`, or choose "
                              "another `train.output_dir` (e.g. `--out runs/new`).")
        elif ours:
            raise ConfigError(f"{p} holds the files of a run that saved no checkpoint "
                              f"({', '.join(sorted(f.name for f in ours)[:4])}). Start it anew "
                              "with `--overwrite`, or choose another `train.output_dir`.")
        others = sorted(f.name for f in p.iterdir() if f not in self._layout())
        if others:
            raise ConfigError(f"The run folder {p} holds files that are not a doctune run's "
                              f"({', '.join(others[:4])}{', ...' if len(others) > 4 else ''}). "
                              "A run goes into a new or empty folder: choose another "
                              "`train.output_dir` (e.g. `--out runs/mydocs`).")

    def _layout(self) -> set[Path]:
        """Every top-level path a run writes (the token store included)."""
        return {self.config_file, self.facts_file, self.data_summary_file, self.metrics_file,
                self.samples_file, self.samples_md, self.report_file, self.plots_dir,
                self.tensorboard_dir, self.data_dir, self.knowledge_dir,
                self.knowledge_eval_file, self.knowledge_answers_file, self.replay_file, self.selfstudy_file,
                self.tokenizer_dir, self.base_dir,
                self.checkpoints_dir, self.final_dir, self.final_staging, self.best_dir,
                self.path / "wandb",  # what W&B writes when given the run folder
                *self.path.glob(TMP_GLOB)}

    def run_files(self) -> list[Path]:
        """The run's own files and folders present here (the reusable token store left out)."""
        return [p for p in self._layout() if p.exists() and p != self.data_dir]

    def clear(self) -> None:
        """Remove the files of the run held here, and nothing else (the token store stays:
        it is a cache that the next run reuses)."""
        import shutil

        for p in self.run_files():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        self.__dict__.pop("facts", None)
        self.__dict__.pop("_config", None)

    # ---- config and facts ------------------------------------------------------------
    def config(self, overrides: list[str] | None = None, extra: dict[str, Any] | None = None) -> Config:
        """The configuration the run was trained with; ``overrides``/``extra`` as in
        :func:`doctune.config.load_config`. Parsed once for a plain read."""
        if overrides or extra:
            return load_config(self.config_file, overrides, extra)
        return self._config

    @cached_property
    def _config(self) -> Config:
        return load_config(self.config_file)

    def write_config(self, cfg: Config) -> None:
        """Save ``cfg`` as ``config.yaml`` (atomically); later reads return it."""
        write_text(self.config_file, dump_config(cfg))
        self.__dict__["_config"] = cfg

    @cached_property
    def facts(self) -> RunFacts:
        """``run.json`` (empty facts when the run never wrote it)."""
        p = self.facts_file
        if not p.is_file():
            return RunFacts()
        data = read_json_object(p)
        version = data.get("format", 0)
        if not isinstance(version, int) or version > RUN_FORMAT:
            raise CheckpointError(f"{p} has format {version!r}, written by a newer doctune than "
                                  f"this one (which reads format {RUN_FORMAT} and older). "
                                  "Upgrade doctune: `pip install -U doctune`.")
        data["format"] = version
        try:
            return RunFacts.model_validate(data)
        except ValidationError as e:
            raise CheckpointError(f"{p} does not hold valid run facts ({e.errors()[0]['msg']} at "
                                  f"{'.'.join(map(str, e.errors()[0]['loc']))}). Was it edited "
                                  "by hand? Restore it, or delete it to open the run without "
                                  "its recorded results.") from None

    def write_facts(self, facts: RunFacts | None = None) -> None:
        """Save ``facts`` (default: the ones held) as ``run.json``, atomically."""
        if facts is not None:
            self.__dict__["facts"] = facts
        write_text(self.facts_file, json.dumps(self.facts.to_json(), indent=1))

    def knowledge_eval(self) -> dict[str, Any] | None:
        """``knowledge_eval.json``, or None when the run has none (or it cannot be read)."""
        try:
            return read_json_object(self.knowledge_eval_file) if self.knowledge_eval_file.is_file() else None
        except CheckpointError:
            return None

    def write_knowledge_eval(self, result: dict[str, Any]) -> None:
        write_text(self.knowledge_eval_file, json.dumps(result, indent=1))

    def data_summary(self) -> dict[str, Any]:
        """``data_summary.json`` (empty when absent or unreadable: it is informative only)."""
        try:
            data = read_json_object(self.data_summary_file) if self.data_summary_file.is_file() else {}
        except CheckpointError:
            return {}
        return data

    def write_data_summary(self, summary: dict[str, Any]) -> None:
        write_text(self.data_summary_file, json.dumps(summary, indent=1, default=str))

    def token_store(self, cache_dir: Path | None) -> Path:
        """Where this run's token store lives: ``data.cache_dir`` when set, else ``data/``."""
        return Path(cache_dir) if cache_dir is not None else self.data_dir

    # ---- checkpoints and the final model -----------------------------------------------
    def checkpoint(self, step: int) -> CheckpointDir:
        """Where the checkpoint of ``step`` lives (it may not exist yet)."""
        return CheckpointDir(self.checkpoints_dir / f"step-{step}")

    def checkpoint_staging(self, step: int) -> Path:
        """Where a checkpoint is written before it is renamed into place."""
        return self.checkpoints_dir / f".tmp-step-{step}"

    def checkpoint_replaced(self, step: int) -> Path:
        """Where a checkpoint being re-saved for the same step waits until the new one is in place."""
        return self.checkpoints_dir / f".old-step-{step}"

    def recover_interrupted_save(self) -> None:
        """Put back a checkpoint whose re-save a crash cut between its two renames (the old
        copy was moved aside and the new one not yet moved in)."""
        if not self.checkpoints_dir.is_dir():
            return
        for old in self.checkpoints_dir.glob(".old-step-*"):
            step = old.name.removeprefix(".old-step-")
            if step.isdigit() and not self.checkpoint(int(step)).path.exists() and CheckpointDir(old).state.is_file():
                old.rename(self.checkpoint(int(step)).path)

    def checkpoint_dropped(self, step: int) -> Path:
        """Where an old checkpoint is moved (atomically) before it is deleted, so that a kill
        during the deletion never leaves a half-deleted ``step-N`` behind."""
        return self.checkpoints_dir / f".drop-step-{step}"

    def checkpoint_leftovers(self) -> list[Path]:
        """What interrupted saves and deletions left: staging folders, checkpoints moved aside,
        and ``step-N`` folders without their state file (a copy or deletion cut short)."""
        root = self.checkpoints_dir
        if not root.is_dir():
            return []
        incomplete = [d for d in root.glob("step-*") if d.is_dir() and d.name[5:].isdigit()
                      and not CheckpointDir(d).state.is_file()]
        return sorted([*root.glob(".tmp-step-*"), *root.glob(".old-step-*"), *root.glob(".drop-step-*"),
                       *incomplete])

    def checkpoints(self) -> list[CheckpointDir]:
        """Complete checkpoints (those with their state file), oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for d in self.checkpoints_dir.iterdir():
            name = d.name.removeprefix("step-")
            if d.is_dir() and d.name.startswith("step-") and name.isdigit() and CheckpointDir(d).state.is_file():
                found.append(CheckpointDir(d))
        return sorted(found, key=lambda c: c.step)

    def latest_checkpoint(self) -> CheckpointDir:
        """The newest complete checkpoint; a clear error when there is none."""
        ckpts = self.checkpoints()
        if not ckpts:
            raise CheckpointError(
                f"{self.path} has no complete checkpoint to resume from (looked in "
                f"{self.checkpoints_dir}). Start a new run without --resume, or pass the run "
                "folder that holds checkpoints/step-N/.")
        return ckpts[-1]

    def has_final(self) -> bool:
        return self.final_dir.is_dir()

    def final_is_adapter(self) -> bool:
        """True when ``final/`` holds a LoRA adapter rather than a whole model."""
        return (self.final_dir / "adapter_config.json").is_file()

    def require_final(self) -> Path:
        """``final/``, or a :class:`CheckpointError` saying how to finish or what to use instead."""
        if self.has_final():
            return self.final_dir
        ckpts = self.checkpoints()
        latest = f" The latest checkpoint is {ckpts[-1].path}." if ckpts else " It has no checkpoint either."
        raise CheckpointError(
            f"{self.path} has no final model (no `final/` folder): training did not finish. "
            f"Resume it with `doctune train --resume {self.path}`, or use a checkpoint folder "
            f"instead of the run folder.{latest}")

    def base_model(self) -> str:
        """The model the run started from: its saved ``base/``, else the recorded base, else
        ``model.name``."""
        if (self.base_dir / "config.json").is_file():
            return str(self.base_dir.resolve())
        return self.facts.base_model or self.config().model.name


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; a :class:`CheckpointError` that says so otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON ({e}). Is the folder complete?") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    return data
