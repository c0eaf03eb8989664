"""What happens when you type ``doctune train``: docs folder in, fine-tuned model out.

``train(cfg)`` reads top to bottom: seven set-up phases, each returning a typed part
(:mod:`doctune.train.parts`: hardware, fitted config, run folder, inputs, model, optimizer,
monitor), then ``train_loop`` over optimizer steps with commented sections (micro-steps,
clip/step, log, evaluate/sample, checkpoint) and the final save, then the end of the run
(knowledge evaluation, report, summary; :mod:`doctune.train.finish`). ``step`` counts optimizer updates,
``micro_step`` forward/backward passes over all processes (and is the data position).

Under ``torchrun`` every process runs this same loop on its share of each step
(:mod:`doctune.train.dist`); rank 0 alone writes files.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.config import Config
from doctune.device import release_if_near_budget
from doctune.errors import TrainingError
from doctune.rundir import RunDir
from doctune.train import dist, finish, setup
from doctune.train.batches import (
    BatchOrder,
    collate,
    count_loss_tokens,
    mean_padded_length,
    window_lengths,
)
from doctune.train.checkpoint import (
    TrainState,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
    set_rng_states,
)
from doctune.train.forgetting import fit_adapter_scale
from doctune.train.inputs import load_inputs, silent
from doctune.train.model import build_model
from doctune.train.parts import Run
from doctune.train.speed import CompileTracker, eager
from doctune.train.validation import evaluate_sums, perplexity

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
    from doctune.device import resolve_device
    from doctune.sources import shared_gguf_reading

    env = dist.detect()
    with dist.process_group(env, resolve_device(cfg.train.device)) as device:
        t0 = time.perf_counter()
        folder = RunDir(Path(cfg.train.output_dir).expanduser().resolve())  # the one of this run
        with shared_gguf_reading():  # a GGUF base's header is parsed once for all of these
            hw = setup.hardware(cfg, device)                   # 1. device, precision, attention
            fitted = setup.fit(cfg, env, hw, folder if resume else None)  # 2. memory, DDP/FSDP
            cfg, env = fitted.cfg, fitted.env
            setup.open_run_folder(folder, cfg, env, resume=resume, overwrite=overwrite)  # 3.
            setup.seed_everything(cfg.train.seed)
            say = _say if env.is_main and not quiet else silent
            inputs = load_inputs(cfg, env, folder, resume=resume, say=say)  # 4. tokenizer, windows, mix
            setup.seed_everything(cfg.train.seed)  # model init does not depend on how much data prep drew
            model = build_model(cfg, env, folder, inputs.tokenizer, hw, resume=resume)  # 5.
            optim = setup.make_optimizer(cfg, model.model, hw, train_windows=len(inputs.train),
                                         world=env.world)       # 6. AdamW, schedule, scaler
            monitor = setup.open_monitor(cfg, env, folder, hw, resume=resume, quiet=quiet,
                                         total_steps=optim.schedule.total_steps)  # 7.
            facts = setup.run_facts(cfg, env, folder, hw, inputs, model, optim, resume=resume)
        run = Run(cfg, env, hw, folder, inputs, model, optim, monitor, facts, t0,
                  fitted.memory_budget_mb)
        try:
            monitor.header(setup.header(cfg, env, folder, hw, fitted, inputs, model, optim, facts))
            result = train_loop(run, resume)
            if not result.stopped_early:                       # the end: evaluate, report
                knows = finish.evaluate_knowledge(run)
                _summary(run, result, finish.write_report(run), knows)
            return result
        finally:
            monitor.close()


def _say(text: str) -> None:
    print(text, flush=True)


def _start(run: Run, resume: bool) -> tuple[TrainState, float | None]:
    """The counters to start from (a checkpoint's on resume) and the validation loss before
    training (evaluated and sampled now for a new run; recorded in ``run.json`` on resume)."""
    t, env, mon = run.cfg.train, run.env, run.monitor
    state = TrainState(step=0, micro_step=0, tokens_seen=0, total_steps=run.optim.schedule.total_steps,
                       micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum * env.world,
                       seed=t.seed, data_fingerprint=run.inputs.fingerprint,
                       device=run.hw.device.type, world_size=env.world)
    if not resume:
        val_before = _evaluate(run, 0)
        run.facts.update({"val_loss_before": val_before, "val_ppl_before": _ppl(val_before)})
        _write_facts(run)  # a resumed run reads the starting perplexity back from here
        _sample(run, 0)
        return state, val_before
    o = run.optim
    ckpt = run.folder.latest_checkpoint()
    saved, rng = load_checkpoint(ckpt, model=run.model.model, optimizer=o.optimizer,
                                 scheduler=o.scheduler, scaler=o.scaler)
    for note in check_resumable(saved, state):
        mon.warn(note)
    state = replace(state, step=saved.step, micro_step=saved.micro_step,
                    tokens_seen=saved.tokens_seen)
    set_rng_states(rng)
    mon.message(f"resumed from {ckpt.path} (step {state.step} of {state.total_steps})")
    if state.step >= state.total_steps:
        mon.warn("that checkpoint is already at the last step; saving the final model")
    return state, run.facts.val_loss_before


def train_loop(run: Run, resume: bool) -> RunResult:
    """The optimizer steps from the start (or the checkpoint) to the end, then the final
    evaluation and model; see the module docstring."""
    import torch

    t, env, mon = run.cfg.train, run.env, run.monitor
    model, module, device, prec = run.model.model, run.model.module, run.hw.device, run.hw.precision
    opt, sched, scaler = run.optim.optimizer, run.optim.scheduler, run.optim.scaler
    windows, total_steps = run.inputs.train, run.optim.schedule.total_steps
    lengths, step_windows = window_lengths(windows), t.micro_batch_size * t.grad_accum * env.world
    order = BatchOrder(len(windows), t.micro_batch_size, t.seed,
                       lengths=lengths if t.group_by_length else None, step_windows=step_windows)
    mean_step_tokens = mean_padded_length(lengths, run.cfg.data.block_size) * step_windows
    distilled = getattr(windows, "distilled", None) if getattr(windows, "distill", False) else None
    state, val_before = _start(run, resume)
    chooser, no_choice = _chooser(run)  # the dev questions that choose final/

    # ---- the loop ------------------------------------------------------------------
    flag, stop_signal = _StopFlag(), 0  # stop_signal: one process's (all stop at the same step)
    module.train()
    compiler = CompileTracker(t.compile, device.type, prec.name)
    if (said := compiler.start(model)) is not None:
        mon.message(said)
    t_start = time.perf_counter()
    with _catch_signals(flag):
        while state.step < total_steps and not stop_signal:
            t_step = time.perf_counter()
            # the micro-batches of this step over all processes, collated up front (token ids
            # only): the loss is weighted by the real tokens of the whole step, so 4
            # micro-batches of 1 == 1 micro-batch of 4 == 2 processes x 2 micro-batches of 1.
            # This process trains on micro-batches rank, rank + world, rank + 2 world, ...
            step_micro = [_micro_batch(run, order.indices(state.micro_step + k), distilled)
                          for k in range(t.grad_accum * env.world)]
            step_tokens = sum(count_loss_tokens(labels) for _, labels, _ in step_micro)
            micro = step_micro[env.rank::env.world]
            loss_total = torch.zeros((), device=device)
            input_tokens = 0
            for k, (input_ids, labels, distill) in enumerate(micro):
                input_ids, labels = input_ids.to(device), labels.to(device)
                extra = (distill.to(device),) if distill is not None else ()  # replay_loss kl
                # gradients are averaged over the processes once, after the last micro-step;
                # `* world` undoes the average: the sum is the one-process gradient
                with dist.grad_sync(env, module, last=k == len(micro) - 1):
                    with prec.autocast(device):
                        loss_sum = module(input_ids, labels, *extra)  # (,) summed over the real tokens
                    loss = loss_sum * env.world / max(step_tokens, 1)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_total += loss_sum.detach() / max(step_tokens, 1)
                input_tokens += int(input_ids.numel())
            state.micro_step += len(step_micro)

            # ---- clip, step ----------------------------------------------------------
            train_loss, step_input_tokens = dist.sum_over_ranks(env, float(loss_total), input_tokens)
            if not math.isfinite(train_loss):
                raise TrainingError(_nan_message(state.step + 1, train_loss, run))
            if scaler is not None:
                scaler.unscale_(opt)
            grad_norm = _clip(model, t.max_grad_norm)
            if scaler is None and not math.isfinite(grad_norm):  # (the scaler skips such steps itself)
                raise TrainingError(_nan_message(state.step + 1, grad_norm, run, what="gradient norm"))
            lr = float(sched.get_last_lr()[0])  # the rate this update uses
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            release_if_near_budget(device, run.memory_budget_mb)  # MPS: cache growth on long runs
            state.step += 1
            state.tokens_seen += step_tokens

            # ---- log -----------------------------------------------------------------
            # the slowest process's time (every process decides to compile alike) and any
            # process's stop signal (every process stops after this step)
            step_s, stop = dist.max_over_ranks(env, time.perf_counter() - t_step, flag.signal or 0)
            stop_signal = int(stop)
            if state.step == 1:
                run.facts.time_to_first_step_s = round(time.perf_counter() - run.t0, 3)
            padded = sum(int(ids.numel()) for ids, _, _ in step_micro)  # all ranks' batches
            if (said := compiler.after_step(model, step_s, total_steps - state.step, tokens=padded,
                                            mean_tokens=mean_step_tokens)) is not None:
                mon.message(said)
            if state.step % t.log_every == 0 or state.step == total_steps:
                mon.log_step(state.step, {
                    "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_sec": step_input_tokens / step_s, "step_time_s": step_s,
                    "tokens_seen": float(state.tokens_seen),
                    "epoch": order.epoch_of(state.micro_step)})

            # ---- evaluate, sample, checkpoint ------------------------------------------
            last = state.step == total_steps
            with eager(compiler.compiled):  # no second compile for evaluation and sampling
                if t.eval_every and state.step % t.eval_every == 0 and not last:
                    _evaluate(run, state.step)
                if t.sample_every and state.step % t.sample_every == 0 and not last:
                    _sample(run, state.step)
                if chooser is not None and chooser.due(state.step, total_steps):
                    chooser.check(state.step)
            if (t.save_every and state.step % t.save_every == 0) or last or stop_signal:
                _save_checkpoint(run, state)
    run.facts.update({"train_time_s": round(time.perf_counter() - t_start, 2), **compiler.facts()})

    # ---- the end: stop early on a signal, or evaluate, sample and save the final model ----
    if stop_signal:
        return _stopped(run, state, stop_signal, val_before)
    _final_weights(run, state.step, chooser, no_choice, compiler)
    with eager(compiler.compiled):
        val_after = _evaluate(run, state.step)
        _sample(run, state.step)
    final = finish.save_final(run)
    run.facts.update({"steps": state.step, "tokens_seen": state.tokens_seen,
                      "val_loss_before": val_before, "val_ppl_before": _ppl(val_before),
                      "val_loss_after": val_after, "val_ppl_after": _ppl(val_after)})
    _write_facts(run)
    if (said := compiler.summary()) is not None:
        mon.summary(said)
    return RunResult(run_dir=run.folder.path, final_dir=final, steps=state.step,
                     tokens_seen=state.tokens_seen, val_loss_before=val_before,
                     val_loss_after=val_after)


def _micro_batch(run: Run, indices: list[int], distilled: Callable[[int], bool] | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The windows ``indices`` collated, and which rows are trained towards the base's
    distribution (None: none can be; see :func:`doctune.train.loss.distill_loss`)."""
    import torch

    windows = run.inputs.train
    input_ids, labels = collate([windows[i] for i in indices], run.inputs.pad_id,
                                block_size=run.cfg.data.block_size)
    rows = (torch.tensor([distilled(i) for i in indices], dtype=torch.bool)
            if distilled is not None else None)
    return input_ids, labels, rows if rows is not None and bool(rows.any()) else None


def _chooser(run: Run) -> tuple[Any, str | None]:
    """:func:`doctune.train.choose.make_chooser`, imported when a run gets that far (the
    fact extractor it brings is not needed to start, nor to refuse a start)."""
    from doctune.train.choose import make_chooser

    return make_chooser(run)


def _final_weights(run: Run, step: int, chooser: Any, no_choice: str | None,
                   compiler: CompileTracker) -> None:
    """Put the weights of ``final/`` into the model: the step that answered the dev questions
    best, its adapter within the forgetting budget (``run.json``: why)."""
    run.facts.final_choice = (chooser.restore(step) if chooser is not None else
                              {"step": step, "why": no_choice or "the last step"})
    with eager(compiler.compiled):
        run.facts.adapter_scale = fit_adapter_scale(run)


def _stopped(run: Run, state: TrainState, stop_signal: int, val_before: float | None) -> RunResult:
    """A signal stopped the run: the checkpoint just saved, and how to continue."""
    name = signal.Signals(stop_signal).name
    run.monitor.summary(f"{name} received: saved checkpoint {run.folder.checkpoint(state.step).path}; "
                        f"continue with `doctune train --resume {run.folder.path}`")
    return RunResult(run_dir=run.folder.path, final_dir=None, steps=state.step,
                     tokens_seen=state.tokens_seen, val_loss_before=val_before,
                     val_loss_after=None, stopped_early=True)


def _summary(run: Run, result: RunResult, report: Path | None, knows: list[str]) -> None:
    """The last lines: perplexity before -> after, what the model learnt to answer, where
    the model, metrics and report are."""
    before, after = result.val_loss_before, result.val_loss_after
    if before is not None and after is not None:
        run.monitor.summary(f"validation perplexity: {_ppl(before):.2f} -> {_ppl(after):.2f}")
    for line in knows:
        run.monitor.summary(line)
    choice = run.facts.final_choice or {}
    chosen = (f" (step {choice['step']} of {result.steps}: chosen by {len(choice['checks'])} "
              f"checks on {choice['dev_questions']} dev questions)" if choice.get("checks") else "")
    scaled = run.facts.adapter_scale or {}
    if scaled.get("scale", 1.0) < 1.0:
        chosen += (f"; adapter scaled by {scaled['scale']:.2f} for the "
                   f"{scaled['budget']:.0%} forgetting budget")
    run.monitor.summary(f"final model: {result.final_dir}{chosen}")
    run.monitor.summary(f"metrics:     {run.folder.metrics_file}")
    if report is not None:
        run.monitor.summary(f"report:      {report}")


def _write_facts(run: Run) -> None:
    """``run.json``: what the run was and how it went (rank 0 writes it)."""
    if run.env.is_main:
        run.folder.write_facts(run.facts)


def _ppl(loss: float | None) -> float | None:
    return None if loss is None else perplexity(loss)


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    """The gradient norm, after clipping the gradients to ``max_norm`` (None: no clipping)."""
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = dist.sharded_grad_norm([p.grad for p in params if p.grad is not None])
    if norm is not None:  # FSDP: the norm over every rank's shards
        if max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return float(norm)
    if max_norm is None:
        norms = torch.stack([p.grad.detach().norm(2) for p in params if p.grad is not None])
        return float(norms.norm(2))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _evaluate(run: Run, step: int) -> float | None:
    """Validation loss at ``step``, logged with its perplexity; None without a validation split."""
    from doctune.device import empty_cache

    val = run.inputs.val
    if val is None or len(val) == 0:
        return None
    t, env, hw = run.cfg.train, run.env, run.hw
    with dist.whole_model(env, run.model.module):  # each process takes every world-th batch
        total, count = evaluate_sums(run.model.model, val, batch_size=t.micro_batch_size,
                                     device=hw.device, precision=hw.precision,
                                     pad_id=run.inputs.pad_id, max_batches=t.eval_batches,
                                     fused=t.fused_loss, rank=env.rank, world=env.world)
    summed, tokens = dist.sum_over_ranks(env, total, count)
    loss, n_tok = (summed / tokens if tokens else float("nan")), int(tokens)
    empty_cache(hw.device)
    run.monitor.log_eval(step, {"val_loss": loss, "val_ppl": perplexity(loss), "val_tokens": n_tok})
    return loss


def _sample(run: Run, step: int) -> None:
    """Generate the fixed-seed samples at ``step`` without disturbing the training RNG."""
    env, prompts = run.env, run.inputs.prompts
    # a sharded model generates on every process (each gathers the layers); otherwise rank 0
    if not prompts or (env.parallel != "fsdp" and not env.is_main):
        return
    from doctune.monitor.samples import generate_samples

    # generate_samples forks the RNG itself: training's random stream is left as it was.
    # Under the training's autocast, as the forward it shows: a bf16 base needs it.
    with dist.whole_model(env, run.model.module), run.hw.precision.autocast(run.hw.device):
        samples = generate_samples(run.model.model, run.inputs.tokenizer, prompts,
                                   device=run.hw.device,
                                   max_new_tokens=run.cfg.train.sample_max_new_tokens,
                                   seed=run.cfg.train.seed)
    run.monitor.log_samples(step, samples)


def _save_checkpoint(run: Run, state: TrainState) -> None:
    """Every process gathers a sharded model's full tensors; rank 0 writes them, whole and
    atomic, in the one-process format; the others wait until it has (and fail with it)."""
    env, o, model = run.env, run.optim, run.model.model
    sharded = env.parallel == "fsdp"
    weights = dist.full_state(model, trainable_only=True) if sharded else None
    opt_state = dist.full_optimizer_state(o.optimizer) if sharded else None
    dist.main_first(env, lambda: save_checkpoint(
        run.folder, state, model=model, optimizer=o.optimizer, scheduler=o.scheduler,
        scaler=o.scaler, device=run.hw.device, keep=run.cfg.train.keep_checkpoints,
        weights=weights, optimizer_state=opt_state))


def _nan_message(step: int, value: float, run: Run, what: str = "training loss") -> str:
    ckpts = run.folder.checkpoints()
    keep = (f"The last good checkpoint is {ckpts[-1].path}; it was not overwritten."
            if ckpts else "No checkpoint had been saved yet.")
    return (f"The {what} became {value} at step {step}. Likely causes: a learning rate too "
            f"high for this model (train.lr={run.cfg.train.lr}; try 3x lower or more warm-up), "
            f"fp16 overflow (precision={run.hw.precision.name}; try bf16 or fp32), or no gradient "
            f"clipping (train.max_grad_norm={run.cfg.train.max_grad_norm}). {keep}")
