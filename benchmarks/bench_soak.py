"""A long unattended run: does memory grow step over step?

Trains for ``--minutes`` (evaluating, sampling and checkpointing on the way, as a real run
does), then stops it with SIGTERM (it saves and exits). From the run's ``metrics.jsonl`` it
takes the resident memory (RSS) of every step, leaves out the first 10% (warm-up: allocator
pools, lazy imports, the first evaluation), cuts the rest into 10 equal stretches and fits a
line to their medians (so that the short peaks of evaluation and sampling do not tilt it). It
prints that slope in MB per hour and per 1,000 steps, the plain least-squares slope over every
step beside it, and the median RSS of the first and last stretch.

With ``--mixed`` the run trains the knowledge mix of ``bench_knowledge.py`` (documents,
rephrasings, questions with answers, replayed general text, from a ``doctune synth`` of the
same docs): batches of many lengths and loss-token counts, the run that once grew by
1.6 GB in 563 steps.

    python benchmarks/bench_soak.py --minutes 30          # the figure in the closing notes
    python benchmarks/bench_soak.py --minutes 3           # a quick look
    python benchmarks/bench_soak.py --minutes 5 --mixed   # the knowledge mix
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_faults import REPO, doctune, make_model
from bench_knowledge import RECIPES
from doctune.monitor.loggers import read_jsonl
from doctune.rundir import RunDir


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def synthesize(docs: Path, out: Path) -> Path:
    """``doctune synth DOCS --out OUT`` (templates only), in a subprocess like the run."""
    subprocess.run([sys.executable, "-m", "doctune", "synth", str(docs), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--docs", type=Path, default=REPO / "examples" / "docs")
    ap.add_argument("--mixed", action="store_true",
                    help="Train the knowledge mix (bench_knowledge's `mixed` recipe), not the docs alone.")
    ap.add_argument("--precision", default="auto", help="train.precision (auto: bf16 where the CPU has it).")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="doctune-soak-") as tmp:
        work = Path(tmp)
        model = make_model(work / "model")
        run = RunDir(work / "run")
        cfg = {"data": {"path": str(args.docs), "block_size": 128, "overlap": 16, "val_fraction": 0.1},
               "model": {"name": str(model)},
               "train": {"output_dir": str(run.path), "max_steps": 10**6, "micro_batch_size": 2,
                         "grad_accum": 2, "eval_every": 50, "eval_batches": 8, "sample_every": 200,
                         "save_every": 100, "keep_checkpoints": 2, "log_every": 1},
               "log": {"tensorboard": True, "report": False, "progress": False}}
        cfg["train"]["precision"] = args.precision
        if args.mixed:
            cfg["knowledge"] = {"synth_dir": str(synthesize(args.docs, work / "synth")),
                                **RECIPES["mixed"]}
        cfg_path = work / "soak.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        proc = doctune("--config", str(cfg_path))
        deadline = time.monotonic() + 60 * args.minutes
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        log = proc.communicate()[0]
        rows = [r for r in read_jsonl(run.metrics_file) if "mem_rss_mb" in r and "step_time_s" in r]
    if len(rows) < 20:
        sys.exit(f"too few steps to measure ({len(rows)}):\n{log[-3000:]}")
    elapsed, t = [], 0.0
    for r in rows:
        t += float(r["step_time_s"])
        elapsed.append(t)
    skip = len(rows) // 10
    hours = [e / 3600 for e in elapsed[skip:]]
    steps = [float(r["step"]) for r in rows[skip:]]
    rss = [float(r["mem_rss_mb"]) for r in rows[skip:]]
    n = len(rss) // 10
    cuts = [slice(i * n, (i + 1) * n) for i in range(10)]
    mid_h = [median(hours[c]) for c in cuts]
    mid_s = [median(steps[c]) for c in cuts]
    mid_rss = [median(rss[c]) for c in cuts]
    results = {"recipe": "mixed" if args.mixed else "docs", "precision": args.precision,
               "minutes": round(elapsed[-1] / 60, 1), "steps": int(rows[-1]["step"]),
               "rss_first_stretch_mb": round(mid_rss[0], 1), "rss_last_stretch_mb": round(mid_rss[-1], 1),
               "rss_max_mb": round(max(rss), 1),
               "slope_mb_per_hour": round(slope(mid_h, mid_rss), 2),
               "slope_mb_per_1000_steps": round(1000 * slope(mid_s, mid_rss), 2),
               "every_step_slope_mb_per_hour": round(slope(hours, rss), 2),
               "stretch_medians_mb": [round(x, 1) for x in mid_rss]}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
