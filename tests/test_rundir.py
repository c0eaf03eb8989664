"""The run folder: layout, typed facts with a version, atomic writes, checkpoints, one parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doctune.config import Config
from doctune.errors import CheckpointError, ConfigError
from doctune.rundir import RUN_FORMAT, CheckpointDir, RunDir, RunFacts
from runfolders import shared_run


def _checkpoint(run: RunDir, step: int, *, complete: bool = True) -> None:
    c = run.checkpoint(step)
    c.path.mkdir(parents=True)
    c.weights.write_bytes(b"w")
    if complete:
        c.state.write_text("{}")


def test_checkpoints_are_listed_by_step_and_incomplete_ones_ignored(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for step in (9, 10, 2):
        _checkpoint(run, step)
    _checkpoint(run, 12, complete=False)  # killed while saving: no state file
    run.checkpoint_staging(14).mkdir()
    (run.checkpoints_dir / "step-x").mkdir()
    assert [c.step for c in run.checkpoints()] == [2, 9, 10]
    assert run.latest_checkpoint() == run.checkpoint(10)
    assert CheckpointDir.is_checkpoint(run.checkpoint(10).path)
    assert not CheckpointDir.is_checkpoint(run.checkpoint(12).path)
    run.checkpoint_dropped(1).mkdir()  # pruned, deletion cut short
    assert [p.name for p in run.checkpoint_leftovers()] == [".drop-step-1", ".tmp-step-14", "step-12"]


def test_no_checkpoint_and_no_final_say_what_to_do(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(CheckpointError, match=r"no complete checkpoint to resume from .*Start a new run"):
        run.latest_checkpoint()
    _checkpoint(run, 3)
    with pytest.raises(CheckpointError, match=r"no final model .*--resume .*latest checkpoint is .*step-3"):
        run.require_final()


def test_open_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is not a doctune run folder \(no config.yaml in it\)"):
        RunDir.open(tmp_path)


def test_a_new_run_refuses_a_folder_holding_a_run(tmp_path: Path) -> None:
    RunDir(tmp_path / "empty").check_new()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunDir(tmp_path / "file").check_new()
    run = RunDir(tmp_path / "done")
    run.final_dir.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"already holds a run\. Continue it with `doctune train --resume"):
        run.check_new()


def test_config_and_facts_are_written_atomically_and_read_back(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    cfg = Config.model_validate({"train": {"lr": 3e-4, "max_steps": 7}})
    run.write_config(cfg)
    run.write_facts(RunFacts(steps=7, val_ppl_after=12.5, base_model="gpt2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "run.json"]  # no temp file left
    again = RunDir.open(tmp_path)
    assert again.config() == cfg
    assert again.facts.steps == 7 and again.facts.val_ppl_after == 12.5
    assert json.loads(run.facts_file.read_text()) == {
        "format": RUN_FORMAT, "base_model": "gpt2", "steps": 7, "val_ppl_after": 12.5}


def test_facts_of_an_older_run_open_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_config(Config())
    run.facts_file.write_text(json.dumps({"steps": 30, "base_model": "distilgpt2", "extra_key": [1]}))
    old = RunDir.open(tmp_path)
    assert (old.facts.format, old.facts.steps, old.base_model()) == (0, 30, "distilgpt2")
    assert old.facts.to_json()["extra_key"] == [1]  # keys this version does not know are kept

    run.facts_file.write_text(json.dumps({"format": RUN_FORMAT + 1, "steps": 30}))
    with pytest.raises(CheckpointError, match=rf"has format {RUN_FORMAT + 1}, written by a newer "
                                              "doctune.*Upgrade doctune"):
        RunDir.open(tmp_path)
    run.facts_file.write_text(json.dumps({"steps": "many"}))
    with pytest.raises(CheckpointError, match=r"does not hold valid run facts .* at steps\)"):
        RunDir.open(tmp_path)


def test_a_command_reads_config_yaml_once(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import doctune.rundir
    from doctune.export.merge import merge_to_folder

    run = shared_run("lora", tmp_path_factory, tiny_gpt2_dir)
    calls: list[Path] = []
    real = doctune.rundir.load_config

    def counting(path: Path | None = None, *args: object, **kw: object) -> Config:
        calls.append(Path(str(path)))
        return real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(doctune.rundir, "load_config", counting)
    merge_to_folder(run, tmp_path_factory.mktemp("merged") / "out")
    assert calls == [run.resolve() / "config.yaml"]
