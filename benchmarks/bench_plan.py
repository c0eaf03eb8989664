"""`doctune plan` against reality: predicted vs measured peak memory of real training runs.

Each configuration of a matrix (full / LoRA, gradient checkpointing on / off, block sizes,
micro-batch sizes, precision; a distilgpt2-shaped model and smaller ones, all built from a
config, nothing downloaded) runs `doctune train` for a few steps in a subprocess. The RSS
of its whole process tree is sampled from outside every 20 ms; the peak is compared with
`estimate_memory`. Goal: every prediction within 15%.

    python benchmarks/bench_plan.py                    # the whole matrix: 15 runs, 30+ min on 2 cores
    python benchmarks/bench_plan.py --only small       # configurations whose name has "small"
    python benchmarks/bench_plan.py --json out.json    # also write the rows as JSON

Run it alone on the machine: other processes do not change RSS, but they slow it down.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# name -> (n_layer, n_embd, n_head); vocabulary 50,257 (the GPT-2 tokenizer) for all.
MODELS = {"distil": (6, 768, 12), "small": (4, 256, 4)}


@dataclass(frozen=True)
class Case:
    model: str
    lora: bool
    ckpt: bool
    block: int
    micro: int
    precision: str = "fp32"
    fused: bool = False
    accum: int = 2

    @property
    def name(self) -> str:
        return (f"{self.model} {'lora' if self.lora else 'full'} {self.precision} "
                f"{'ckpt' if self.ckpt else 'nockpt'} b{self.block} x{self.micro}"
                f"{' fused' if self.fused else ''}{f' acc{self.accum}' if self.accum != 2 else ''}")


MATRIX = [
    Case("distil", lora=False, ckpt=False, block=512, micro=4),
    Case("distil", lora=False, ckpt=True, block=512, micro=4),
    Case("distil", lora=True, ckpt=False, block=512, micro=4),
    Case("distil", lora=True, ckpt=True, block=512, micro=4),
    Case("distil", lora=True, ckpt=False, block=256, micro=2),
    Case("distil", lora=False, ckpt=False, block=256, micro=1, accum=1),
    Case("distil", lora=True, ckpt=False, block=512, micro=4, fused=True),
    Case("distil", lora=False, ckpt=False, block=512, micro=4, fused=True),
    Case("distil", lora=False, ckpt=True, block=512, micro=2, fused=True),
    Case("small", lora=False, ckpt=False, block=512, micro=4),
    Case("small", lora=True, ckpt=True, block=256, micro=8),
    Case("small", lora=False, ckpt=False, block=128, micro=2, fused=True),
    Case("small", lora=False, ckpt=False, block=256, micro=4, precision="bf16"),
    Case("small", lora=True, ckpt=False, block=512, micro=4, precision="bf16", fused=True),
    Case("scratch", lora=False, ckpt=False, block=256, micro=8),
]


def build_models(root: Path) -> dict[str, Path]:
    """Save each model shape with random weights and the GPT-2 tokenizer (a local "hub model")."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    src = SHARED / "tokenizers" / "gpt2"
    tok = GPT2TokenizerFast(vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"))
    assert tok("Hello world")["input_ids"] == [15496, 995]
    out = {}
    for name, (n_layer, n_embd, n_head) in MODELS.items():
        folder = root / name
        if not (folder / "config.json").is_file():
            torch.manual_seed(0)
            cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=1024,
                             vocab_size=50257, bos_token_id=50256, eos_token_id=50256)
            GPT2LMHeadModel(cfg).save_pretrained(folder)
            tok.save_pretrained(folder)
        out[name] = folder
    return out


