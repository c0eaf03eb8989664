"""One process of a distributed test run, started by ``torchrun`` from ``test_dist.py``.

``python dist_worker.py JOBS.json``: JOBS.json is a list of runs, each
``{"docs", "model", "out", "overrides": [...], "resume": bool}``. The process group is
joined once here (as Ray Train does before calling doctune), so that several runs share it.
For each run, rank 0 writes ``<out>.probe.json``: what the wrapped module looked like and,
under DDP, how many gradient all-reduces ran (a communication hook counts them); a run that
fails with a doctune error leaves ``<out>.error-<rank>.txt`` from each rank.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as td

import doctune.train.dist as dist
import doctune.train.loop as loop
from doctune.errors import DoctuneError
from test_train import make_cfg

torch.set_num_threads(1)
REAL_WRAP, REAL_CLIP = dist.wrap, loop._clip


def probing_wrap(probe: dict[str, Any]) -> Any:
    def wrap(env: dist.DistEnv, model: torch.nn.Module, **kw: Any) -> torch.nn.Module:
        module = REAL_WRAP(env, model, **kw)
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
        probe["parallel"] = env.parallel
        probe["tied"] = head is not None and head.weight is emb
        probe["sharded"] = type(emb).__name__ == "DTensor"
        probe["grad_syncs"] = 0  # last buckets reduced = gradient all-reduces of all buckets
        probe["buckets"] = 0

        def count(state, bucket):  # type: ignore[no-untyped-def]  (DDP checks the annotation)
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            probe["buckets"] += 1
            probe["grad_syncs"] += int(bucket.is_last())
            return allreduce_hook(state, bucket)

        if env.parallel == "ddp":
            module.register_comm_hook(None, count)  # type: ignore[operator]
        return module

    return wrap


def dump_first_gradients(path: str) -> None:
    """Save the (full) gradients of the first optimizer step to ``path`` (rank 0)."""
    from safetensors.torch import save_file

    state = {"done": False}

    def clip(model: torch.nn.Module, max_norm: float | None) -> float:
        if not state["done"]:
            grads = {n: dist.full_tensor(p.grad.detach()).cpu().contiguous()
                     for n, p in model.named_parameters() if p.grad is not None}
            if td.get_rank() == 0:
                save_file(grads, path)
            state["done"] = True
        return REAL_CLIP(model, max_norm)

    loop._clip = clip  # type: ignore[assignment]


def main(jobs_file: str) -> int:
    td.init_process_group("gloo")
    code = 0
    for job in json.loads(Path(jobs_file).read_text()):
        probe: dict[str, Any] = {}
        dist.wrap = probing_wrap(probe)  # type: ignore[assignment]
        dump_first_gradients(job["out"] + ".grads.safetensors")
        cfg = make_cfg(Path(job["docs"]), Path(job["model"]), Path(job["out"]), *job["overrides"])
        try:
            result = loop.train(cfg, resume=job.get("resume", False), quiet=job.get("quiet", True))
        except DoctuneError as e:  # recorded by each rank: none may be left waiting
            Path(f"{job['out']}.error-{td.get_rank()}.txt").write_text(str(e))
            continue
        if result.stopped_early:
            code = 130
        if td.get_rank() == 0:
            Path(job["out"] + ".probe.json").write_text(json.dumps(probe))
    dist.leave(together=True)  # a barrier first: no rank closes while another still reads
    return code


if __name__ == "__main__":
    status = main(sys.argv[1])
    # every run is saved and the process group is gone; leave without the interpreter's
    # teardown, where gloo's threads sometimes abort a loaded machine's rank ("terminate
    # called without an active exception") after all the work this test checks is done
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
