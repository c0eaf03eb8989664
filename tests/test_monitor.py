"""RunMonitor, loggers, memory tracking and progress output, driven with fake metrics."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from doctune.errors import ConfigError
from doctune.monitor import MemoryTracker, RunMonitor, low_memory_warning
from doctune.monitor.progress import ProgressDisplay, format_duration, format_mb, step_stats
from doctune.rundir import RunDir

MEM_KEYS = {"mem_rss_mb", "mem_peak_rss_mb", "mem_system_available_mb"}


def make_monitor(run_dir: Path, **kw: Any) -> RunMonitor:
    args: dict[str, Any] = dict(total_steps=10, config={"train": {"lr": 0.001}}, tensorboard=False,
                                wandb=False, wandb_project="doctune", wandb_mode="offline",
                                progress=False, quiet=True)
    args.update(kw)
    return RunMonitor(RunDir(run_dir), **args)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def strip_mem(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("mem_")} for r in rows]


def fake_run(mon: RunMonitor, steps: range) -> None:
    for s in steps:
        mon.log_step(s, {"train_loss": 4.0 - 0.25 * s, "lr": 0.001, "grad_norm": 1.5,
                         "tokens_per_sec": 1000.0, "tokens_seen": 512 * s})


def test_metrics_jsonl_exact_lines(tmp_path: Path) -> None:
    mon = make_monitor(tmp_path)
    mon.log_eval(0, {"val_loss": 5.0, "val_ppl": 148.4})
    fake_run(mon, range(1, 3))
    mon.log_eval(2, {"val_loss": 3.5, "val_ppl": 33.1})
    mon.close()
    rows = lines(tmp_path / "metrics.jsonl")
    assert strip_mem(rows) == [
        {"step": 0, "val_loss": 5.0, "val_ppl": 148.4},
        {"step": 1, "train_loss": 3.75, "lr": 0.001, "grad_norm": 1.5, "tokens_per_sec": 1000.0,
         "tokens_seen": 512},
        {"step": 2, "train_loss": 3.5, "lr": 0.001, "grad_norm": 1.5, "tokens_per_sec": 1000.0,
         "tokens_seen": 1024},
        {"step": 2, "val_loss": 3.5, "val_ppl": 33.1},
    ]
    assert next(iter(rows[1])) == "step"
    assert set(rows[1]) - set(strip_mem(rows)[1]) == MEM_KEYS  # memory on train lines only
    assert set(rows[0]) == {"step", "val_loss", "val_ppl"}


def test_caller_memory_keys_win_and_nan_is_null(tmp_path: Path) -> None:
    with make_monitor(tmp_path) as mon:
        mon.log_step(1, {"train_loss": float("nan"), "mem_rss_mb": 1.0})
    row = lines(tmp_path / "metrics.jsonl")[0]
    assert row["train_loss"] is None and row["mem_rss_mb"] == 1.0


def test_resume_drops_lines_after_resume_step(tmp_path: Path) -> None:
    mon = make_monitor(tmp_path)
    mon.log_eval(0, {"val_loss": 5.0, "val_ppl": 148.4})
    fake_run(mon, range(1, 6))
    mon.log_samples(2, [("a", "b")])
    mon.log_samples(5, [("a", "c")])
    mon.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "train_lo')  # killed mid-line
    mon = make_monitor(tmp_path, resume_step=3)
    fake_run(mon, range(4, 5))
    mon.close()
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert lines(tmp_path / "samples.jsonl") == [{"step": 2, "prompt": "a", "completion": "b"}]
    md = (tmp_path / "samples.md").read_text()
    assert "## Step 2" in md and "## Step 5" not in md


def test_fresh_run_starts_files_anew(tmp_path: Path) -> None:
    for _ in range(2):
        with make_monitor(tmp_path) as mon:
            fake_run(mon, range(1, 3))
            mon.log_samples(1, [("p", "q")])
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2]
    assert len(lines(tmp_path / "samples.jsonl")) == 1


def test_samples_files(tmp_path: Path) -> None:
    with make_monitor(tmp_path) as mon:
        mon.log_samples(0, [("# Install", " it with pip."), ("Use ```", "x```` y")])
    assert lines(tmp_path / "samples.jsonl") == [
        {"step": 0, "prompt": "# Install", "completion": " it with pip."},
        {"step": 0, "prompt": "Use ```", "completion": "x```` y"},
    ]
    assert (tmp_path / "samples.md").read_text() == (
        "# Generation samples\n\n## Step 0\n\n"
        "**Sample 1** — prompt: `# Install`\n\n```text\n# Install it with pip.\n```\n\n"
        "**Sample 2** — prompt: ```` Use ``` ````\n\n`````text\nUse ```x```` y\n`````\n\n"
    )


def test_tensorboard_events_are_readable(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with make_monitor(tmp_path, tensorboard=True) as mon:
        mon.log_eval(0, {"val_loss": 5.0, "val_ppl": 148.4})
        fake_run(mon, range(1, 4))
        mon.log_samples(3, [("Hello", " world")])
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/perplexity", "train/lr", "train/grad_norm", "train/tokens_per_sec", "val/loss",
            "val/perplexity", "memory/rss_mb", "memory/peak_rss_mb"} <= set(tags["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 3.75), (2, 3.5), (3, 3.25)]
    assert [round(e.value, 2) for e in acc.Scalars("train/perplexity")] == [42.52, 33.12, 25.79]
    assert [(e.step, round(e.value, 3)) for e in acc.Scalars("val/perplexity")] == [(0, 148.4)]
    text = acc.Tensors("samples/text_summary")[0]
    assert text.step == 3 and b"Hello world" in text.tensor_proto.string_val[0]


def test_wandb_missing_gives_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r'pip install "doctune\[wandb\]"'):
        make_monitor(tmp_path, wandb=True)


def test_wandb_offline_logs_without_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-1234567890123456789012345678901")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with make_monitor(tmp_path, wandb=True) as mon:
        fake_run(mon, range(1, 3))
        mon.log_samples(2, [("a", "b")])
    files = [p for p in (tmp_path / "wandb").rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert b"secret-key-1234567890" not in path.read_bytes(), path


def test_memory_snapshot_cpu() -> None:
    snap = MemoryTracker("cpu").snapshot()
    assert set(snap) == MEM_KEYS
    assert 10 < snap["mem_rss_mb"] <= snap["mem_peak_rss_mb"]
    assert snap["mem_system_available_mb"] > 0


def test_low_memory_warning_threshold() -> None:
    snap = {"mem_rss_mb": 9000.0, "mem_system_available_mb": 1200.0}
    assert low_memory_warning(snap, total_mb=16384) is not None  # below 1.6 GB (10% of 16 GB)
    assert low_memory_warning({**snap, "mem_system_available_mb": 1700.0}, total_mb=16384) is None
    assert low_memory_warning({**snap, "mem_system_available_mb": 1700.0}, total_mb=8192) is None
    msg = low_memory_warning(snap, total_mb=16384)
    assert msg is not None and "1.2 GB" in msg and "doctune plan" in msg


def test_low_memory_warns_once_even_when_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with make_monitor(tmp_path, low_memory_mb=1e12) as mon:
        fake_run(mon, range(1, 4))
        mon.message("not shown")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("warning: only") == 1


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    clock = iter([100.0, 110.0, 120.0])
    disp = ProgressDisplay(4, progress=True, stream=out, clock=lambda: next(clock))
    assert not disp.live
    disp.message("device: cpu")
    for step in (1, 2, 3):
        disp.update(step, {"train_loss": 2.0, "lr": 3e-4, "tokens_per_sec": 1234.4, "mem_rss_mb": 2150.0})
    disp.close()
    assert out.getvalue().splitlines() == [
        "device: cpu",
        "step 1/4 | loss 2.0000 | lr 3.00e-04 | 1,234 tok/s | mem 2.10 GB",
        "step 2/4 | loss 2.0000 | lr 3.00e-04 | 1,234 tok/s | mem 2.10 GB | eta 0:20",
        "step 3/4 | loss 2.0000 | lr 3.00e-04 | 1,234 tok/s | mem 2.10 GB | eta 0:10",
    ]


def test_eta_after_a_laptop_slept_through_one_step() -> None:
    out = io.StringIO()
    times = [0.0, 2.0, 4.0, 4.0 + 8 * 3600, 8 * 3600 + 6.0]  # steps of 2 s; 8 hours asleep in step 3
    clock = iter(times)
    disp = ProgressDisplay(100, progress=False, stream=out, clock=lambda: next(clock))
    for step in range(1, 6):
        disp.update(step, {"train_loss": 1.0})
    assert disp.eta(5) == 2.0 * 95  # the usual step, not the average since the start
    assert out.getvalue().splitlines()[-1].endswith("| eta 3:10")


def test_eta_of_short_and_long_steps_is_their_mean() -> None:
    times = [0.0, 1.0, 4.0, 5.0, 8.0, 9.0]  # short (1 s) and long (3 s) batches, alternating
    clock = iter(times)
    disp = ProgressDisplay(101, progress=False, stream=io.StringIO(), clock=lambda: next(clock))
    for step in range(1, 7):
        disp.update(step, {"train_loss": 1.0})
    assert disp.eta(6) == pytest.approx(95 * 9.0 / 5)  # the mean step (1.8 s), not 1 s or 3 s


def test_progress_bar_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    disp = ProgressDisplay(4, stream=out)
    assert disp.live
    disp.update(2, {"train_loss": 2.5, "mem_rss_mb": 500.0, "mem_device_mb": 100.0})
    disp.close()
    assert "2/4" in out.getvalue() and "loss 2.5000" in out.getvalue()
    assert "mem 500 MB (device 100 MB)" in out.getvalue()


def test_quiet_prints_only_the_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with make_monitor(tmp_path, quiet=True) as mon:
        mon.header(["device: cpu"])
        fake_run(mon, range(1, 3))
        mon.log_eval(2, {"val_loss": 1.0, "val_ppl": 2.7})
        mon.summary("done")
    assert capsys.readouterr().out == "done\n"


def test_formatters() -> None:
    assert format_mb(950.2) == "950 MB" and format_mb(2150.0) == "2.10 GB"
    assert format_duration(75) == "1:15" and format_duration(3725) == "1:02:05"
    assert step_stats({"train_loss": 1.0}) == "loss 1.0000"


def test_tensorboard_resume_replaces_the_repeated_steps(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with make_monitor(tmp_path, tensorboard=True) as mon:
        fake_run(mon, range(1, 6))
    with make_monitor(tmp_path, tensorboard=True, resume_step=3) as mon:
        for s in (4, 5):
            mon.log_step(s, {"train_loss": 1.0})
    acc = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (1, 3.75), (2, 3.5), (3, 3.25), (4, 1.0), (5, 1.0)]
