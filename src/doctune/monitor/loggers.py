"""Where a run's numbers go: ``metrics.jsonl`` always, TensorBoard and W&B when asked.

Each backend has the same three methods (:class:`MetricsLogger`); the run monitor holds a
list of them. The optional ones import their library only when created, and a missing
library is an error that gives the install command.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from doctune.atomic import write_text
from doctune.errors import ConfigError

# TensorBoard tag of each metrics key; keys not listed go under "other/".
_TB_TAGS = {
    "train_loss": "train/loss",
    "train_ppl": "train/perplexity",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_sec": "train/tokens_per_sec",
    "tokens_seen": "train/tokens_seen",
    "val_loss": "val/loss",
    "val_ppl": "val/perplexity",
    "dev_score": "dev/score",
    "dev_mc_acc": "dev/mc_acc",
}


class MetricsLogger(Protocol):
    """What every backend does."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Record scalar ``metrics`` at optimizer step ``step``."""

    def log_samples(self, step: int, samples: list[tuple[str, str]], markdown: str) -> None:
        """Record generation samples (also given as a Markdown section)."""

    def close(self) -> None:
        """Flush and release files."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a torn last line (a killed run) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_jsonl(path: Path, keep_through_step: int) -> None:
    """Rewrite ``path`` without the lines whose ``step`` is above ``keep_through_step``.

    A resumed run repeats the steps after its checkpoint; their old lines would otherwise
    appear twice. The file is replaced atomically.
    """
    if not path.is_file():
        return
    kept = [row for row in read_jsonl(path) if int(row.get("step", 0)) <= keep_through_step]
    write_text(path, "".join(_dumps(row) + "\n" for row in kept))


def _dumps(row: dict[str, Any]) -> str:
    # NaN and infinity are not JSON; write them as null so every line stays readable.
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return json.dumps(clean, ensure_ascii=False)


class JsonlLogger:
    """``metrics.jsonl`` (one object per line, ``step`` first) and ``samples.jsonl``."""

    def __init__(self, metrics_path: Path, samples_path: Path, *, resume_step: int = 0) -> None:
        self.metrics_path = metrics_path
        self.samples_path = samples_path
        for path in (self.metrics_path, self.samples_path):
            if resume_step > 0:
                truncate_jsonl(path, resume_step)
            else:  # a fresh run in an old folder starts its files anew
                path.unlink(missing_ok=True)
        self._metrics = self.metrics_path.open("a", encoding="utf-8")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._metrics.write(_dumps({"step": step, **metrics}) + "\n")
        self._metrics.flush()

    def log_samples(self, step: int, samples: list[tuple[str, str]], markdown: str) -> None:
        with self.samples_path.open("a", encoding="utf-8") as f:
            for prompt, completion in samples:
                f.write(_dumps({"step": step, "prompt": prompt, "completion": completion}) + "\n")

    def close(self) -> None:
        self._metrics.close()


class TensorBoardLogger:
    """Event files under ``<run>/tensorboard`` (``tensorboard --logdir RUN``)."""

    def __init__(self, log_dir: Path, *, resume_step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            raise ConfigError("`log.tensorboard` is on but the tensorboard package is missing. "
                              "Install it with `pip install tensorboard`, or set "
                              "`--set log.tensorboard=false`.") from None
        # purge_step hides the events a resumed run is about to write again.
        self._writer = SummaryWriter(str(log_dir), purge_step=resume_step + 1 if resume_step else None)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("train_loss")
        if isinstance(loss, float) and "train_ppl" not in metrics and loss < 700:
            metrics = {**metrics, "train_ppl": math.exp(loss)}  # beside val/perplexity
        for key, value in metrics.items():
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue
            tag = _TB_TAGS.get(key) or (f"memory/{key[4:]}" if key.startswith("mem_") else f"other/{key}")
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def log_samples(self, step: int, samples: list[tuple[str, str]], markdown: str) -> None:
        self._writer.add_text("samples", markdown, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbLogger:
    """A Weights & Biases run (offline needs no account). The API key is wandb's own business:
    it is read by wandb from its usual places and never passed, printed or stored by doctune."""

    def __init__(self, run_dir: Path, *, project: str, mode: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError('`log.wandb` is on but the wandb package is not installed. Install '
                              'it with `pip install "doctune[wandb]"`, or set '
                              "`--set log.wandb=false`.") from None
        self._wandb = wandb
        self._run = wandb.init(project=project, mode=mode, dir=str(run_dir), config=config,
                               name=run_dir.name)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        clean = {(_TB_TAGS.get(k) or (f"memory/{k[4:]}" if k.startswith("mem_") else k)): v
                 for k, v in metrics.items()}
        self._run.log(clean, step=step)

    def log_samples(self, step: int, samples: list[tuple[str, str]], markdown: str) -> None:
        table = self._wandb.Table(columns=["step", "prompt", "completion"],
                                  data=[[step, p, c] for p, c in samples])
        self._run.log({"samples": table}, step=step)

    def close(self) -> None:
        self._run.finish()
