"""What a training run leaves to look at: ``log.csv``, the loss-curve PNG and sample grids.

    <run>/log.csv                          one row per ``log_every`` steps (losses, lr, images/s, ...)
    <run>/samples/step_000500.png          VQVAE: real | reconstruction;  LDM: condition | sample | real
    <paths.figures>/<stage>_loss_<profile>.png  the loss curves, redrawn with every sample grid

The CSV is appended a row at a time (flushed, so a killed run keeps what it logged). When a run
resumes from step s, rows after s (logged after the checkpoint, then lost with the kill) are
dropped first, so a resumed run's log reads like an uninterrupted one. PNGs are written
atomically (``mmldm.viz.plots.save_figure``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from mmldm import atomic
from mmldm.viz.plots import plt, save_figure


class CSVLog:
    """``log.csv`` with fixed ``columns``; ``resume_step`` keeps only rows up to that step."""

    def __init__(self, path: str | Path, columns: list[str], resume_step: int | None = None):
        self.path = Path(path)
        self.columns = list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict] = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)

        atomic.write_atomic(self.path, write)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """``log.csv`` as columns of floats (empty cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else math.nan for r in rows]) for k in rows[0]}


def loss_curve(log: dict[str, np.ndarray], losses: list[str], title: str, size=(9, 3.2)):
    """Left: the named losses against the step (log scale); right: the learning rate."""
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=size, gridspec_kw={"width_ratios": [3, 1]})
    step = log.get("step", np.zeros(0))
    shown = [n for n in losses if n in log and np.any(np.nan_to_num(log[n]) != 0)]  # all-zero terms are off
    for name in shown:
        ax.plot(step, log[name], label=name, lw=1.2)
    positive = all((log[n][np.isfinite(log[n])] > 0).all() for n in shown)
    ax.set(xlabel="optimiser step", ylabel="loss", title=title, yscale="log" if positive else "linear")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if "lr" in log:
        ax_lr.plot(step, log["lr"], color="k", lw=1.2)
    ax_lr.set(xlabel="optimiser step", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_loss_curve(csv_path: str | Path, png_path: str | Path, losses: list[str], title: str) -> Path:
    fig = loss_curve(read_log(csv_path), losses, title)
    try:
        return save_figure(fig, png_path)
    finally:
        plt.close(fig)
