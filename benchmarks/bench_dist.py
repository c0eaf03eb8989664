"""Tokens per second of one ``doctune train`` job on 1 process and on several (torchrun).

The job is fixed: the same docs, model shape, block size and *global* batch (micro-batch x
accumulation x processes), so the runs do the same work per optimizer step and only the
number of processes changes. 1 process runs ``python -m doctune train``; N processes run
``torchrun --standalone --nproc_per_node N -m doctune train`` with ``train.grad_accum``
divided by N. tokens/s is the median of the logged per-step figure (all processes' tokens
over the slowest process's step time) after the warm-up steps.

On a CPU the processes share the cores (each gets cores / N threads), so more processes are
not faster there: the figure shows the cost of the communication. On a machine with several
GPUs each process gets its own GPU and the ratio is the scaling across them.

Examples::

    python benchmarks/bench_dist.py                           # CPU: 1 and 2 processes
    python benchmarks/bench_dist.py --device cuda              # 1 and every GPU of this machine
    python benchmarks/bench_dist.py --device cuda --procs 1,2,4,8 --shape gpt2 --block 1024
    python benchmarks/bench_dist.py --parallel fsdp --lora --json dist.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO, SHAPES, median, read_jsonl, save_gpt2_tokenizer, save_random_model


def run_one(procs: int, *, args: argparse.Namespace, model: Path, root: Path) -> dict[str, Any]:
    """Train the job on ``procs`` processes; its tokens/s and step time."""
    if args.grad_accum % procs:
        raise SystemExit(f"--grad-accum {args.grad_accum} must be a multiple of {procs} processes")
    out = root / f"run-{procs}"
    cores = args.threads or os.cpu_count() or 1
    cfg = {
        "data": {"path": str(args.docs), "block_size": args.block, "overlap": 0,
                 "val_fraction": 0.0},
        "model": {"name": str(model)},
        "lora": {"enabled": args.lora},
        "train": {"output_dir": str(out), "max_steps": args.steps, "device": args.device,
                  "micro_batch_size": args.micro_batch, "grad_accum": args.grad_accum // procs,
                  "precision": args.precision, "parallel": args.parallel, "eval_every": 0,
                  "save_every": 0, "sample_prompts": [], "warmup_steps": 0, "compile": "off",
                  # CPU: the processes share the cores; a GPU process needs few threads
                  "num_threads": max(1, cores // procs) if args.device == "cpu" else None},
        "log": {"tensorboard": False, "progress": False, "report": False},
    }
    cfg_file = root / f"config-{procs}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable])
    cmd = [*launcher, "-m", "doctune", "train", "--docs-only", "--config", str(cfg_file), "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(cfg["train"]["num_threads"] or 1)}  # type: ignore[index]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "tokens_per_sec" in r][args.warmup:]
    if not rows:
        raise SystemExit(f"no steps after the {args.warmup} warm-up steps: raise --steps")
    return {"processes": procs, "tokens_per_sec": round(median([r["tokens_per_sec"] for r in rows]), 1),
            "step_s": round(median([r["step_time_s"] for r in rows]), 3), "wall_s": round(wall, 1),
            "steps_timed": len(rows)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--procs", default=None,
                   help="comma-separated process counts (default: 1,2 on cpu; 1 and every GPU on cuda)")
    p.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp", "auto"])
    p.add_argument("--shape", default="distilgpt2",
                   choices=sorted(k for k, v in SHAPES.items() if v["family"] == "gpt2"))
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (default: full fine-tuning)")
    p.add_argument("--docs", type=Path, default=REPO / "examples" / "docs")
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=4, help="accumulation of 1 process (divided by N)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads shared by the processes (default: every core)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.procs:
        counts = [int(x) for x in args.procs.split(",")]
    elif args.device == "cuda":
        import torch

        counts = sorted({1, torch.cuda.device_count()})
    else:
        counts = [1, 2]

    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        root = Path(tmp)
        model = save_random_model(args.shape, save_gpt2_tokenizer(root / "tok"), root / "model")
        results = [run_one(n, args=args, model=model, root=root) for n in counts]
    base = results[0]["tokens_per_sec"]
    print(f"{args.shape}, {'LoRA' if args.lora else 'full'}, {args.parallel}, {args.device}, block "
          f"{args.block}, global batch {args.micro_batch * args.grad_accum} windows "
          f"({args.threads or os.cpu_count()} CPU threads shared by the processes)")
    print(f"{'processes':>9}  {'tokens/s':>9}  {'s/step':>7}  {'vs 1':>5}  {'per process':>11}")
    for r in results:
        ratio = r["tokens_per_sec"] / base
        print(f"{r['processes']:>9}  {r['tokens_per_sec']:>9,.0f}  {r['step_s']:>7.3f}  "
              f"{ratio:>5.2f}  {ratio / r['processes']:>11.2f}")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
