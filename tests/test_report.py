"""The end-of-run report, built from a run folder written with fake numbers."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from doctune.monitor import write_report
from doctune.rundir import RunDir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    rows = [{"step": 0, "val_loss": 6.5, "val_ppl": 665.1}]
    for s in range(1, 41):
        rows.append({"step": s, "train_loss": 7.0 - 0.1 * s, "lr": 3e-4 * min(1.0, s / 10),
                     "grad_norm": 1.2, "tokens_per_sec": 900.0 + s, "tokens_seen": 2048 * s,
                     "mem_rss_mb": 1500.0 + s, "mem_peak_rss_mb": 1600.0 + s,
                     "mem_system_available_mb": 9000.0})
        if s % 20 == 0:
            rows.append({"step": s, "val_loss": 6.5 - 0.05 * s, "val_ppl": 100.0 / s})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = [{"step": s, "prompt": "# Routing <intro>", "completion": f" text at {s} & more"}
               for s in (0, 20, 40)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.0003\n  max_steps: 40\n")
    (tmp_path / "data_summary.json").write_text(json.dumps(
        {"files_used": 12, "tokens": {"train": 123456, "val": 6789},
         "skipped": [{"rel": "a.md", "reason": "empty"}]}))
    (tmp_path / "run.json").write_text(json.dumps(
        {"val_ppl_before": 665.1, "val_ppl_after": 2.5, "steps": 40, "train_time_s": 125.0,
         "device": "cpu"}))
    return tmp_path


def test_report_files_and_numbers(run_dir: Path) -> None:
    out = write_report(RunDir(run_dir))
    assert out == run_dir / "report.html"
    for name in ("loss", "lr", "throughput", "memory"):
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    assert base64.b64decode(images[0]) == (run_dir / "plots" / "loss.png").read_bytes()
    assert "665.1 → 2.5" in page and "266x lower" in page  # before/after validation perplexity
    assert "final train loss" in page and ">3<" in page and "at step 40" in page
    assert "920 tok/s" in page  # median of 901..940
    assert "1.60 GB" in page  # peak RSS 1640 MB
    assert "2:05" in page
    assert "123,456" in page and "files_used" in page and "empty" in page
    assert "max_steps: 40" in page
    assert page.count("# Routing &lt;intro&gt;") == 1  # escaped, shown once above its steps
    assert re.findall(r"step (\d+)</div><pre> text at", page) == ["0", "20", "40"]
    assert "text at 40 &amp; more" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched


def test_before_after_from_metrics_when_run_json_lacks_them(run_dir: Path) -> None:
    (run_dir / "run.json").unlink()
    page = write_report(RunDir(run_dir)).read_text()
    assert "665.1 → 2.5" in page


def test_report_of_an_empty_folder(tmp_path: Path) -> None:
    page = write_report(RunDir(tmp_path)).read_text()
    assert page.startswith("<!doctype html>") and "Curves" not in page
    assert not (tmp_path / "plots" / "loss.png").exists()


def test_samples_md_fallback(tmp_path: Path) -> None:
    (tmp_path / "samples.md").write_text("## Step 0\n\n<x>\n")
    assert "&lt;x&gt;" in write_report(RunDir(tmp_path)).read_text()
