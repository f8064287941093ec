"""PNG plots of a run from its CSV log: losses, θ, penalties and equivariance error against the
optimizer step. Made at the end of ``fit`` by :class:`PlotMetrics`, or by hand with
:func:`plot_run`."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

PANELS = {
    "loss": ("loss (task + penalty)", ["train/loss", "val/loss"], True),
    "theta": ("relaxation θ", ["theta"], False),
    "penalty": ("relaxation penalty", ["train/penalty"], True),
    "gamma": ("learned relaxation: γ and slack u per group", ("relax/gamma/", "relax/u/"), False),
    "lambda": ("learned relaxation: multiplier λ per group", ("relax/lambda/",), False),
    "equivariance": ("relative equivariance error", None, True),
}


def read_metrics(csv_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), …]}`` from a Lightning ``metrics.csv``; for a step logged twice
    (a resumed run repeats the steps after its last checkpoint) the last value wins."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series[key][step] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/<panel>.png`` under ``run_dir`` for every panel with data; returns them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    csv_path = run_dir / "metrics.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"no metrics.csv in {run_dir}")
    series = read_metrics(csv_path)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for panel, (title, keys, log_scale) in PANELS.items():
        if keys is None:
            keys = sorted(k for k in series if k.startswith(("equivariance/", "projected/")))
        elif isinstance(keys, tuple):  # prefixes
            keys = sorted(k for k in series if k.startswith(keys))
        keys = [k for k in keys if k in series]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            steps, values = zip(*series[key], strict=True)
            marker = "o" if len(steps) < 30 else None
            ax.plot(steps, values, label=key, marker=marker, markersize=3)
        positive = all(v > 0 for k in keys for _, v in series[k] if math.isfinite(v))
        if log_scale and positive:
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{panel}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


class PlotMetrics(Callback):
    """Make the run's plots at the end of ``fit`` (rank 0, when a CSV logger is present)."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = trainer.log_dir  # a collective call under DDP: every rank makes it
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()
        if run_dir is None or not (Path(run_dir) / "metrics.csv").is_file():
            return
        paths = plot_run(run_dir)
        rank_zero_info("plots: " + ", ".join(str(p) for p in paths))
