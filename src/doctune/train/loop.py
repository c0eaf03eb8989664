"""The training loop: docs folder in, fine-tuned model out.

``train(cfg)`` reads top to bottom: set-up (run folder, device, data, model, optimizer),
then one loop over optimizer steps with commented sections (micro-steps, clip/step, log,
evaluate/sample, checkpoint), then the final save. ``step`` counts optimizer updates,
``micro_step`` forward/backward passes (and is the data position).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.config import Config
from doctune.errors import TrainingError
from doctune.train.batches import BatchOrder, collate, count_loss_tokens
from doctune.train.checkpoint import (
    TrainState,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
    set_rng_states,
)
from doctune.train.evaluate import evaluate_loss, perplexity
from doctune.train.loss import causal_lm_loss
from doctune.train.setup import RunSetup, build_run
from doctune.train.speed import CompileTracker, eager

if TYPE_CHECKING:
    import torch


@dataclass
class RunResult:
    """Where a run put things and how it went."""

    run_dir: Path
    final_dir: Path | None
    """The saved model (None when the run stopped early on a signal)."""
    steps: int
    tokens_seen: int
    val_loss_before: float | None
    val_loss_after: float | None
    stopped_early: bool = False


class _StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes the current step, saves, and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum


@contextmanager
def _catch_signals(flag: _StopFlag) -> Iterator[None]:
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def train(cfg: Config, *, resume: bool = False, quiet: bool = False,
          overwrite: bool = False) -> RunResult:
    """Run (or resume) the training described by ``cfg``; see the module docstring.
    ``overwrite`` starts anew in a folder that holds an earlier run (its files are removed)."""

    # ---- set-up: run folder, device, data, model, optimizer ---------------------------
    run = build_run(cfg, resume=resume, quiet=quiet, overwrite=overwrite)
    try:
        return _train(run, resume)
    finally:
        run.monitor.close()


def _train(run: RunSetup, resume: bool) -> RunResult:
    import torch

    cfg = run.cfg
    model, opt, sched, scaler = run.model, run.optimizer, run.scheduler, run.scaler
    device, prec, mon = run.device, run.precision, run.monitor
    t = cfg.train
    order = BatchOrder(len(run.train), t.micro_batch_size, t.seed)
    state = TrainState(step=0, micro_step=0, tokens_seen=0, total_steps=run.total_steps,
                       micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum, seed=t.seed,
                       data_fingerprint=run.data_fingerprint, device=device.type)
    val_before: float | None = None

    if resume:
        ckpt = run.rundir.latest_checkpoint()
        saved, rng = load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, scaler=scaler)
        for note in check_resumable(saved, state):
            mon.warn(note)
        state = replace(state, step=saved.step, micro_step=saved.micro_step,
                        tokens_seen=saved.tokens_seen)
        set_rng_states(rng)
        val_before = run.facts.val_loss_before
        mon.message(f"resumed from {ckpt.path} (step {state.step} of {state.total_steps})")
        if state.step >= run.total_steps:
            mon.warn("that checkpoint is already at the last step; saving the final model")
    else:
        val_before = _evaluate(run, 0)
        run.facts.update({"val_loss_before": val_before, "val_ppl_before": _ppl(val_before)})
        run.write_facts()  # a resumed run reads the starting perplexity back from here
        _sample(run, 0)

    # ---- the loop ------------------------------------------------------------------
    flag = _StopFlag()
    model.train()
    compiler = CompileTracker(t.compile, device.type, prec.name)
    if (said := compiler.start(model)) is not None:
        mon.message(said)
    t_start = time.perf_counter()
    with _catch_signals(flag):
        while state.step < run.total_steps and flag.signal is None:
            t_step = time.perf_counter()
            # micro-batches of this step, collated up front: the loss is weighted by the
            # real tokens of the whole step, so 4 micro-batches of 1 == 1 micro-batch of 4
            micro = [collate([run.train[i] for i in order.indices(state.micro_step + k)], run.pad_id)
                     for k in range(t.grad_accum)]
            step_tokens = sum(count_loss_tokens(labels) for _, labels in micro)
            loss_total = torch.zeros((), device=device)
            input_tokens = 0
            for input_ids, labels in micro:
                input_ids, labels = input_ids.to(device), labels.to(device)
                with prec.autocast(device):
                    loss_sum, _ = causal_lm_loss(model, input_ids, labels, fused=t.fused_loss)
                loss = loss_sum / max(step_tokens, 1)
                (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_total += loss.detach()
                input_tokens += int(input_ids.numel())
                state.micro_step += 1

            # ---- clip, step ----------------------------------------------------------
            train_loss = float(loss_total)
            if not math.isfinite(train_loss):
                raise TrainingError(_nan_message(state.step + 1, train_loss, run))
            if scaler is not None:
                scaler.unscale_(opt)
            grad_norm = _clip(model, t.max_grad_norm)
            if scaler is None and not math.isfinite(grad_norm):  # (the scaler skips such steps itself)
                raise TrainingError(_nan_message(state.step + 1, grad_norm, run, what="gradient norm"))
            lr = sched.get_last_lr()[0]  # the rate this update uses
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += step_tokens

            # ---- log -----------------------------------------------------------------
            step_s = time.perf_counter() - t_step
            if state.step == 1:
                run.facts.time_to_first_step_s = round(time.perf_counter() - run.t0, 3)
            if (said := compiler.after_step(model, step_s, run.total_steps - state.step)) is not None:
                mon.message(said)
            if state.step % t.log_every == 0 or state.step == run.total_steps:
                mon.log_step(state.step, {
                    "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_sec": input_tokens / step_s, "step_time_s": step_s,
                    "tokens_seen": float(state.tokens_seen),
                    "epoch": order.epoch_of(state.micro_step)})

            # ---- evaluate, sample, checkpoint ------------------------------------------
            last = state.step == run.total_steps
            with eager(compiler.compiled):  # no second compile for evaluation and sampling
                if t.eval_every and state.step % t.eval_every == 0 and not last:
                    _evaluate(run, state.step)
                if t.sample_every and state.step % t.sample_every == 0 and not last:
                    _sample(run, state.step)
            if (t.save_every and state.step % t.save_every == 0) or last or flag.signal is not None:
                save_checkpoint(run.rundir, state, model=model, optimizer=opt,
                                scheduler=sched, scaler=scaler, device=device,
                                keep=t.keep_checkpoints)
    train_s = time.perf_counter() - t_start
    run.facts.update(compiler.facts())

    # ---- the end: stop early on a signal, or evaluate, sample and save the final model ----
    if flag.signal is not None:
        name = signal.Signals(flag.signal).name
        mon.summary(f"{name} received: saved checkpoint {run.rundir.checkpoint(state.step).path}; "
                    f"continue with `doctune train --resume {run.rundir.path}`")
        return RunResult(run_dir=run.rundir.path, final_dir=None, steps=state.step,
                         tokens_seen=state.tokens_seen, val_loss_before=val_before,
                         val_loss_after=None, stopped_early=True)
    with eager(compiler.compiled):
        val_after = _evaluate(run, state.step)
        _sample(run, state.step)
    final = run.save_final()
    run.facts.update({"steps": state.step, "tokens_seen": state.tokens_seen,
                      "train_time_s": round(train_s, 2),
                      "val_loss_before": val_before, "val_ppl_before": _ppl(val_before),
                      "val_loss_after": val_after, "val_ppl_after": _ppl(val_after)})
    run.write_facts()
    report = run.write_report()
    lines = [f"final model: {final}", f"metrics:     {run.rundir.metrics_file}"]
    if (said := compiler.summary()) is not None:
        lines.insert(0, said)
    if report is not None:
        lines.append(f"report:      {report}")
    if val_before is not None and val_after is not None:
        lines.insert(0, f"validation perplexity: {_ppl(val_before):.2f} -> {_ppl(val_after):.2f}")
    for line in lines:
        mon.summary(line)
    return RunResult(run_dir=run.rundir.path, final_dir=final, steps=state.step,
                     tokens_seen=state.tokens_seen, val_loss_before=val_before,
                     val_loss_after=val_after)


def _ppl(loss: float | None) -> float | None:
    return None if loss is None else perplexity(loss)


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        norms = torch.stack([p.grad.detach().norm(2) for p in params if p.grad is not None])
        return float(norms.norm(2))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _evaluate(run: RunSetup, step: int) -> float | None:
    """Validation loss at ``step``, logged with its perplexity; None without a validation split."""
    from doctune.device import empty_cache

    if run.val is None or len(run.val) == 0:
        return None
    t = run.cfg.train
    loss, n_tok = evaluate_loss(run.model, run.val, batch_size=t.micro_batch_size, device=run.device,
                                precision=run.precision, pad_id=run.pad_id, max_batches=t.eval_batches,
                                fused=t.fused_loss)
    empty_cache(run.device)
    run.monitor.log_eval(step, {"val_loss": loss, "val_ppl": perplexity(loss), "val_tokens": n_tok})
    return loss


def _sample(run: RunSetup, step: int) -> None:
    """Generate the fixed-seed samples at ``step`` without disturbing the training RNG."""

    if not run.prompts:
        return
    from doctune.monitor.samples import generate_samples

    # generate_samples forks the RNG itself: training's random stream is left as it was
    samples = generate_samples(run.model, run.tokenizer, run.prompts, device=run.device,
                               max_new_tokens=run.cfg.train.sample_max_new_tokens,
                               seed=run.cfg.train.seed)
    run.monitor.log_samples(step, samples)


def _nan_message(step: int, value: float, run: RunSetup, what: str = "training loss") -> str:
    ckpts = run.rundir.checkpoints()
    keep = (f"The last good checkpoint is {ckpts[-1].path}; it was not overwritten."
            if ckpts else "No checkpoint had been saved yet.")
    return (f"The {what} became {value} at step {step}. Likely causes: a learning rate too "
            f"high for this model (train.lr={run.cfg.train.lr}; try 3x lower or more warm-up), "
            f"fp16 overflow (precision={run.precision.name}; try bf16 or fp32), or no gradient "
            f"clipping (train.max_grad_norm={run.cfg.train.max_grad_norm}). {keep}")


