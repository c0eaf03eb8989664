"""Whole, atomic checkpoints and exact resume.

A checkpoint folder ``checkpoints/step-N/`` (its paths: :class:`doctune.rundir.CheckpointDir`) holds:

* ``weights.safetensors`` - the trainable parameters (all of them for a full fine-tune,
  the adapter for LoRA), by parameter name;
* ``optimizer.pt`` - AdamW state; ``trainer.pt`` - scheduler, gradient scaler and the RNG
  states of torch (CPU and devices), numpy and Python;
* ``state.json`` - step, micro-step, tokens seen, written last: a folder without it is
  incomplete and ignored.

Everything is written into ``.tmp-step-N`` first and renamed into place, so a crash
mid-save never touches the last good checkpoint.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from doctune.atomic import fsync_dir, fsync_file
from doctune.config import Config
from doctune.errors import CheckpointError
from doctune.paths import free_bytes, save_failed
from doctune.rundir import CheckpointDir, RunDir

if TYPE_CHECKING:
    import torch

@dataclass
class TrainState:
    """Counters saved with each checkpoint."""

    step: int
    """Optimizer updates done."""
    micro_step: int
    """Forward/backward passes done (= data position)."""
    tokens_seen: int
    """Loss-carrying tokens trained on so far."""
    total_steps: int
    """Planned optimizer updates for the whole run."""
    micro_batch_size: int = 0
    """Windows per micro-batch: with the seed and the windows it fixes the data position."""
    grad_accum: int = 0
    """Micro-batches per optimizer step, over all processes (``train.grad_accum x world``)."""
    seed: int = 0
    data_fingerprint: str = ""
    """Identity of the token store trained on (a resume over other data is refused)."""
    device: str = ""
    """Device type the run trained on (an exact resume needs the same kind of device)."""
    world_size: int = 1
    """Processes that trained together (a resume on another number is close, not exact)."""


RESUME_KEYS = ("micro_batch_size", "grad_accum", "seed", "data_fingerprint")
"""Settings a resumed run must share with its checkpoint to continue exactly."""


def check_resumable(saved: TrainState, now: TrainState) -> list[str]:
    """Raise if ``now`` cannot continue ``saved`` exactly; return warnings for what may differ.

    Batch size, accumulation, seed and data decide which windows come next: a change would
    silently train on other data. A new step count or device is allowed with a warning.
    """
    bad = [f"{k}: checkpoint {getattr(saved, k)!r}, now {getattr(now, k)!r}"
           for k in RESUME_KEYS if getattr(saved, k) and getattr(saved, k) != getattr(now, k)]
    if bad:
        what = "; ".join(bad)
        raise CheckpointError(
            f"This run cannot resume exactly with the current settings ({what}). Resume with the "
            "run's own config.yaml and docs (and the doctune version that started it, if its "
            "study data mixes differently), or start a new run (another `train.output_dir`).")
    notes = []
    if saved.total_steps != now.total_steps:
        notes.append(f"the run now has {now.total_steps} steps instead of {saved.total_steps}: "
                     "the learning-rate schedule is stretched to the new length")
    if saved.device and saved.device != now.device:
        notes.append(f"the checkpoint was trained on {saved.device}, this resume runs on "
                     f"{now.device}: the result will be close to, not identical with, an "
                     "uninterrupted run")
    if saved.world_size != now.world_size:
        notes.append(f"the checkpoint was trained by {saved.world_size} process(es), this resume "
                     f"runs {now.world_size}: the same global batch, but gradients summed in "
                     "another order, so the result will be close to, not identical with, an "
                     "uninterrupted run")
    return notes


def rng_states(device: torch.device) -> dict[str, Any]:
    """Every RNG state a resumed run needs to continue identically."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    # plain lists, so that checkpoints load with torch.load(weights_only=True)
    states: dict[str, Any] = {"python": random.getstate(),
                              "numpy": [kind, np.asarray(keys).tolist(), pos, has_gauss, cached],
                              "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    elif device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved."""
    import numpy as np
    import torch

    from doctune.device import mps_available

    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "mps" in states and mps_available():
        torch.mps.set_rng_state(states["mps"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, on CPU, contiguous (tied weights appear once)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    run: RunDir,
    state: TrainState,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    device: torch.device,
    keep: int,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> CheckpointDir:
    """Write ``checkpoints/step-N`` of ``run`` atomically, then drop all but the ``keep`` newest.

    ``weights`` and ``optimizer_state`` replace what ``model`` and ``optimizer`` hold when the
    caller gathered them already (sharded training: :mod:`doctune.train.dist`)."""
    import torch
    from safetensors.torch import save_file

    final = run.checkpoint(state.step)
    tmp = CheckpointDir(run.checkpoint_staging(state.step))
    weights = weights if weights is not None else trainable_state(model)
    try:
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        run.recover_interrupted_save()
        for leftover in run.checkpoint_leftovers():
            shutil.rmtree(leftover, ignore_errors=True)  # from a save a crash interrupted
        tmp.path.mkdir()
        save_file(weights, str(tmp.weights))
        torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                   tmp.optimizer)
        torch.save({"scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rng_states(device)}, tmp.trainer)
        tmp.state.write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")  # last: completes it
        for f in tmp.path.iterdir():
            fsync_file(f)
        fsync_dir(tmp.path)
        if final.path.exists():  # a re-save of the same step (e.g. signal right after a periodic save)
            old = run.checkpoint_replaced(state.step)
            final.path.rename(old)
            tmp.path.rename(final.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.path.rename(final.path)
        fsync_dir(run.checkpoints_dir)
    except OSError as e:
        shutil.rmtree(tmp.path, ignore_errors=True)
        raise save_failed(e, what=f"checkpoint step-{state.step}", folder=run.checkpoints_dir,
                          needed_bytes=checkpoint_bytes(weights, optimizer), run=run) from None
    for old_ckpt in run.checkpoints()[:-keep]:
        dropped = run.checkpoint_dropped(old_ckpt.step)
        old_ckpt.path.rename(dropped)  # atomic: whole and listed, or out of the list
        shutil.rmtree(dropped, ignore_errors=True)
    return final


def checkpoint_bytes(weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None) -> int:
    """The size of a checkpoint of ``weights``: the weights plus AdamW's two moments for each
    (measured from ``optimizer`` once it has state)."""
    import torch

    w = sum(t.numel() * t.element_size() for t in weights.values())
    state = optimizer.state.values() if optimizer is not None else []
    moments = sum(t.numel() * t.element_size() for st in state for t in st.values()
                  if isinstance(t, torch.Tensor))
    return w + (moments or 2 * sum(t.numel() * 4 for t in weights.values())) + 64 * 1024


def load_checkpoint(
    ckpt: CheckpointDir,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> tuple[TrainState, dict[str, Any]]:
    """Load weights, optimizer, scheduler and scaler state; return the counters and RNG states.

    The caller restores the RNG states (:func:`set_rng_states`) right before training resumes.
    """
    import torch
    from safetensors.torch import load_file

    from doctune.train.dist import like_param, optimizer_state_like

    try:
        state = TrainState(**json.loads(ckpt.state.read_text(encoding="utf-8")))
        weights = load_file(str(ckpt.weights))
        opt_state = torch.load(ckpt.optimizer, map_location="cpu", weights_only=True)
        trainer = torch.load(ckpt.trainer, map_location="cpu", weights_only=True)
    except (OSError, ValueError, TypeError, RuntimeError, KeyError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"Checkpoint {ckpt.path} is unreadable ({e}). Resume from an older "
                              "checkpoint by deleting this folder.") from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(weights):
        missing = sorted(set(params) - set(weights))[:3]
        extra = sorted(set(weights) - set(params))[:3]
        raise CheckpointError(
            f"Checkpoint {ckpt.path} does not match this model (missing {missing}, unexpected {extra}). "
            "Resume with the run's own config.yaml (model and LoRA settings unchanged).")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(like_param(weights[name].to(p.device, p.dtype), p))  # a shard when sharded
    optimizer.load_state_dict(optimizer_state_like(opt_state, optimizer))
    scheduler.load_state_dict(trainer["scheduler"])
    if scaler is not None and trainer.get("scaler"):
        scaler.load_state_dict(trainer["scaler"])
    return state, trainer["rng"]


def space_warning(cfg: Config, folder: RunDir, model: torch.nn.Module) -> list[str]:
    """A warning when the disk cannot hold the checkpoints kept at once plus the final model."""
    from doctune.train.finish import final_bytes

    ckpt = checkpoint_bytes({n: p for n, p in model.named_parameters() if p.requires_grad}, None)
    # one more checkpoint than kept: the newest is written before the oldest is removed
    needed = ckpt * (cfg.train.keep_checkpoints + 1) + final_bytes(model, lora=cfg.lora.enabled)
    free = free_bytes(folder.path)
    if free >= needed:
        return []
    return [f"warning: {folder.path} is on a disk with {free / 1e6:,.0f} MB free, but this run "
            f"needs ~{needed / 1e6:,.0f} MB ({cfg.train.keep_checkpoints} checkpoints kept + 1 "
            f"being written, {ckpt / 1e6:,.0f} MB each, and the final model). Free some space, "
            "lower `train.keep_checkpoints`, or choose another `train.output_dir`."]


def latest_state(folder: RunDir) -> TrainState | None:
    """The counters of the run's newest checkpoint; None when there is none or it cannot be
    read (:func:`load_checkpoint` then says what is wrong with it)."""
    ckpts = folder.checkpoints() if RunDir.is_run(folder.path) else []
    if not ckpts:
        return None
    try:
        return TrainState(**json.loads(ckpts[-1].state.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
