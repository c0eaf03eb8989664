"""The end of a run: the final model (``final/``), the knowledge evaluation and the report.

Every rank calls :func:`save_final` (a sharded model is gathered first); rank 0 writes.
The evaluation and the report are rank 0's and never lose a finished run: a failure is
a warning.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.paths import save_failed
from doctune.train import dist
from doctune.train.parts import Run

if TYPE_CHECKING:
    import torch


def save_final(run: Run) -> Path:
    """Write ``final/``: a transformers model folder, or a PEFT adapter, with the tokenizer,
    staged under another name and renamed into place."""
    model = run.model.model
    # the whole state dict, gathered, when sharded (FSDP); the model holds it otherwise
    state = dist.full_state(model, trainable_only=False) if run.env.parallel == "fsdp" else None
    dist.main_first(run.env, lambda: _write_final(run, state))
    return run.folder.final_dir


def _write_final(run: Run, state: dict[str, Any] | None) -> None:
    folder, model, lora = run.folder, run.model.model, run.cfg.lora.enabled
    final, tmp = folder.final_dir, folder.final_staging
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        # PEFT saves the adapter; transformers the whole model
        if state is not None:
            model.save_pretrained(str(tmp), state_dict=state)
        else:
            model.save_pretrained(str(tmp))
        run.inputs.tokenizer.save_pretrained(tmp)
        if lora and run.facts.base_model:
            _point_adapter_at_base(tmp, run.facts.base_model)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise save_failed(e, what="the final model", folder=folder.path,
                          needed_bytes=final_bytes(model, lora=lora), run=folder) from None


def final_bytes(model: torch.nn.Module, *, lora: bool) -> int:
    """The size of ``final/``: the adapter for LoRA, else every weight."""
    params = [p for p in model.parameters() if p.requires_grad or not lora]
    return sum(p.numel() * p.element_size() for p in params) + 16 * 2**20  # + tokenizer files


def _point_adapter_at_base(adapter_dir: Path, base: str) -> None:
    cfg_path = adapter_dir / "adapter_config.json"
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base
    cfg_path.write_text(json.dumps(data, indent=2), encoding="utf-8")


END_OF_RUN_QUESTIONS = 60
"""Questions of each kind the run's own evaluation asks (``doctune eval --knowledge`` asks up
to 200): a few minutes at most on a CPU, for a first answer."""
END_OF_RUN_TRAINED = 20
"""Of them, generated questions of trained facts: enough to see that training took (each is
asked of the base, the open book and the tuned model, and their greedy answers were most of
the evaluation's time: 64 of the quickstart's 96 s at 60)."""


def evaluate_knowledge(run: Run) -> list[str]:
    """When the run trained questions and writes a report: base vs tuned knowledge scores
    into ``knowledge_eval.json`` and ``knowledge_answers.jsonl`` (rank 0; what ``doctune
    eval --knowledge`` computes, of the model in memory: see :func:`trained_model`). In
    fp32 the numbers are those of ``final/`` loaded again; in bf16 a greedy answer can take
    another word where two were nearly tied (the quickstart: 18 of 26 answers the same
    letter for letter, one more trained question right from memory than from disk).
    Returns the summary's lines about it (none otherwise)."""
    k = run.inputs.knowledge
    if k is None or not k.trains_qa or not run.cfg.log.report or not run.env.is_main:
        return []
    from doctune.knowledge.exam import evaluate_run, save_result
    from doctune.knowledge.exam_table import headline

    try:
        run.monitor.message("scoring what the model learnt (base vs tuned, held-out questions) ...")
        with trained_model(run) as loaded:
            result = evaluate_run(run.folder.path, device=run.hw.device.type,
                                  max_questions=END_OF_RUN_QUESTIONS, templates=False,
                                  max_trained=END_OF_RUN_TRAINED, loaded=loaded)
        save_result(run.folder, result)
        return headline(result)
    except Exception as e:  # an evaluation failure must never lose a finished run
        run.monitor.warn(f"could not evaluate what the model knows: {e}; run "
                         f"`doctune eval {run.folder.path} --knowledge` to try again")
        return []


@contextlib.contextmanager
def trained_model(run: Run) -> Iterator[Any]:
    """The trained model as ``final/`` holds it, for the end-of-run evaluation: the model in
    memory (its weights are those just saved: the chosen step's, the adapter scaled), in eval
    mode, under the run's autocast, without gradients, compiled blocks run eagerly; back in
    training mode afterwards. Loading ``final/`` again cost the quickstart 7 s (its scoring
    44 s, 37 s in memory: a GGUF base dequantised anew) and, while the trained model is still
    held, a second copy of it (peak RSS 3.23 GB, 2.96 GB in memory). None
    for a sharded model (FSDP), which rank 0 does not hold whole: ``final/`` is loaded."""
    if run.env.parallel == "fsdp":
        yield None
        return
    import torch

    from doctune.inference import Loaded, resolve_source
    from doctune.train.speed import eager

    model = run.model.model
    dtype = run.hw.precision.autocast_dtype or torch.float32
    was_training = model.training
    model.eval()
    try:
        with eager(bool(run.facts.compiled)), run.hw.precision.autocast(run.hw.device), \
                torch.no_grad():
            yield Loaded(model, run.inputs.tokenizer, resolve_source(run.folder.path),
                         run.hw.device, dtype)
    finally:
        model.train(was_training)


def write_report(run: Run) -> Path | None:
    """``report.html`` with its plots (rank 0; None when off or it could not be written)."""
    from doctune.monitor.report import write_report as write_html

    if not run.cfg.log.report or not run.env.is_main:
        return None
    try:
        return write_html(run.folder)
    except Exception as e:  # a report failure must never lose a finished run
        run.monitor.warn(f"could not write the report: {e}")
        return None
