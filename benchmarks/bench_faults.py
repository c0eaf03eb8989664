"""Kill a training run at random moments, resume it each time, and compare the end with a run
that was never interrupted.

The run checkpoints after every step and most of a step's time is the save itself, so many
SIGKILLs land in the middle of writing a checkpoint. After each kill every checkpoint left in
the run folder is loaded (weights, optimizer, trainer state, counters): one that does not
load is corrupt. Then ``doctune train --resume`` continues it; a resume that exits with an
error by itself is a failed resume. At the end the final weights are compared with those of
the uninterrupted run (bitwise on CPU in fp32).

    python benchmarks/bench_faults.py --kills 20          # ~5-10 minutes on 2 CPU cores

Prints: kills (and how many landed inside a save), failed resumes, corrupt checkpoints found,
max |difference| of the final weights, and what interrupted saves left behind at the end.
Goal: 0, 0, 0, nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from doctune.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent
GPT2_TOKENIZER_FILES = REPO / "tests" / "fixtures" / "tokenizers" / "gpt2"


def make_model(folder: Path) -> Path:
    """A 4-layer GPT-2 (~17M parameters, random, seed 0) with the real GPT-2 tokenizer: its
    checkpoints (~200 MB with AdamW's moments) take long enough to write to be hit."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=256,
                               vocab_size=50257)).save_pretrained(folder)
    GPT2TokenizerFast(vocab=str(GPT2_TOKENIZER_FILES / "vocab.json"),
                      merges=str(GPT2_TOKENIZER_FILES / "merges.txt")).save_pretrained(folder)
    return folder


def write_config(work: Path, run: Path, model: Path, docs: Path, steps: int) -> Path:
    cfg = {"data": {"path": str(docs), "block_size": 64, "overlap": 8, "val_fraction": 0.1},
           "model": {"name": str(model)},
           "train": {"output_dir": str(run), "max_steps": steps, "micro_batch_size": 2,
                     "grad_accum": 1, "lr": 3e-4, "warmup_steps": 2, "eval_every": 0,
                     "save_every": 1, "keep_checkpoints": 2, "seed": 7, "num_threads": 1,
                     "precision": "fp32"},  # the goal: bitwise equal on a CPU in fp32
           "log": {"tensorboard": False, "report": False, "progress": False}}
    path = work / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def doctune(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "doctune", "train", "--docs-only", *args, "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def steps_logged(run: RunDir) -> int:
    if not run.metrics_file.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in run.metrics_file.read_text().splitlines()
             if line.strip().endswith("}") and "train_loss" in line]
    return max(steps, default=0)


def corrupt_checkpoints(run: RunDir) -> list[str]:
    """Complete checkpoints (state file present) whose files do not all load."""
    import torch
    from safetensors.torch import load_file

    bad = []
    for c in run.checkpoints():
        try:
            load_file(str(c.weights))
            torch.load(c.optimizer, weights_only=True, map_location="cpu")
            torch.load(c.trainer, weights_only=True, map_location="cpu")
            if json.loads(c.state.read_text())["step"] != c.step:
                raise ValueError("step mismatch")
        except Exception as e:
            bad.append(f"{c.path.name}: {type(e).__name__}: {e}")
    return bad


def kill_once(proc: subprocess.Popen[str], run: RunDir, rng: random.Random, step_s: float) -> dict[str, Any]:
    """Wait until ``proc`` logs a new step, then SIGKILL it within the next ~2 steps."""
    start = steps_logged(run)
    deadline = time.monotonic() + 300
    while proc.poll() is None and steps_logged(run) <= start and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        return {"killed": False, "rc": proc.returncode, "log": proc.communicate()[0][-2000:]}
    time.sleep(rng.uniform(0, 2 * step_s))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    staging = [p.name for p in run.checkpoint_leftovers()]
    return {"killed": proc.returncode == -signal.SIGKILL, "rc": proc.returncode,
            "mid_save": bool(staging), "at_step": steps_logged(run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="Seed of the kill moments.")
    ap.add_argument("--docs", type=Path, default=REPO / "examples" / "docs")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    steps = 3 * args.kills + 6
    with tempfile.TemporaryDirectory(prefix="doctune-faults-") as tmp:
        work = Path(tmp)
        model = make_model(work / "model")

        # the reference: the same run, never interrupted
        t0 = time.perf_counter()
        ref = RunDir(work / "uninterrupted")
        done = doctune("--config", str(write_config(work, ref.path, model, args.docs, steps)))
        out = done.communicate()[0]
        if done.returncode != 0:
            sys.exit(f"the uninterrupted run failed:\n{out[-3000:]}")
        facts = ref.facts
        step_s = (facts.train_time_s or time.perf_counter() - t0) / steps
        print(f"uninterrupted: {steps} steps in {time.perf_counter() - t0:.0f} s "
              f"({step_s:.2f} s a step, saving included)", flush=True)

        run = RunDir(work / "killed")
        cfg = write_config(work, run.path, model, args.docs, steps)
        kills, mid_save, failed, restarts, corrupt = 0, 0, [], 0, []
        proc = doctune("--config", str(cfg))
        while kills < args.kills:
            result = kill_once(proc, run, rng, step_s)
            if not result["killed"]:
                if result["rc"] == 0:
                    break  # the run finished before the next kill
                failed.append(result["log"])
            else:
                kills += 1
                mid_save += result["mid_save"]
                corrupt += corrupt_checkpoints(run)
                print(f"kill {kills}: after step {result['at_step']}"
                      f"{', inside a save' if result['mid_save'] else ''}", flush=True)
            if run.checkpoints() or run.has_final():
                proc = doctune("--resume", str(run.path))
            else:  # killed before its first checkpoint: nothing to resume, start it anew
                restarts += 1
                proc = doctune("--config", str(cfg), "--overwrite")
        out = proc.communicate()[0]
        if proc.returncode != 0:
            failed.append(out[-2000:])
        diff = max_abs_diff(ref, run) if run.has_final() else float("nan")
        litter = [p.name for p in run.checkpoint_leftovers()]
    results = {"kills": kills, "inside_a_save": mid_save, "restarts_before_first_checkpoint": restarts,
               "failed_resumes": len(failed), "corrupt_checkpoints": len(corrupt),
               "max_abs_diff": diff, "leftovers_at_the_end": litter, "steps": steps}
    print(json.dumps(results, indent=1))
    for log in failed:
        print("failed resume:\n" + log)
    for c in corrupt:
        print("corrupt: " + c)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    sys.exit(0 if not failed and not corrupt and not litter and diff == 0 else 1)


def max_abs_diff(a: RunDir, b: RunDir) -> float:
    from safetensors.torch import load_file

    wa = load_file(str(a.final_dir / "model.safetensors"))
    wb = load_file(str(b.final_dir / "model.safetensors"))
    if wa.keys() != wb.keys():
        return float("inf")
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


if __name__ == "__main__":
    main()
