"""Plain-versus-relaxed comparison machinery shared by the N-body and MD benchmarks: train each
arm (plain and one or more relaxed configs) and seed from an experiment's config files,
evaluate the *projected* model (θ = 0 at the end of the schedule) on the test split, tabulate
mean ± std over seeds with the paired difference to plain and a verdict, and plot a validation
metric against the epoch.

All arms of a seed start from identical equivariant weights (relaxation paths draw no numbers
from the global generator) and see the same batches in the same order, so the comparison
isolates the effect of relaxation.

Runs resume and run side by side as ``grid.py`` describes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from grid import add_grid_arguments, run_grid, train_and_test, verdict
from machine import cpu_name

from relaxgnn.atomic import atomic_write_text


@dataclass
class Experiment:
    """What a benchmark compares: the config file of each arm (``{"plain": ..., name: ...}``,
    plain first), CLI overrides per run, the test metrics to tabulate (key, label) and the
    validation metric to plot. ``test_sets(config)`` gives ``{name: dataset}`` to test on
    instead of the config's test split (the metrics are then ``"<name>:<metric>"``);
    ``higher_is_better`` for metrics such as accuracies."""

    name: str
    arms: dict[str, str]
    overrides: Callable[[argparse.Namespace, int], list[str]]
    metrics: Sequence[tuple[str, str]]
    val_metric: str
    published: str
    test_sets: Callable[[Path], Mapping[str, Any]] | None = None
    higher_is_better: bool = False


def run_arm(exp: Experiment, arm: str, seed: int, args: argparse.Namespace) -> dict:
    config = Path(args.configs) / exp.arms[arm]
    overrides = [f"--trainer.max_epochs={args.epochs}",
                 f"--trainer.check_val_every_n_epoch={args.val_every}", *exp.overrides(args, seed)]
    test_sets = exp.test_sets(config) if exp.test_sets is not None else None
    result = train_and_test(config, f"{exp.name}_{arm}_seed{seed}", seed, args, overrides,
                            exp.val_metric, test_sets)
    if test_sets is not None:
        result["test"] = {f"{name}:{key}": value for name, metrics in result["test"].items()
                          for key, value in metrics.items()}
    return {"arm": arm, **result}


def plot(results: list[dict], exp: Experiment, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, arm in enumerate(exp.arms):
        color = f"C{k}"
        runs = [r["val"] for r in results if r["arm"] == arm]
        epochs = sorted(set.intersection(*(set(v) for v in runs)))
        values = torch.tensor([[v[e] for e in epochs] for v in runs])
        mean = values.mean(0)
        std = values.std(0) if len(runs) > 1 else torch.zeros(len(epochs))
        ax.plot(epochs, mean, color=color, label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    if not exp.higher_is_better:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{exp.val_metric} (θ = 0)")
    ax.set_title(f"{exp.name}: {' vs '.join(exp.arms)}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict], exp: Experiment, args: argparse.Namespace, setting: str) -> str:
    lines = [f"{exp.name}: {setting}, {args.epochs} epochs, {args.seeds} seeds per arm "
             f"({args.accelerator}, {args.threads} threads per run, {args.jobs} run(s) at a time, "
             f"{cpu_name()}, "
             f"torch {torch.__version__}, {date.today()})"]
    header = f"{'arm':<12}" + "".join(f"{label:>30}" for _, label in exp.metrics) + \
        f"{'min/run':>9}{'s/epoch':>9}"
    lines += [header]
    verdicts = []
    by_seed = {arm: {key: {r["seed"]: r["test"][key] for r in results if r["arm"] == arm}
                     for key, _ in exp.metrics} for arm in exp.arms}
    for arm in exp.arms:
        runs = [r for r in results if r["arm"] == arm]
        cells = []
        for key, label in exp.metrics:
            values = list(by_seed[arm][key].values())
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.5g} ± {std:.2g}")
            if arm != "plain":
                said = verdict(arm, by_seed[arm][key], by_seed["plain"][key], label,
                               lower_is_better=not exp.higher_is_better)
                verdicts += [f"  {said}"] if said else []
        seconds = statistics.mean(r["seconds"] for r in runs)   # validation passes included
        lines.append(f"{arm:<12}" + "".join(f"{c:>30}" for c in cells)
                     + f"{seconds / 60:>9.1f}{seconds / args.epochs:>9.0f}")
        for key, label in exp.metrics:
            seeds = by_seed[arm][key]
            lines.append(f"    {label} per seed: "
                         + ", ".join(f"{seeds[s]:.5g}" for s in sorted(seeds)))
    worst = max(r["projected_equivariance"] for r in results)
    lines.append(f"published: {exp.published}; worst projected equivariance error: {worst:.1e}")
    if verdicts:
        lines += ["verdict (paired over seeds):", *verdicts]
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--val-every", type=int, default=5)
    add_grid_arguments(parser)


def compare(exp: Experiment, args: argparse.Namespace, setting: str) -> str | None:
    """Run every arm and seed not yet done (resumably, side by side with ``--jobs``: see
    ``grid.py``); write results JSON, table and plot under ``args.out``."""
    torch.set_num_threads(args.threads)
    grid = {f"{arm}_seed{seed}": (arm, seed) for seed in range(args.seeds) for arm in exp.arms}
    done = run_grid(list(grid), lambda key: run_arm(exp, *grid[key], args), args)
    if done is None:
        return None
    results = list(done.values())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = out / f"{exp.name}_val.png"
    plot(results, exp, plot_path)
    text = table(results, exp, args, setting)
    atomic_write_text(out / f"{exp.name}_results.json", json.dumps(results, indent=2))
    atomic_write_text(out / f"{exp.name}_table.txt", text + "\n")
    print("\n" + text)
    print(f"plot: {plot_path}")
    return text
