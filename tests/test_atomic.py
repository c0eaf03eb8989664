"""The one atomic writer: whole files or the old ones, flushed to the disk, no leftovers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import doctune.atomic as atomic
from doctune.atomic import TMP_GLOB, atomic_open, atomic_path, write_bytes, write_json, write_text


def test_writes_replace_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "run.json"
    write_json(path, {"a": "é", "n": 1})
    assert path.read_text(encoding="utf-8") == '{\n "a": "é",\n "n": 1\n}'
    write_text(path, "line\n")
    assert path.read_bytes() == b"line\n"  # \n on every platform
    write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert list(path.parent.glob(TMP_GLOB)) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk went away"), atomic_open(path) as f:
        f.write("new, half written")
        raise RuntimeError("disk went away")
    assert path.read_text() == "old\n"
    assert list(tmp_path.glob(TMP_GLOB)) == []


def test_a_path_writer_gets_a_fresh_temporary_name_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "tokens.npy"
    with atomic_path(target) as a, atomic_path(tmp_path / "other") as b:
        assert a.parent == tmp_path and a != b and a.name.startswith(".tokens.npy.tmp-")
        a.write_bytes(b"1")
        b.write_bytes(b"2")
        assert not target.exists()  # nothing at the target until the block ends
    assert target.read_bytes() == b"1" and (tmp_path / "other").read_bytes() == b"2"


def test_the_file_and_its_folder_are_flushed_before_and_after_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_text(tmp_path / "state.json", json.dumps({"step": 3}))
    if Path("/proc/self/fd").is_dir():
        assert events == ["fsync-file", "rename", "fsync-dir"]
    else:  # no /proc: the order of the three calls at least
        assert [e.split("-")[0] for e in events] == ["fsync", "rename", "fsync"]


def test_only_whole_file_modes() -> None:
    with pytest.raises(ValueError, match="mode 'w' or 'wb', got 'a'"), atomic_open("x", "a"):
        pass
