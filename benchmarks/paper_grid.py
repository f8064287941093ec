"""The papers' N-body protocol for the relaxation study (``relaxation_study.py --grid paper``):
plain, scheduled (CR) and learned (ACE) relaxation of SEGNN on the charged N-body task at the
budget where the two papers report their effects.

Protocol (the CR code's and ACE's, read from StefanosPert/Equivariant_Optimization_CR and
andreimano/ACE): 1000 epochs of batch 100 (30,000 optimizer steps at 3,000 training
trajectories), a random rotation per training batch, validation on all 2,000 validation
trajectories every 5 epochs (and at the last), and the test MSE on the 2,000 test trajectories
of the projected model **at the best validation epoch** (the papers' number) and at the last
epoch. Each arm keeps its own optimizer settings:

* ``plain`` — ``configs/nbody_segnn.yaml`` (Adam 5e-4, weight decay 1e-12: SEGNN's and CR's);
* ``CR`` — ``nbody_segnn_relaxed.yaml``: linear paths N(0, 1e-4²) in both update layers,
  Triangle θ over the whole run, λ = 0.01 on one root over all paths (CR's penalty);
* ``ACE`` — ``nbody_segnn_dual.yaml``: ACE's README settings (Adam 9e-4, no weight decay,
  MLP branches, γ = 0 by a multiplier stepped by Adam at 8e-4 after every step);
* ``plain, ACE's optimizer`` — plain at ACE's lr 9e-4 and no weight decay, so that a gain of
  ACE is not mistaken for a learning-rate gain;
* ``plain, no |v|`` — plain without the speed input (relaxgnn's N-body input before |v|);
* ``ACE, ACE's protocol`` — ACE as its own code runs it, a check of the published number: 2000
  epochs, no rotation augmentation, absolute positions as input (``mean_pos = 0`` in its
  ``train_nbody.py``: equivariant about the origin, not to translations), λ by Adam after every
  step; and ``plain, ACE's protocol``, plain at the same protocol and optimizer, to tell what
  the protocol gives from what the relaxation gives. Two seeds;
* levers the first runs point to, after the cells above: ``ACE, damped`` — ACE with the
  augmented-Lagrangian term c·Σγ² (``auglag`` 1; ACE's ``auglag_const``), against the undamped
  swing of γ and λ seen at seed 0; ``CR, θmax 10`` — the one setting of the 750-step study
  that helped (−3.8 % on every seed).

Every run writes one small result file (:func:`run_record`) from which the tables and plots
(``paper_report.py``) are rebuilt without training.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
from datetime import date
from pathlib import Path

import torch
from grid import derived_config, train_and_test
from machine import cpu_name

#: arm -> (config file, CLI overrides on top of it)
PAPER_ARMS: dict[str, tuple[str, list[str]]] = {
    "plain": ("nbody_segnn.yaml", []),
    "CR": ("nbody_segnn_relaxed.yaml", []),
    "ACE": ("nbody_segnn_dual.yaml", []),
    "plain, ACE's optimizer": ("nbody_segnn.yaml", [
        "--model.optimizer.init_args.lr=9.0e-4",
        "--model.optimizer.init_args.weight_decay=0.0"]),
    "plain, no |v|": ("nbody_segnn.yaml", ["--model.model.init_args.speed_input=false"]),
    "ACE, ACE's protocol": ("nbody_segnn_dual.yaml", [
        "--model.random_rotation=false", "--model.model.init_args.position_input=absolute"]),
    "plain, ACE's protocol": ("nbody_segnn.yaml", [
        "--model.optimizer.init_args.lr=9.0e-4", "--model.optimizer.init_args.weight_decay=0.0",
        "--model.random_rotation=false", "--model.model.init_args.position_input=absolute"]),
}
#: arms whose config is the base config with these ``Relax`` callback arguments changed
CALLBACK_CHANGES: dict[str, dict[str, float]] = {
    "ACE, damped": {"auglag": 1.0}, "CR, θmax 10": {"theta": 10.0}}
PAPER_ARMS["ACE, damped"] = ("nbody_segnn_dual.yaml", [])
PAPER_ARMS["CR, θmax 10"] = ("nbody_segnn_relaxed.yaml", [])
#: arms that train longer than the grid's epochs, by this factor (ACE's code: 2000 epochs)
EPOCH_FACTOR = {"ACE, ACE's protocol": 2, "plain, ACE's protocol": 2}
MAIN_ARMS = ["plain", "CR", "ACE", "plain, ACE's optimizer"]
#: (training trajectories, arms, at most this many seeds), in the order the grid runs them:
#: the papers' cell first
PAPER_CELLS: list[tuple[int, list[str], int | None]] = [
    (3000, MAIN_ARMS, None), (300, MAIN_ARMS, None), (1000, MAIN_ARMS, None),
    (3000, ["plain, no |v|"], None),
    (3000, ["ACE, ACE's protocol", "plain, ACE's protocol"], 2),
    (3000, ["ACE, damped", "CR, θmax 10"], None)]
VAL_EVERY = 5


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def paper_keys(seeds: int) -> dict[str, tuple[int, str, int]]:
    """``{key: (trajectories, arm, seed)}``: per cell, seed by seed, so that a grid cut off
    part-way has every arm of a cell at the same seeds."""
    return {f"paper_n{n}_{slug(arm)}_s{seed}": (n, arm, seed)
            for n, arms, most in PAPER_CELLS for seed in range(min(seeds, most or seeds))
            for arm in arms}


def best_validation(val: dict[int, float]) -> tuple[int, float]:
    """The papers' model selection: the first epoch with the lowest validation error (a later
    epoch must be strictly lower to replace it, as ``if val_loss < best_val_loss`` in both
    codes). Returns ``(epoch, value)``."""
    if not val:
        raise ValueError("no validation values: the run never validated")
    best = None
    for epoch in sorted(val):
        if best is None or val[epoch] < best[1]:
            best = (epoch, val[epoch])
    return best


def _series(column: str) -> str | None:
    """The curve a metrics.csv column feeds (None: not kept)."""
    if column in ("train/mse", "theta", "train/penalty"):
        return {"train/mse": "train_mse", "theta": "theta", "train/penalty": "penalty"}[column]
    if column.startswith("relax/gamma/"):
        return "abs_gamma"
    if column.startswith("relax/lambda/"):
        return "lambda"
    if column.endswith("/path_norm"):
        return "path_norm"
    if column.endswith("/lie_derivative"):
        return "lie_derivative"
    return None


def run_curves(metrics_csv: Path, epochs: list[int]) -> dict[str, dict[int, float]]:
    """Per-epoch curves of a run from its ``metrics.csv``: at the given (validation) epochs the
    training MSE and penalty (epoch means), θ, and the mean γ, |γ| and λ over path groups (last
    values of the epoch); and at every epoch where they were logged (the equivariance monitor's,
    every 300 steps) the mean path norm and Lie derivative over paths. Only the series the run
    logged are present."""
    means: dict[str, dict[int, list[float]]] = {}
    last: dict[str, dict[int, dict[str, float]]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for column, text in row.items():
                name = _series(column)
                if name is None or text in ("", None):
                    continue
                value = float(text)
                if name in ("train_mse", "penalty"):
                    means.setdefault(name, {}).setdefault(epoch, []).append(value)
                else:
                    if name == "abs_gamma":  # and the signed mean: γ swings through 0
                        last.setdefault("gamma", {}).setdefault(epoch, {})[column] = value
                        value = abs(value)
                    last.setdefault(name, {}).setdefault(epoch, {})[column] = value
    out: dict[str, dict[int, float]] = {}
    for name, per_epoch in means.items():
        out[name] = {e: statistics.fmean(per_epoch[e]) for e in epochs if e in per_epoch}
    for name, per_epoch in last.items():
        keep = sorted(per_epoch) if name in ("path_norm", "lie_derivative") else epochs
        out[name] = {e: statistics.fmean(per_epoch[e].values()) for e in keep if e in per_epoch}
    return {name: {e: float(f"{v:.6g}") for e, v in curve.items()}
            for name, curve in out.items() if curve}


def refresh_curves(results: Path, runs: Path) -> list[str]:
    """Recompute the curves of every result file in ``results`` from its run's metrics.csv
    under ``runs`` (the grid's ``--out``), for results written before a fix of
    :func:`run_curves`; the record notes the commit that recomputed them. Returns the keys."""
    import json

    from relaxgnn.atomic import atomic_write_text

    done = []
    for path in sorted(Path(results).glob("*.json")):
        record = json.loads(path.read_text())
        metrics = Path(runs) / record["key"] / "version_0" / "metrics.csv"
        if not metrics.is_file():
            continue
        epochs = sorted(int(e) for e in record["val"])
        record["curves"] = run_curves(metrics, epochs)
        record["curves_recomputed_by"] = _commit()
        atomic_write_text(path, json.dumps(record, indent=2))
        done.append(record["key"])
    return done


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def arm_epochs(arm: str, args: argparse.Namespace) -> int:
    return args.epochs * EPOCH_FACTOR.get(arm, 1)


def paper_overrides(n: int, arm: str, args: argparse.Namespace) -> list[str]:
    """The CLI overrides of one run: the protocol (epochs, validation every 5 epochs on all
    2,000 validation trajectories, all 2,000 test trajectories), the training set size, the
    data folder, and the arm's own."""
    return [
        f"--trainer.max_epochs={arm_epochs(arm, args)}",
        f"--trainer.check_val_every_n_epoch={VAL_EVERY}",
        f"--data.train.init_args.max_samples={n}",
        "--data.val.init_args.max_samples=null", "--data.test.init_args.max_samples=null",
        *[f"--data.{split}.init_args.root={args.data}" for split in ("train", "val", "test")],
        *PAPER_ARMS[arm][1],
    ]


def run_record(n: int, arm: str, seed: int, args: argparse.Namespace,
               extra: list[str] | tuple[str, ...] = ()) -> dict:
    """Train and test one run of the paper grid; its result file's content. ``extra``: more
    CLI overrides (the tests' small data set)."""
    config, _ = PAPER_ARMS[arm]
    key = f"paper_n{n}_{slug(arm)}_s{seed}"
    overrides = [*paper_overrides(n, arm, args), *extra]
    path = Path(args.configs) / config
    changes = CALLBACK_CHANGES.get(arm, {})
    if changes:  # a copy of the config with the Relax callback's arguments changed
        path = derived_config(path, Path(args.out), slug(arm), **changes)
    result = train_and_test(path, key, seed, args, overrides, test_best=True)
    best_epoch, best_val = best_validation(result["val"])
    if result["best_checkpoint_epoch"] != best_epoch:
        raise RuntimeError(f"{key}: the best checkpoint is from epoch "
                           f"{result['best_checkpoint_epoch']}, the validation curve's best "
                           f"is epoch {best_epoch}")
    last_epoch = max(result["val"])
    batches = math.ceil(n / 100)
    return {
        "study": "paper", "key": key, "arm": arm, "config": config, "overrides": overrides,
        "callback_changes": changes,
        "trajectories": n, "epochs": arm_epochs(arm, args), "seed": seed,
        "steps": arm_epochs(arm, args) * batches,
        "best_epoch": best_epoch, "best_val_mse": best_val,
        "test_mse_best": result["test_best"]["test/mse"],
        "test_mse_final": result["test"]["test/mse"],
        "final_epoch": last_epoch, "final_val_mse": result["val"][last_epoch],
        "val": result["val"],
        "curves": run_curves(Path(result["run_dir"]) / "metrics.csv", sorted(result["val"])),
        "seconds": result["seconds"], "projected_equivariance": result["projected_equivariance"],
        "summary": result["summary"],
        "machine": {"cpu": cpu_name(), "threads": args.threads, "jobs": args.jobs,
                    "accelerator": args.accelerator, "torch": torch.__version__,
                    "compile": bool(args.compile)},
        "commit": _commit(), "date": str(date.today()),
    }
