"""The typed parts a run is built from, one per set-up phase, and the :class:`Run` that
holds them for the loop. Each phase (:mod:`doctune.train.setup`, :mod:`doctune.train.inputs`,
:mod:`doctune.train.model`) returns one of these; nothing here does any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from doctune.config import Config, Schedule
from doctune.rundir import RunDir, RunFacts
from doctune.train.dist import DistEnv

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from doctune.data.store import WindowSet
    from doctune.device import Precision
    from doctune.knowledge.mix import MixedWindows
    from doctune.monitor.run import Monitor
    from doctune.quantize import BaseFormat
    from doctune.train.knowledge import KnowledgeSetup


@dataclass(frozen=True)
class Hardware:
    """Where and how the run computes (phase 1)."""

    device: torch.device
    precision: Precision
    attention: str | None
    """The attention kernel the model is built with (doctune's own SDPA on a CPU)."""
    notes: tuple[str, ...] = ()
    """Lines for the header (a crowded CPU)."""


@dataclass(frozen=True)
class Fitted:
    """The configuration this run trains with (phase 2): memory fitted, learning rate filled
    in, accumulation kept across a change in the number of processes, DDP or FSDP chosen."""

    cfg: Config
    env: DistEnv
    memory_budget_mb: float
    """``memory.budget``, or the planner's safe share of the device's memory."""
    notes: tuple[str, ...] = ()


@dataclass
class Inputs:
    """What the model reads (phase 4): the tokenizer and the windows, knowledge mixed in."""

    tokenizer: PreTrainedTokenizerBase
    train: WindowSet | MixedWindows
    val: WindowSet | None
    pad_id: int
    fingerprint: str
    """The token store's fingerprint (and the knowledge mix's, when one is trained): a resume
    checks that the data did not change."""
    knowledge: KnowledgeSetup | None
    """The knowledge mix (``knowledge:`` in the config), or None when nothing is mixed in."""
    prompts: list[str]
    """The prompts of the samples generated at each evaluation."""


@dataclass
class ModelParts:
    """The model (phase 5) and what the loop trains of it."""

    model: PreTrainedModel | PeftModel
    """The language model, a PEFT model for LoRA; on this rank's device."""
    module: torch.nn.Module
    """The model and its loss as one module, wrapped by DDP or FSDP when several
    processes train (:mod:`doctune.train.dist`)."""
    base: str
    """The base an adapter goes on: a hub id or an absolute folder."""
    trainable: int
    total: int
    base_format: BaseFormat
    """How the frozen base weights are stored (fp32, bf16, NF4, int8)."""


@dataclass
class Optim:
    """AdamW, its learning-rate schedule and fp16's gradient scaler (phase 6)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    schedule: Schedule


@dataclass
class Run:
    """Everything the loop takes: the parts, the run folder, the monitor and the facts."""

    cfg: Config
    env: DistEnv
    hw: Hardware
    folder: RunDir
    inputs: Inputs
    model: ModelParts
    optim: Optim
    monitor: Monitor
    facts: RunFacts
    t0: float
    """When the set-up began (``time.perf_counter``), for the time to the first step."""
    memory_budget_mb: float
