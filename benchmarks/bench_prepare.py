"""Speed of ``doctune prepare`` against the fast tokenizer alone, on real docs.

Prepares every docs file under --corpora with the GPT-2 tokenizer (read, clean, dedupe,
split, tokenise, window, write the store) into a fresh folder each time (cold cache),
and times tokenising the same raw files with the fast tokenizer alone, both ways a
user would: the transformers call ``tokenizer(texts)`` and the Rust batch encoder
(``backend_tokenizer.encode_batch_fast``). The texts are read before the clock starts
for the baseline; prepare's time includes reading them. Runs are interleaved (baseline,
prepare, baseline, ...) so that a busy machine slows both alike; each figure is the
median. The ratio is prepare over the faster baseline. Goal: at most 3x. CPU seconds
(all threads and worker processes) are shown too: on a machine shared with other work
they say more than wall time about what each side costs.

    python benchmarks/bench_prepare.py [--corpora ../shared/corpora] [--runs 3] [--json]

The tokenizer threads follow TOKENIZERS_PARALLELISM as usual (unset = all cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
GPT2 = ROOT / "tests" / "fixtures" / "tokenizers" / "gpt2"


def _tokenizer(path: Path) -> Any:
    """GPT-2's fast tokenizer from vocab.json + merges.txt, or any saved tokenizer folder."""
    from transformers import GPT2TokenizerFast

    from doctune.data.tokenize import load_tokenizer

    if (path / "vocab.json").is_file() and not (path / "tokenizer.json").is_file():
        tok = GPT2TokenizerFast(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
        assert tok("Hello world")["input_ids"] == [15496, 995]
        return tok
    return load_tokenizer(path)


def _raw_texts(corpora: Path) -> list[str]:
    """The files prepare reads, as the same corpus reader reads them."""
    from doctune.data.corpus import Skipped, find_docs, read_doc

    docs, _ = find_docs(corpora)
    return [t for t in (read_doc(d) for d in docs) if not isinstance(t, Skipped)]


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children (all threads)."""
    if resource is None:  # Windows
        return time.process_time()
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], Any], cpu: list[float]) -> tuple[float, Any]:
    start, start_cpu = time.perf_counter(), _cpu()
    result = fn()
    cpu.append(_cpu() - start_cpu)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "corpora",
                    help="docs folder to prepare (default: ../shared/corpora from the repo root)")
    ap.add_argument("--tokenizer", type=Path, default=GPT2,
                    help="tokenizer folder (default: the GPT-2 files in tests/fixtures)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each measurement (median)")
    ap.add_argument("--workers", type=int, default=None,
                    help="cleaning processes (default: prepare's own choice)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if not args.corpora.is_dir():
        print(f"error: --corpora {args.corpora} is not a folder", file=sys.stderr)
        return 2

    from doctune.data.prepare import prepare
    from doctune.data.settings import DataSettings

    tok = _tokenizer(args.tokenizer)
    texts = _raw_texts(args.corpora)
    backend = tok.backend_tokenizer
    n_chars = sum(map(len, texts))
    times: dict[str, list[float]] = {"tokenizer(texts)": [], "encode_batch_fast": [],
                                     "prepare": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    phases: list[dict[str, float]] = []
    summary: dict[str, Any] = {}
    n_tokens = 0
    tok(texts[:8])  # warm up the Rust thread pool for both sides
    for _ in range(args.runs):
        t, ids = _timed(lambda: tok(texts, add_special_tokens=False)["input_ids"],
                        cpu["tokenizer(texts)"])
        times["tokenizer(texts)"].append(t)
        n_tokens = sum(map(len, ids))
        del ids
        t, _enc = _timed(lambda: backend.encode_batch_fast(texts, add_special_tokens=False),
                         cpu["encode_batch_fast"])
        times["encode_batch_fast"].append(t)
        del _enc
        with tempfile.TemporaryDirectory(prefix="bench-prepare-") as out:
            t, s = _timed(lambda: prepare(args.corpora, Path(out), DataSettings.of(),
                                          tokenizer=tok, workers=args.workers), cpu["prepare"])
        times["prepare"].append(t)
        phases.append(s.timings)
        summary = s.to_dict()

    med = {k: statistics.median(v) for k, v in times.items()}
    baseline = min(med["tokenizer(texts)"], med["encode_batch_fast"])
    ratio = med["prepare"] / baseline
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_ratio = cpu_med["prepare"] / min(cpu_med["tokenizer(texts)"], cpu_med["encode_batch_fast"])
    phase_med = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
    result = {
        "corpora": str(args.corpora), "files": len(texts), "chars": n_chars,
        "raw_tokens": n_tokens, "prepared_tokens": summary["tokens"]["total"],
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "(unset)"),
        "runs": args.runs, "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median": {k: round(v, 3) for k, v in med.items()},
        "prepare_phases": {k: round(v, 3) for k, v in phase_med.items()},
        "cpu_seconds": {k: round(v, 3) for k, v in cpu_med.items()},
        "ratio": round(ratio, 2), "cpu_ratio": round(cpu_ratio, 2), "goal": 3.0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(texts)} files, {n_chars:,} characters, {n_tokens:,} raw tokens "
          f"({summary['tokens']['total']:,} after cleaning); {result['cpus']} CPUs, "
          f"TOKENIZERS_PARALLELISM={result['tokenizers_parallelism']}; "
          f"median of {args.runs} runs")
    print()
    print("| what | median wall s | median CPU s | wall runs (s) |")
    print("| --- | ---: | ---: | --- |")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {cpu_med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    print(f"| prepare phases (wall) | | | "
          f"{', '.join(f'{k} {v:.2f}' for k, v in phase_med.items())} |")
    print()
    verdict = "within" if ratio <= 3.0 else "OVER"
    print(f"ratio prepare / fastest tokenizer-only baseline: {ratio:.2f}x wall "
          f"({verdict} the 3x goal), {cpu_ratio:.2f}x CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
