"""No API key a user has in the environment reaches any file a run or an export writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from doctune.cli import app
from test_train import write_docs

SECRET = "sk-doctune-test-7f3a9c1e5b"
KEYS = ("WANDB_API_KEY", "DOCTUNE_TEACHER_API_KEY", "OPENAI_API_KEY", "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN", "ANTHROPIC_API_KEY")


def test_no_key_in_any_output_file(tmp_path: Path, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.setenv(key, SECRET)
    docs = write_docs(tmp_path / "docs", n=3)
    run, out = tmp_path / "run", tmp_path / "export"
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(docs), "--model", str(tiny_gpt2_dir), "--lora", "--out", str(run),
                              "--max-steps", "2", "--set", "data.block_size=32", "--set", "data.overlap=4",
                              "--set", "train.eval_every=1", "--set", "train.save_every=1",
                              "--set", "train.sample_every=1", "--set", "log.tensorboard=true"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    files = [p for p in (*run.rglob("*"), *out.rglob("*")) if p.is_file()]
    names = {p.relative_to(tmp_path).parts[1] for p in files}
    assert {"config.yaml", "run.json", "metrics.jsonl", "samples.md", "report.html", "tensorboard",
            "checkpoints", "final", "README.md", "adapter_config.json"} <= names | {
                p.name for p in files}
    leaked = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in res.output
