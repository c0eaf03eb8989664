"""Saves the system refuses (disk full, read-only, no permission) and kills in the middle of a
save: the last good checkpoint stays intact and loadable, partial files go, the message says
what happened and what to do."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
from safetensors.torch import load_file

from doctune.errors import CheckpointError
from doctune.rundir import RunDir
from doctune.train.loop import train
from test_train import make_cfg, write_docs


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_docs(tmp_path_factory.mktemp("docs"), n=4)


def _cfg(docs: Path, model: Path, run: Path, *extra: str) -> Any:
    return make_cfg(docs, model, run, "train.eval_every=0", "train.save_every=2",
                    "train.max_steps=4", *extra)


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int,
                  error: OSError) -> None:
    """Make ``owner.<name>`` (a writer) write its file, then fail, on its ``call``-th use."""
    real = getattr(owner, name)
    calls = [0]

    def failing(obj: Any, path: Any, *args: Any, **kw: Any) -> Any:
        calls[0] += 1
        real(obj, path, *args, **kw)
        if calls[0] == call:
            with open(path, "ab") as f:  # a torn file, as a full disk leaves it
                f.write(b"\0" * 16)
            raise error
        return None

    monkeypatch.setattr(owner, name, failing)


def test_disk_full_keeps_the_last_checkpoint_and_resume_finishes(
        docs: Path, tiny_gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    _fail_on_call(monkeypatch, safetensors.torch, "save_file", 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(CheckpointError) as info:
        train(_cfg(docs, tiny_gpt2_dir, run), quiet=True)
    message = str(info.value)
    assert message.startswith(f"Could not save checkpoint step-4 in {run / 'checkpoints'}: the disk "
                              "is full (~")
    assert "MB needed, " in message and "MB free). Its partial files were removed." in message
    assert f"The last good checkpoint, {run / 'checkpoints' / 'step-2'}, is intact." in message
    assert f"then continue with `doctune train --resume {run}`" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]  # no partial step-4
    assert load_file(str(run / "checkpoints" / "step-2" / "weights.safetensors"))

    monkeypatch.undo()
    res = train(_cfg(docs, tiny_gpt2_dir, run), resume=True, quiet=True)
    fresh = train(_cfg(docs, tiny_gpt2_dir, tmp_path / "fresh"), quiet=True)
    assert res.steps == fresh.steps == 4
    resumed = load_file(str(run / "final" / "model.safetensors"))
    uninterrupted = load_file(str(tmp_path / "fresh" / "final" / "model.safetensors"))
    assert all(resumed[k].equal(uninterrupted[k]) for k in uninterrupted)


@pytest.mark.parametrize(("code", "cause"), [(errno.EACCES, "is not writable (Permission denied"),
                                             (errno.EROFS, "is not writable (Read-only file system")])
def test_an_unwritable_folder_says_so(docs: Path, tiny_gpt2_dir: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, code: int, cause: str) -> None:
    run = tmp_path / "run"
    import torch

    _fail_on_call(monkeypatch, torch, "save", 1, OSError(code, os.strerror(code)))  # optimizer.pt
    with pytest.raises(CheckpointError, match=rf"Could not save checkpoint step-2 in .*: .* {re.escape(cause)}"
                                              r".*No earlier checkpoint was saved\. Make the folder writable"):
        train(_cfg(docs, tiny_gpt2_dir, run), quiet=True)
    assert list((run / "checkpoints").iterdir()) == []


def test_a_failed_final_save_leaves_the_checkpoints(docs: Path, tiny_gpt2_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import doctune.train.finish as finish

    def refuse(adapter_dir: Path, base: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finish, "_point_adapter_at_base", refuse)
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"Could not save the final model in .*the disk is full"
                                              r".*The last good checkpoint, .*step-4, is intact"):
        train(_cfg(docs, tiny_gpt2_dir, run, "lora.enabled=true"), quiet=True)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".tmp", "final"))) == []
    assert [c.step for c in RunDir(run).checkpoints()] == [2, 4]


def test_a_re_save_cut_between_its_renames_is_put_back(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    old = run.checkpoint_replaced(6)
    old.mkdir(parents=True)
    (old / "state.json").write_text(json.dumps({"step": 6}))
    run.checkpoint_staging(6).mkdir()
    assert run.checkpoints() == []
    run.recover_interrupted_save()
    assert [c.step for c in run.checkpoints()] == [6]
