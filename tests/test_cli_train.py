"""`doctune train` and `doctune init` from the command line: exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from doctune.cli import app
from doctune.config import Config

runner = CliRunner()


def test_help_is_fast_and_lists_commands() -> None:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "doctune", "--help"], capture_output=True, text=True, check=True)
    assert time.perf_counter() - t < 5  # includes interpreter start; torch is not imported
    assert "train" in out.stdout and "init" in out.stdout
    probe = subprocess.run([sys.executable, "-c", "import doctune.cli, sys; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False"


def test_unknown_key_exits_2_with_suggestion(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    res = runner.invoke(app, ["train", str(docs), "--set", "train.lr_rate=1"])
    assert res.exit_code == 2
    assert "unknown key `train.lr_rate`" in res.output and "train.lr" in res.output


def test_missing_docs_folder_exits_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", str(tmp_path / "nope")], env={"COLUMNS": "400"})
    assert res.exit_code == 2
    assert "nope" in res.output and "Invalid value" in res.output


def test_resume_refuses_a_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("{}\n")
    cfg = tmp_path / "other.yaml"
    cfg.write_text("{}\n")
    res = runner.invoke(app, ["train", "--resume", str(tmp_path), "--config", str(cfg)])
    assert res.exit_code == 2 and "drop --config" in res.output


def test_init_writes_a_loadable_commented_config(tmp_path: Path) -> None:
    out = tmp_path / "doctune.yaml"
    res = runner.invoke(app, ["init", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.startswith("# Written for this machine:")
    cfg = Config.model_validate(yaml.safe_load(text))
    assert cfg.model.name == "distilgpt2" and cfg.lora.enabled
    again = runner.invoke(app, ["init", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
