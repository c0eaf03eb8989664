"""Several processes through ``torch.distributed``: data-parallel (DDP) or fully sharded (FSDP2).

``torchrun`` (and ``srun torchrun``, Ray Train's TorchTrainer) starts one process per device
and tells each its place in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. doctune reads them
here and does no communication of its own beyond a few small collectives: the gradient
reduction is DDP's or FSDP's.

The rules that keep N processes exactly equal to one:

* the global batch is ``micro_batch_size x grad_accum x world``: every rank knows the whole
  step (the data order is a pure function of the position), trains on every world-th
  micro-batch of it and normalises its loss by the loss tokens of the *whole* step, times
  ``world``, so that the averaged gradient is the one-process gradient;
* gradients are reduced on the last micro-step of an accumulation only;
* one module (:class:`~doctune.train.loss.LossModule`) computes the loss in its ``forward``: the fused loss calls
  the backbone directly, which would bypass a DDP/FSDP wrapper of the language model;
* rank 0 alone writes files; checkpoints hold full tensors (gathered here), so a run can
  resume on another number of processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as td

from doctune.errors import ConfigError, DoctuneError
from doctune.train.loss import LossModule

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place among the processes of a run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    parallel: str = "none"
    """``none`` (one process), ``ddp`` or ``fsdp``."""

    @property
    def active(self) -> bool:
        """True when several processes train together."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def detect() -> DistEnv:
    """The launch as the environment describes it: torchrun's variables, or a process group
    that a launcher (Ray Train) already initialised. One process when neither is there."""
    if td.is_available() and td.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistEnv(rank=td.get_rank(), world=td.get_world_size(), local_rank=local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    try:
        return DistEnv(rank=int(os.environ["RANK"]), world=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    except KeyError:
        raise ConfigError(f"WORLD_SIZE={world} is set but RANK is not: start several processes "
                          "with `torchrun --nproc_per_node N -m doctune train ...`.") from None


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[torch.device]:
    """Join the process group for ``env`` (NCCL on CUDA, gloo on CPU) and yield this rank's
    device; leave it afterwards if it was joined here. A no-op for one process."""
    if not env.active:
        yield device
        return
    if device.type == "mps":
        raise ConfigError("Several processes were started, but Apple's MPS has no backend for "
                          "collective communication. Run one process on a Mac (`doctune train "
                          "...` without torchrun), or use CUDA GPUs or `--set train.device=cpu`.")
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    created = not td.is_initialized()
    if created:
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                              device_id=device if device.type == "cuda" else None)
    together = False
    try:
        yield device
        together = True
    except BaseException as e:
        together = bool(getattr(e, "every_rank", False))
        raise
    finally:
        if created:
            leave(together=together)


def leave(*, together: bool) -> None:
    """Destroy the process group, after a barrier when every rank ends here together (a
    finished run, or an error that :func:`main_first` raised on every rank): no rank may
    close its connections while another still reads from them, or that one's collective
    fails and its process aborts at exit. After a rank-local failure there is no barrier
    (the others may be gone); torchrun stops the rest."""
    if not td.is_initialized():
        return
    if together:
        with contextlib.suppress(RuntimeError):  # a peer that died anyway: leave regardless
            td.barrier()
    td.destroy_process_group()


# ---- small collectives -------------------------------------------------------------------


def barrier(env: DistEnv) -> None:
    """Wait for every rank (a no-op for one process)."""
    if env.active:
        td.barrier()


def broadcast(env: DistEnv, obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled)."""
    if not env.active:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def main_first(env: DistEnv, work: Callable[[], T]) -> T | None:
    """Run ``work`` on rank 0 while the others wait; its result on rank 0, None elsewhere.

    A doctune error on rank 0 is raised on every rank (instead of leaving the others
    waiting at a barrier until it times out).
    """
    if not env.active:
        return work()
    result: T | None = None
    failure: tuple[type[DoctuneError], str, int] | None = None
    if env.is_main:
        try:
            result = work()
        except DoctuneError as e:
            failure = (type(e), str(e), e.exit_code)
    failure = broadcast(env, failure)
    if failure is not None:
        kind, message, code = failure
        error = kind(message if env.is_main else f"(rank 0 failed) {message}")
        error.exit_code, error.every_rank = code, True  # printed once, by rank 0 (cli/app.py)
        raise error
    return result


def sum_over_ranks(env: DistEnv, *values: float) -> list[float]:
    """Each value summed over the ranks, in float64 (loss shares, token counts)."""
    return _all_reduce(env, values, td.ReduceOp.SUM)


def max_over_ranks(env: DistEnv, *values: float) -> list[float]:
    """Each value's maximum over the ranks (step time, a received stop signal)."""
    return _all_reduce(env, values, td.ReduceOp.MAX)


def _all_reduce(env: DistEnv, values: tuple[float, ...], op: Any) -> list[float]:
    if not env.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if td.get_backend() == "nccl":  # NCCL reduces device tensors only
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    td.all_reduce(t, op=op)
    return [float(v) for v in t.tolist()]


# ---- the choice of DDP or FSDP -----------------------------------------------------------


def choose_parallel(setting: str, *, fits_one_device: Callable[[], bool]) -> str:
    """``train.parallel`` -> ``ddp`` or ``fsdp``: ``auto`` replicates the model (DDP) unless
    the memory planner says one device cannot hold it with its gradients and optimizer."""
    if setting in {"ddp", "fsdp"}:
        return setting
    return "ddp" if fits_one_device() else "fsdp"


# ---- the module the ranks train ----------------------------------------------------------


def wrap(env: DistEnv, model: torch.nn.Module, *, fused: bool,
         device: torch.device) -> torch.nn.Module:
    """The module the loop trains: the loss module, replicated (DDP) or sharded (FSDP2)
    across the ranks. Build the optimizer after this (FSDP replaces the parameters)."""
    module = LossModule(model, fused=fused)
    if env.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    if env.parallel == "fsdp":
        return _fully_shard(module, model, device)
    return module


def _fully_shard(module: torch.nn.Module, model: torch.nn.Module,
                 device: torch.device) -> torch.nn.Module:
    """Shard each transformer block, then the rest (embeddings, final norm, output layer)
    as one group on the loss module: GPT-2's output layer *is* its input embedding, so
    the two must sit in one group."""
    from torch.distributed.device_mesh import init_device_mesh

    from doctune.modeling import transformer_blocks

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError(f"`train.parallel: fsdp` needs FSDP2 (PyTorch 2.6 or newer); this is "
                          f"PyTorch {torch.__version__}. Upgrade PyTorch, or use "
                          "`--set train.parallel=ddp`.") from None

    _one_dtype(model)
    mesh = init_device_mesh(device.type, (td.get_world_size(),))
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    sharded = fully_shard(module, mesh=mesh)
    # FSDP makes the first module to run forward the root. Evaluation and sampling call the
    # language model itself, so make the loss module the root now (what its first forward
    # would do), not a block that happens to run first.
    sharded._get_fsdp_state()._lazy_init()
    # Average explicitly (sum, then divide by the world): gloo's reduce-scatter sums where
    # an average is asked for in some PyTorch versions (pytorch/pytorch#162338).
    sharded.set_force_sum_reduction_for_comms(True)
    return sharded  # type: ignore[return-value]  # the same module, now an FSDPModule too


def _one_dtype(model: torch.nn.Module) -> None:
    """FSDP2 gathers a group's parameters as one flat tensor and reduces its gradients as
    one: the trainable parameters of a group need one dtype (in older PyTorch, all of
    them). PEFT keeps LoRA adapters in fp32 on a bf16 base, some models keep layers in
    fp32: such a model is made fp32 throughout (doctune loads bases in fp32 anyway;
    autocast gives the bf16 speed)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        model.to(torch.float32)


def grad_sync(env: DistEnv, module: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
    """Reduce gradients on the last micro-step of an accumulation only."""
    if env.parallel == "ddp" and not last:
        return module.no_sync()  # type: ignore[operator]
    if env.parallel == "fsdp":
        module.set_requires_gradient_sync(last)  # type: ignore[operator]
    return contextlib.nullcontext()


@contextlib.contextmanager
def whole_model(env: DistEnv, module: torch.nn.Module) -> Iterator[None]:
    """Let code call the language model itself (evaluation, sampling): under FSDP the
    group on the loss module (embeddings, output layer) is gathered for the duration; the
    blocks gather themselves. Every rank must enter it."""
    if env.parallel != "fsdp":
        yield
        return
    module.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        module.reshard()  # type: ignore[operator]


# ---- full tensors for checkpoints and the final model ------------------------------------


def is_sharded(t: torch.Tensor) -> bool:
    """True for a DTensor (a parameter, gradient or state sharded by FSDP2)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5: no public DTensor, and no FSDP2 either
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (DTensor) gathered whole onto the CPU; others as they are. A
    collective for a DTensor: every rank calls it, in the same order."""
    if is_sharded(t):
        return t.full_tensor().cpu()  # type: ignore[attr-defined]
    return t


def full_state(model: torch.nn.Module, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The trainable parameters, or the whole state dict, as full CPU tensors; every rank
    calls it. Tied weights (GPT-2's output layer is its input embedding) appear once, under
    their first name, as in a one-process ``save_pretrained``."""
    named = ({n: p for n, p in model.named_parameters() if p.requires_grad} if trainable_only
             else model.state_dict(keep_vars=True))
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in named.items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = full_tensor(t.detach()).to("cpu").contiguous()
    return out


def sharded_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    """The 2-norm of all ``grads`` together when they are sharded (FSDP): the squares of
    each rank's shards, summed over the ranks. None for whole gradients."""
    if not grads or not is_sharded(grads[0]):
        return None
    local = [g.to_local() for g in grads]  # type: ignore[attr-defined]
    # float64: the shards are summed in another order than one process sums the whole
    # tensors; float32 sums of a million squares differ in the 5th digit between orders
    norms = torch.stack([torch.linalg.vector_norm(g, 2, dtype=torch.float64) for g in local])
    total = norms.square().sum()
    if td.get_backend() == "nccl":
        total = total.to(torch.device("cuda", torch.cuda.current_device()))
    td.all_reduce(total, op=td.ReduceOp.SUM)
    return total.sqrt().float()


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with sharded state gathered whole (today's checkpoint
    format: a run resumes on any number of processes). Every rank calls it."""
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: full_tensor(v) for k, v in s.items()} for i, s in sd["state"].items()}
    return sd


def like_param(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` placed the way ``param`` is: this rank's shard for a sharded parameter."""
    if not is_sharded(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.dtype), param.device_mesh, param.placements)  # type: ignore[attr-defined]


def optimizer_state_like(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A saved (full) optimizer state dict with each parameter-shaped tensor sharded like its
    parameter, ready for ``optimizer.load_state_dict``. Unchanged without sharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(is_sharded(p) for p in params):
        return state
    ids = [i for group in state["param_groups"] for i in group["params"]]
    by_id = dict(zip(ids, params, strict=True))
    out = dict(state)
    out["state"] = {i: {k: like_param(v, by_id[i]) if v.shape == by_id[i].shape else v
                        for k, v in s.items()} for i, s in state["state"].items()}
    return out
