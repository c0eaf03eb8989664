"""The report's PNG plots, drawn from the rows of ``metrics.jsonl`` with matplotlib (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_NAMES = ("loss", "lr", "throughput", "memory")

_BLUE, _ORANGE, _GREEN, _GREY = "#2563eb", "#ea580c", "#16a34a", "#6b7280"


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of the rows that carry a finite ``key``."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
            xs.append(int(row["step"]))
            ys.append(float(value))
    return xs, ys


def _ema(values: list[float], alpha: float) -> list[float]:
    out, acc = [], values[0]
    for v in values:
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def write_plots(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Draw loss, learning rate, throughput and memory against the step into ``out_dir``.

    Returns ``{name: path}`` for the plots that had data (a run without evaluations still
    gets its loss plot; one without memory numbers gets no memory plot).
    """
    import matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    style: dict[str, Any] = {"font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
                             "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110}
    with matplotlib.rc_context(style):  # type: ignore[arg-type]
        return _draw(rows, out_dir)


def _draw(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    # Figures made directly (no pyplot): no global backend or figure state is touched.
    from matplotlib.figure import Figure

    written: dict[str, Path] = {}

    def subplots() -> tuple[Any, Any]:
        fig = Figure(figsize=(6.4, 3.6))
        return fig, fig.add_subplot()

    def save(fig: Any, name: str) -> None:
        from matplotlib.ticker import MaxNLocator

        for ax in fig.axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        written[name] = path

    steps, loss = _series(rows, "train_loss")
    vsteps, vloss = _series(rows, "val_loss")
    if loss or vloss:
        fig, ax = subplots()
        if loss:
            smooth = len(loss) > 30
            ax.plot(steps, loss, color=_BLUE, alpha=0.35 if smooth else 1.0, lw=1,
                    label="train loss" if not smooth else "train loss (raw)")
            if smooth:
                ax.plot(steps, _ema(loss, 2 / (1 + max(5, len(loss) // 20))), color=_BLUE, lw=1.8,
                        label="train loss (smoothed)")
        if vloss:
            ax.plot(vsteps, vloss, "o-", color=_ORANGE, lw=1.2, ms=5, label="validation loss")
        ax.set(xlabel="step", ylabel="loss (nats/token)", title="Loss")
        ax.legend(frameon=False)
        save(fig, "loss")

    for name, key, title, ylabel, color in (
        ("lr", "lr", "Learning rate", "learning rate", _GREEN),
        ("throughput", "tokens_per_sec", "Throughput", "tokens / second", _BLUE),
    ):
        xs, ys = _series(rows, key)
        if xs:
            fig, ax = subplots()
            ax.plot(xs, ys, color=color, lw=1.5)
            ax.set(xlabel="step", ylabel=ylabel, title=title)
            if name == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            else:
                ax.set_ylim(bottom=0)
            save(fig, name)

    lines = [(k, label, c) for k, label, c in (
        ("mem_rss_mb", "process RSS", _BLUE), ("mem_peak_rss_mb", "process peak RSS", _GREY),
        ("mem_device_mb", "device (tensors)", _ORANGE), ("mem_device_reserved_mb", "device (reserved)", _GREEN),
        ("mem_device_driver_mb", "device (driver)", _GREEN)) if _series(rows, k)[0]]
    if lines:
        fig, ax = subplots()
        for key, label, color in lines:
            xs, ys = _series(rows, key)
            ax.plot(xs, [y / 1024 for y in ys], color=color, lw=1.5,
                    ls="--" if "peak" in key else "-", label=label)
        ax.set(xlabel="step", ylabel="GB", title="Memory")
        ax.set_ylim(bottom=0)
        ax.legend(frameon=False)
        save(fig, "memory")
    return written
