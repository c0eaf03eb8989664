"""Several processes (torchrun, gloo, CPU) train exactly like one process with the same global batch.

Two processes with micro-batches of 2 and 2 accumulation steps (8 windows a step) are checked
against one process with micro-batches of 2 and 4 accumulation steps: the same windows in the
same order. Each torchrun launch runs several jobs in one process group (``dist_worker.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import doctune.train.dist as dist
import test_train
from doctune.errors import ConfigError
from doctune.rundir import RunDir
from doctune.train.loop import train
from doctune.train.loss import LossModule
from test_train import final_weights, make_cfg, metrics

HERE = Path(__file__).parent
STEPS = 4
ONE = ("train.grad_accum=4",)  # one process: the global batch of two processes with grad_accum=2
LORA = ("lora.enabled=true", "lora.dropout=0.0")
KL = (*LORA, "knowledge.replay_share=0.3", "knowledge.replay_source=text",
      "knowledge.replay_loss=kl")  # replayed windows trained towards the base's distribution
KINDS = {"full": (), "lora": LORA, "kl": KL}
RESUME_STEPS = 16
RESUME = (f"train.max_steps={RESUME_STEPS}", "train.save_every=1000", "train.eval_every=0",
          "train.sample_prompts=[]", "train.parallel=ddp")


def torchrun(jobs: list[dict[str, Any]], tmp: Path, **popen: Any) -> subprocess.Popen[str]:
    """Start ``dist_worker.py`` on 2 processes for ``jobs``."""
    spec = tmp / f"jobs-{len(list(tmp.glob('jobs-*')))}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "dist_worker.py"), str(spec)]
    return subprocess.Popen(cmd, cwd=HERE, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)


def job(docs: Path, model: Path, out: Path, *overrides: str, **kw: Any) -> dict[str, Any]:
    return {"docs": str(docs), "model": str(model), "out": str(out), "overrides": list(overrides), **kw}


def train_losses(run: Path) -> list[float]:
    return [r["train_loss"] for r in metrics(run) if "train_loss" in r]


def val_losses(run: Path) -> list[float]:
    return [r["val_loss"] for r in metrics(run) if "val_loss" in r]


def assert_same_run(run: Path, ref: Path) -> None:
    """Per-step losses within rtol 1e-5 and final weights within atol 1e-5."""
    assert train_losses(run) == pytest.approx(train_losses(ref), rel=1e-5)
    wa, wb = final_weights(run), final_weights(ref)
    assert wa.keys() == wb.keys()
    for name in wb:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-5, msg=name)


def one_process_gradients(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Save the gradients of the first step of the next in-process run to ``path``."""
    from safetensors.torch import save_file

    import doctune.train.loop as loop

    real, done = loop._clip, []

    def clip(model: torch.nn.Module, max_norm: float | None) -> float:
        if not done:
            save_file({n: p.grad.detach().contiguous() for n, p in model.named_parameters()
                       if p.grad is not None}, str(path))
            done.append(True)
        return real(model, max_norm)

    monkeypatch.setattr(loop, "_clip", clip)


# the docs and the tiny GPT-2 (no dropout, output layer tied to the embedding) of test_train
docs = test_train.docs
model_dir = test_train.model_dir