def case_config(case: Case, models: dict[str, Path], docs: Path, work: Path, steps: int) -> dict:
    return {
        "data": {"path": str(docs), "block_size": case.block, "overlap": min(64, case.block // 4),
                 "cache_dir": str(work / f"cache-{case.model}-{case.block}")},
        "model": {"name": "scratch:small" if case.model == "scratch" else str(models[case.model])},
        "lora": {"enabled": case.lora},
        "train": {"output_dir": str(work / "run"), "max_steps": steps, "micro_batch_size": case.micro,
                  "grad_accum": case.accum, "precision": case.precision,
                  "grad_checkpointing": case.ckpt, "fused_loss": case.fused, "eval_every": 0,
                  "eval_batches": 1, "save_every": 0, "sample_prompts": ["The"],
                  "sample_max_new_tokens": 4, "warmup_steps": 1},
    }


def measure(config_path: Path, log: Path) -> tuple[float, float, int]:
    """Run `doctune train` on ``config_path``; return (peak tree RSS in MB, seconds, exit code)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "doctune", "train", "--docs-only", "--config", str(config_path), "--quiet"]
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        root = psutil.Process(proc.pid)
        peak = 0
        trace = []  # (seconds, MB) whenever the tree's RSS moved by 10 MB: where the peak happens
        while proc.poll() is None:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    total += p.memory_info().rss
            except psutil.Error:
                pass
            peak = max(peak, total)
            if not trace or abs(total / 2**20 - trace[-1][1]) >= 10:
                trace.append((round(time.perf_counter() - t0, 2), round(total / 2**20)))
            time.sleep(0.02)
    log.with_name("rss.csv").write_text("".join(f"{t},{mb}\n" for t, mb in trace))
    return peak / 2**20, time.perf_counter() - t0, proc.returncode


def import_baseline_mb() -> float:
    """RSS of a fresh Python that imported what `doctune train` imports before it loads a model."""
    code = ("import torch, transformers, peft, psutil\n"
            "import doctune.train.loop, doctune.monitor, doctune.modeling\n"
            "print(psutil.Process().memory_info().rss / 2**20)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=SHARED / "corpora" / "redux-docs")
    ap.add_argument("--steps", type=int, default=2,
                    help="optimizer steps per run (the peak comes in step 2, once optimizer states exist)")
    ap.add_argument("--only", default="", help="run the configurations whose name contains this")
    ap.add_argument("--json", type=Path, help="write the rows to this file")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = ap.parse_args()

    from doctune.config import Config
    from doctune.plan import estimate_memory

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-plan-"))
    models = build_models(work / "models")
    rows = []
    print(f"import baseline (python + torch + transformers + peft + doctune): {import_baseline_mb():.0f} MB")
    print(f"{'configuration':<42} {'predicted':>10} {'measured':>10} {'error':>7}  phase", flush=True)
    for case in MATRIX:
        if args.only not in case.name:
            continue
        case_dir = work / case.name.replace(" ", "_")
        shutil.rmtree(case_dir / "run", ignore_errors=True)
        case_dir.mkdir(parents=True, exist_ok=True)
        tree = case_config(case, models, args.docs, case_dir, args.steps)
        path = case_dir / "config.yaml"
        path.write_text(yaml.safe_dump(tree), encoding="utf-8")
        plan = estimate_memory(Config.model_validate(tree), device="cpu")
        peak, seconds, rc = measure(path, case_dir / "train.log")
        err = (plan.peak_mb - peak) / peak * 100
        rows.append({"config": case.name, "predicted_mb": round(plan.peak_mb), "measured_mb": round(peak),
                     "error_pct": round(err, 1), "phase": plan.phase, "seconds": round(seconds, 1),
                     "exit_code": rc, "breakdown": plan.to_dict()["breakdown"], "settings": tree})
        flag = "" if rc == 0 else f"  (exit {rc}, see {case_dir / 'train.log'})"
        print(f"{case.name:<42} {plan.peak_mb:>8,.0f}MB {peak:>8,.0f}MB {err:>+6.1f}%  {plan.phase}{flag}",
              flush=True)
    worst = max((abs(r["error_pct"]) for r in rows), default=0.0)
    print(f"\nworst error {worst:.1f}% (goal: within 15%); {len(rows)} configurations")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    if worst > 15 or any(r["exit_code"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
