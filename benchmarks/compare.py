"""Plain-versus-relaxed comparison machinery shared by the N-body and MD benchmarks: train each
arm and seed from an experiment's config files, evaluate the *projected* model (θ = 0 at the end
of the schedule) on the test split, tabulate mean ± std over seeds, and plot a validation metric
against the epoch.

Both arms of a seed start from identical equivariant weights (relaxation paths draw no numbers
from the global generator) and see the same batches in the same order, so the comparison
isolates the effect of relaxation.

Every finished run's result is written to ``<out>/results/<arm>_seed<k>.json`` at once, and a
rerun with the same ``--out`` skips the runs already there, so a partly finished grid resumes.
``--jobs N`` runs N single-process runs side by side (each with ``--threads`` threads; on two
cores, two one-thread runs beat one two-thread run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from unittest import mock

import torch
from machine import cpu_name


@dataclass
class Experiment:
    """What a benchmark compares: config files of both arms, CLI overrides per run, the test
    metrics to tabulate (key, label) and the validation metric to plot."""

    name: str
    plain_config: str
    relaxed_config: str
    overrides: Callable[[argparse.Namespace, int], list[str]]
    metrics: Sequence[tuple[str, str]]
    val_metric: str
    published: str


def run_arm(exp: Experiment, relaxed: bool, seed: int, args: argparse.Namespace) -> dict:
    from relaxgnn.train.cli import RelaxGNNCLI, trainer_defaults
    from relaxgnn.train.datamodule import GraphDataModule
    from relaxgnn.train.module import RelaxGNNModule

    arm = "relaxed" if relaxed else "plain"
    config = Path(args.configs) / (exp.relaxed_config if relaxed else exp.plain_config)
    overrides = [
        f"--config={config}", f"--seed_everything={seed}", f"--runs_dir={args.out}",
        f"--experiment={exp.name}_{arm}_seed{seed}", f"--trainer.max_epochs={args.epochs}",
        f"--trainer.accelerator={args.accelerator}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.check_val_every_n_epoch={args.val_every}",
        f"--data.shuffle_seed={seed}", f"--model.seed={seed}", *exp.overrides(args, seed),
    ]
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the CLI reads `overrides`, not ours
        cli = RelaxGNNCLI(RelaxGNNModule, GraphDataModule, args=overrides, run=False,
                          trainer_defaults=trainer_defaults(),
                          save_config_kwargs={"overwrite": True})
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    test = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]  # θ = 0: projected
    run_dir = Path(cli.trainer.log_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    val = {}
    for row in csv.DictReader((run_dir / "metrics.csv").open()):
        if row.get(exp.val_metric):
            val[int(float(row["epoch"]))] = float(row[exp.val_metric])
    return {"arm": arm, "seed": seed, "test": test, "val": val, "seconds": seconds,
            "run_dir": str(run_dir),
            "projected_equivariance": max(summary["projected_equivariance_error"].values())}


def plot(results: list[dict], exp: Experiment, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, color in (("plain", "tab:blue"), ("relaxed", "tab:orange")):
        runs = [r["val"] for r in results if r["arm"] == arm]
        epochs = sorted(set.intersection(*(set(v) for v in runs)))
        values = torch.tensor([[v[e] for e in epochs] for v in runs])
        mean = values.mean(0)
        std = values.std(0) if len(runs) > 1 else torch.zeros(len(epochs))
        ax.plot(epochs, mean, color=color, label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{exp.val_metric} (θ = 0)")
    ax.set_title(f"{exp.name}: plain vs relaxed")
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
    header = f"{'arm':<9}" + "".join(f"{label:>30}" for _, label in exp.metrics) + \
        f"{'min/run':>9}"
    lines += [header]
    for arm in ("plain", "relaxed"):
        runs = [r for r in results if r["arm"] == arm]
        cells = []
        for key, _ in exp.metrics:
            values = [r["test"][key] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.5g} ± {std:.2g}")
        minutes = statistics.mean(r["seconds"] for r in runs) / 60
        lines.append(f"{arm:<9}" + "".join(f"{c:>30}" for c in cells) + f"{minutes:>9.1f}")
        for key, label in exp.metrics:
            lines.append(f"    {label} per seed: "
                         + ", ".join(f"{r['test'][key]:.5g}" for r in runs))
    worst = max(r["projected_equivariance"] for r in results)
    lines.append(f"published: {exp.published}; worst projected equivariance error: {worst:.1e}")
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--val-every", type=int, default=5)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (processes)")
    parser.add_argument("--configs", default="configs")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # "<arm>:<seed>"


def _result_path(args: argparse.Namespace, arm: str, seed: int) -> Path:
    return Path(args.out) / "results" / f"{arm}_seed{seed}.json"


def _run_and_save(exp: Experiment, relaxed: bool, seed: int, args: argparse.Namespace) -> None:
    result = run_arm(exp, relaxed, seed, args)
    path = _result_path(args, result["arm"], seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)  # a killed run leaves no half-written result


def _load_result(path: Path) -> dict:
    result = json.loads(path.read_text())
    result["val"] = {int(epoch): value for epoch, value in result["val"].items()}  # JSON keys
    return result


def _run_side_by_side(pending: list[tuple[bool, int]], args: argparse.Namespace) -> None:
    """Each pending run in its own process (this script with ``--only``), ``args.jobs`` at once."""
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    queue, running = list(pending), []
    while queue or running:
        while queue and len(running) < args.jobs:
            relaxed, seed = queue.pop(0)
            arm = "relaxed" if relaxed else "plain"
            log = (logs / f"{arm}_seed{seed}.log").open("w")
            cmd = [sys.executable, sys.argv[0], *sys.argv[1:], "--only", f"{arm}:{seed}"]
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                            arm, seed))
        time.sleep(1.0)
        for item in list(running):
            proc, arm, seed = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    raise RuntimeError(f"run {arm} seed {seed} failed (exit {proc.returncode}); "
                                       f"see {logs / f'{arm}_seed{seed}.log'}")
                print(f"finished {arm} seed {seed}", flush=True)


def compare(exp: Experiment, args: argparse.Namespace, setting: str) -> str | None:
    """Run every arm and seed not yet done; write results JSON, table and plot under
    ``args.out``."""
    torch.set_num_threads(args.threads)
    if args.only:
        arm, seed = args.only.split(":")
        _run_and_save(exp, arm == "relaxed", int(seed), args)
        return None
    grid = [(relaxed, seed) for seed in range(args.seeds) for relaxed in (False, True)]
    pending = [(r, s) for r, s in grid
               if not _result_path(args, "relaxed" if r else "plain", s).is_file()]
    if len(pending) < len(grid):
        print(f"resuming: {len(grid) - len(pending)} of {len(grid)} runs already done")
    if args.jobs > 1 and len(pending) > 1:
        _run_side_by_side(pending, args)
    else:
        for relaxed, seed in pending:
            _run_and_save(exp, relaxed, seed, args)
    results = [_load_result(_result_path(args, "relaxed" if r else "plain", s)) for r, s in grid]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = out / f"{exp.name}_val.png"
    plot(results, exp, plot_path)
    text = table(results, exp, args, setting)
    (out / f"{exp.name}_results.json").write_text(json.dumps(results, indent=2))
    (out / f"{exp.name}_table.txt").write_text(text + "\n")
    print("\n" + text)
    print(f"plot: {plot_path}")
    return text
