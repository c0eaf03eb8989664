"""A run killed mid-way and resumed ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from doctune.config import dump_config
from doctune.rundir import RunDir
from doctune.train.loop import train
from test_train import final_weights, make_cfg, metrics, write_docs

STEPS = 40
OVERRIDES = (f"train.max_steps={STEPS}", "train.save_every=5", "train.eval_every=10",
             "train.keep_checkpoints=2", "train.sample_every=6")  # sampling must not disturb the RNG


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_docs(tmp_path_factory.mktemp("docs"))


@pytest.fixture(scope="module")
def uninterrupted(docs: Path, tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tiny_gpt2_dir keeps GPT-2's dropout: resume must restore the RNG to match
    run = tmp_path_factory.mktemp("full") / "run"
    train(make_cfg(docs, tiny_gpt2_dir, run, *OVERRIDES), quiet=True)
    return run


def start_and_stop(docs: Path, model: Path, run: Path, sig: int, after_step: int) -> subprocess.CompletedProcess[str] | int:
    """Start `doctune train` in a child process, send ``sig`` once it logged ``after_step``."""
    cfg_file = run.parent / "cfg.yaml"
    cfg_file.write_text(dump_config(make_cfg(docs, model, run, *OVERRIDES)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "doctune", "train", "--config", str(cfg_file), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and any(json.loads(x).get("step", 0) >= after_step and "train_loss" in json.loads(x)
                                 for x in log.read_text().splitlines() if x.strip()):
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"training ended before the signal:\n{proc.communicate()[0]}"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6, msg=name)


def test_sigterm_saves_then_resume_matches(docs: Path, tiny_gpt2_dir: Path, tmp_path: Path, uninterrupted: Path) -> None:
    run = tmp_path / "run"
    done = start_and_stop(docs, tiny_gpt2_dir, run, signal.SIGTERM, after_step=7)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 130, done.stdout
    assert "SIGTERM received: saved checkpoint" in done.stdout and "--resume" in done.stdout
    stopped_at = RunDir(run).checkpoints()[-1].step
    assert 7 <= stopped_at < STEPS
    assert not (run / "final").exists()

    # resume the way a user does, from another working directory
    resumed = subprocess.run([sys.executable, "-m", "doctune", "train", "--resume", str(run), "-q"],
                             cwd=tmp_path.parent, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "final model:" in resumed.stdout
    assert_same_weights(run, uninterrupted)
    kept = [c.path.name for c in RunDir(run).checkpoints()]
    assert kept == [f"step-{STEPS - 5}", f"step-{STEPS}"]  # keep_checkpoints=2
    steps = [r["step"] for r in metrics(run) if "train_loss" in r]
    assert steps == list(range(1, STEPS + 1))  # no step logged twice after resume
    losses = [r["train_loss"] for r in metrics(run) if "train_loss" in r]
    ref = [r["train_loss"] for r in metrics(uninterrupted) if "train_loss" in r]
    assert losses == pytest.approx(ref, rel=1e-5)


def test_sigkill_keeps_last_checkpoint_and_resume_matches(docs: Path, tiny_gpt2_dir: Path, tmp_path: Path,
                                                         uninterrupted: Path) -> None:
    run = tmp_path / "run"
    done = start_and_stop(docs, tiny_gpt2_dir, run, signal.SIGKILL, after_step=12)
    assert isinstance(done, subprocess.CompletedProcess) and done.returncode == -signal.SIGKILL
    ckpts = RunDir(run).checkpoints()
    assert ckpts, "a checkpoint was saved before the kill"
    assert all((c.path / "weights.safetensors").is_file() for c in ckpts)
    res = train(make_cfg(docs, tiny_gpt2_dir, run, *OVERRIDES), resume=True, quiet=True)
    assert res.steps == STEPS
    assert_same_weights(run, uninterrupted)


_KILL_INSIDE_SAVE = """
import os, signal, sys

import safetensors.torch

import doctune.train.checkpoint as checkpoint
from doctune.config import load_config
from doctune.train.loop import train

cfg_file, owner_name, name, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
owner = {"safetensors": safetensors.torch, "checkpoint": checkpoint}[owner_name]
real, calls = getattr(owner, name), [0]

def killing(*args, **kw):
    out = real(*args, **kw)
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

setattr(owner, name, killing)
train(load_config(cfg_file), quiet=True)
"""


@pytest.mark.parametrize(("owner", "name", "at", "where"), [
    ("safetensors", "save_file", 3, "weights of step-15 written, nothing else"),
    ("checkpoint", "fsync_dir", 5, "step-15 complete in its staging folder, not yet renamed"),
    ("checkpoint", "fsync_dir", 6, "step-15 in place, step-5 not yet pruned"),
])
def test_a_kill_inside_the_checkpoint_writer_loses_nothing(
        docs: Path, tiny_gpt2_dir: Path, tmp_path: Path, uninterrupted: Path,
        owner: str, name: str, at: int, where: str) -> None:
    run = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(dump_config(make_cfg(docs, tiny_gpt2_dir, run, *OVERRIDES)))
    done = subprocess.run([sys.executable, "-c", _KILL_INSIDE_SAVE, str(cfg_file), owner, name, str(at)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    kept = RunDir(run).checkpoints()
    assert [c.step for c in kept][-1] in (10, 15), where
    for c in kept:  # every checkpoint left behind is whole and loads
        assert torch.load(c.optimizer, weights_only=True) and json.loads(c.state.read_text())["step"] == c.step
    res = train(make_cfg(docs, tiny_gpt2_dir, run, *OVERRIDES), resume=True, quiet=True)
    assert res.steps == STEPS
    assert not RunDir(run).checkpoint_leftovers()
    wa, wb = final_weights(run), final_weights(uninterrupted)
    assert all(torch.equal(wa[k], wb[k]) for k in wb), "bitwise equal to the uninterrupted run"