@pytest.fixture(scope="module")
def two_process_runs(docs: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DDP and FSDP2, full fine-tuning, LoRA and LoRA with a replay distilled from the base,
    fused loss on: one torchrun launch."""
    tmp = tmp_path_factory.mktemp("dist")
    jobs = [job(docs, model_dir, tmp / f"{mode}-{kind}", f"train.max_steps={STEPS}",
                f"train.parallel={mode}", *KINDS[kind])
            for mode in ("ddp", "fsdp") for kind in KINDS]
    (tmp / "a-file").write_text("not a run folder")  # rank 0 refuses it: every rank must stop
    jobs.append(job(docs, model_dir, tmp / "a-file"))
    proc = torchrun(jobs, tmp)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return tmp


@pytest.fixture(scope="module")
def one_process_runs(docs: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    with pytest.MonkeyPatch.context() as mp:
        for kind, sets in KINDS.items():
            one_process_gradients(mp, tmp / f"{kind}.grads.safetensors")
            train(make_cfg(docs, model_dir, tmp / kind, f"train.max_steps={STEPS}", *ONE,
                           *sets), quiet=True)
    return tmp


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_two_processes_equal_one(mode: str, kind: str, two_process_runs: Path,
                                 one_process_runs: Path) -> None:
    run, ref = two_process_runs / f"{mode}-{kind}", one_process_runs / kind
    facts = json.loads((run / "run.json").read_text())
    assert facts["processes"] == 2 and facts["parallel"] == mode
    if kind == "kl":  # DDP trains the replay towards the base; FSDP by its tokens, and says so
        said = facts["knowledge"]["replay_loss"]
        assert said.startswith("KL") if mode == "ddp" else "not trained under FSDP" in said
        if mode == "fsdp":
            assert (run / "final").is_dir()
            return
    assert_same_run(run, ref)
    # sharded validation, reduced over the processes
    assert val_losses(run) == pytest.approx(val_losses(ref), rel=1e-5)
    # the first step's averaged gradient is the one-process gradient (catches a reduction
    # that sums instead of averaging: AdamW alone would hide it in the weights)
    grads = load_file(str(run) + ".grads.safetensors")
    ref_grads = load_file(str(ref) + ".grads.safetensors")
    assert grads.keys() == ref_grads.keys() and grads
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    assert (run / "config.yaml").is_file() and not list(run.glob("*.tmp"))


def test_final_folder_loads_with_plain_transformers(two_process_runs: Path, one_process_runs: Path) -> None:
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[15496, 995, 13, 383]])
    ref = AutoModelForCausalLM.from_pretrained(one_process_runs / "full" / "final").eval()
    for mode in ("ddp", "fsdp"):
        model = AutoModelForCausalLM.from_pretrained(two_process_runs / f"{mode}-full" / "final").eval()
        assert model.lm_head.weight is model.transformer.wte.weight  # still tied
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=1e-4)


def test_one_gradient_all_reduce_per_step_and_tied_weights_in_one_group(two_process_runs: Path) -> None:
    ddp = json.loads((two_process_runs / "ddp-full.probe.json").read_text())
    # the hook sees each bucket once per optimizer step, not once per micro-step (2 here)
    assert ddp["grad_syncs"] == STEPS and ddp["buckets"] % STEPS == 0
    fsdp = json.loads((two_process_runs / "fsdp-full.probe.json").read_text())
    assert fsdp["sharded"] and fsdp["tied"]  # one sharded parameter for embedding and output


def test_an_error_on_rank_0_stops_every_rank(two_process_runs: Path) -> None:
    errors = {rank: (two_process_runs / f"a-file.error-{rank}.txt").read_text() for rank in (0, 1)}
    assert "is a file" in errors[0]
    assert errors[1].startswith("(rank 0 failed)") and "is a file" in errors[1]


# ---- stop and resume ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped(docs: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2-process DDP run whose rank 1 got SIGTERM once step 3 was logged."""
    tmp = tmp_path_factory.mktemp("stop")
    run = tmp / "run"
    proc = torchrun([job(docs, model_dir, run, *RESUME, quiet=False)], tmp)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # rank 0 prints a line per step
        lines.append(line)
        if line.startswith("step 3/"):
            os.kill(_rank_pid(proc.pid, rank=1), signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    return run, "".join(lines) + rest


def _rank_pid(launcher: int, rank: int) -> int:
    """The process of ``rank`` among the launcher's children (read from /proc)."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no process of rank {rank} under {launcher}")


@pytest.fixture(scope="module")
def uninterrupted(docs: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    train(make_cfg(docs, model_dir, run, *RESUME, *ONE), quiet=True)
    return run


def test_sigterm_to_one_rank_saves_one_checkpoint_and_every_rank_exits(stopped: tuple[Path, str]) -> None:
    run, out = stopped
    ckpts = RunDir(run).checkpoints()
    assert len(ckpts) == 1, out
    assert 3 <= ckpts[0].step < RESUME_STEPS
    assert not (run / "final").exists()
    assert not RunDir(run).checkpoint_leftovers()
    # the launcher returned, so both ranks exited; the worker of each says it stopped early
    assert "step 3/" in out


def test_resume_on_two_processes_equals_uninterrupted(stopped: tuple[Path, str], uninterrupted: Path,
                                                      docs: Path, model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    proc = torchrun([job(docs, model_dir, run, *RESUME, resume=True)], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert_same_run(run, uninterrupted)
    steps = [r["step"] for r in metrics(run) if "train_loss" in r]
    assert steps == list(range(1, RESUME_STEPS + 1))  # no step logged twice


def test_resume_on_one_process_warns_and_keeps_the_global_batch(
        stopped: tuple[Path, str], uninterrupted: Path, docs: Path, model_dir: Path, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    res = train(make_cfg(docs, model_dir, run, *RESUME), resume=True, quiet=True)
    assert res.steps == RESUME_STEPS
    assert "trained by 2 process(es), this resume runs 1" in capfd.readouterr().err
    assert RunDir(run).config().train.grad_accum == 4  # 2 x 2 processes: the same 8 windows a step
    assert_same_run(run, uninterrupted)


# ---- the parts, in one process -----------------------------------------------------------


def test_a_refused_start_stops_every_rank_cleanly_under_load(docs: Path, model_dir: Path,
                                                             tmp_path: Path) -> None:
    """`torchrun ... doctune train` where rank 0 refuses the run folder, while other programs
    load the CPU (the abort was seen there): every rank stops at the same point, the error is
    printed once, each rank exits with the error's status and none aborts."""
    bad = tmp_path / "a-file"
    bad.write_text("not a run folder")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "doctune", "train", str(docs), "--model", str(model_dir), "--out", str(bad)]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        runs = [subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
                for _ in range(2)]
    finally:
        for b in burners:
            b.kill()
            b.wait()
    for done in runs:
        out = done.stdout + done.stderr
        assert done.returncode == 1, out  # torchrun's status when a worker fails
        assert out.count(f"error: The run folder {bad} is a file") == 1, out
        assert "(rank 0 failed)" not in out and "terminate called" not in out, out
        assert "SIGABRT" not in out and "Signals." not in out, out
        assert out.count("exitcode  : 2") >= 1, out  # ConfigError's status, from each rank


def test_detect_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert dist.detect() == dist.DistEnv()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = dist.detect()
    assert (env.rank, env.world, env.local_rank, env.active, env.is_main) == (3, 4, 1, True, False)
    monkeypatch.delenv("RANK")
    with pytest.raises(ConfigError, match="RANK is not"):
        dist.detect()


def test_mps_is_refused_with_several_processes() -> None:
    with pytest.raises(ConfigError, match="MPS has no backend"), \
            dist.process_group(dist.DistEnv(rank=0, world=2), torch.device("mps")):
        pass


def test_parallel_auto_asks_the_memory_planner() -> None:
    assert dist.choose_parallel("auto", fits_one_device=lambda: True) == "ddp"
    assert dist.choose_parallel("auto", fits_one_device=lambda: False) == "fsdp"
    assert dist.choose_parallel("ddp", fits_one_device=lambda: False) == "ddp"


@pytest.fixture
def one_rank_group() -> Any:
    import torch.distributed as td

    td.init_process_group("gloo", store=td.HashStore(), rank=0, world_size=1)
    yield
    td.destroy_process_group()


def test_fsdp_gets_one_dtype_for_mixed_dtype_parameters(model_dir: Path, one_rank_group: Any) -> None:
    """An FSDP2 group needs one dtype among its trainable parameters (all of them in older
    PyTorch): PEFT keeps LoRA adapters in fp32 on a bf16 base, some models keep layers in fp32."""
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM

    from doctune.modeling import apply_lora

    def mixed_model() -> Any:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        model = apply_lora(base, r=4, alpha=8, dropout=0.0)
        for p in model.parameters():  # train the base too: bf16 and fp32 weights in one group
            p.requires_grad_(True)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}
        return model

    ids = torch.tensor([[15496, 995, 13, 383]])
    with pytest.raises(AssertionError, match="uniform"):  # the trap, without doctune
        fully_shard(LossModule(mixed_model(), fused=True))(ids, ids)
    model = mixed_model()
    module = dist.wrap(dist.DistEnv(parallel="fsdp"), model, fused=True, device=torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    module(ids, ids).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resume_on_more_processes_keeps_the_global_batch_or_says_why_not(
        docs: Path, model_dir: Path, tmp_path: Path) -> None:
    from dataclasses import asdict

    from doctune.train.checkpoint import TrainState
    from doctune.train.setup import _resume_accum

    run = RunDir(tmp_path / "run")
    cfg = make_cfg(docs, model_dir, run.path, "train.grad_accum=6")
    run.write_config(cfg)
    run.checkpoint(2).path.mkdir(parents=True)
    saved = TrainState(step=2, micro_step=12, tokens_seen=1, total_steps=4, micro_batch_size=2,
                       grad_accum=6, world_size=1)
    run.checkpoint(2).state.write_text(json.dumps(asdict(saved)))
    notes: list[str] = []
    two = _resume_accum(cfg, dist.DistEnv(rank=0, world=2), run, notes)
    assert two.train.grad_accum == 3 and "train.grad_accum 6 -> 3" in notes[0]
    assert _resume_accum(cfg, dist.DistEnv(), run, []) is cfg  # the same number of processes
    with pytest.raises(ConfigError, match="4 processes cannot share them evenly"):
        _resume_accum(cfg, dist.DistEnv(rank=0, world=4), run, [])
