"""The machinery of relaxgnn's training benchmarks: train and test one config (`train_and_test`)
and run a grid of such runs that resumes and can run side by side (`run_grid`).

Every finished run's result is written to ``<out>/results/<key>.json`` at once (atomically), and
a rerun with the same ``--out`` skips the runs already there, so a partly finished grid resumes.
``--jobs N`` runs N runs side by side, each in its own process (this script again, with
``--only <key>``) with ``--threads`` threads: on two cores two one-thread runs beat one
two-thread run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (processes)")
    parser.add_argument("--configs", default="configs")
    parser.add_argument("--results", default=None,
                        help="folder of the per-run result files (default <out>/results)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one key of the grid
    parser.add_argument("--compile", action="store_true",
                        help="keep the configs' compile_model (torch.compile; pays off in long "
                             "runs: about a minute to compile, then ~2x faster SEGNN steps); by "
                             "default runs are eager")


def train_and_test(config: str | Path, experiment: str, seed: int, args: argparse.Namespace,
                   overrides: Sequence[str] = (), val_metric: str = "val/mse",
                   test_sets: Mapping[str, Any] | None = None, test_best: bool = False) -> dict:
    """``relaxgnn fit`` then ``test`` (θ = 0: the projected model) of ``config`` with the
    given seed and CLI overrides; returns the test metrics, the validation curve
    ``{epoch: value}``, the wall time and the worst equivariance error of the projection.
    With ``test_sets`` (``{name: dataset}``) the model is tested on each of them instead of
    the config's test set, and ``test`` is ``{name: metrics}``. With ``test_best`` the best
    validation checkpoint is tested too (``test_best``, its epoch ``best_checkpoint_epoch``):
    the papers' rule."""
    from relaxgnn.train.cli import RelaxGNNCLI, trainer_defaults
    from relaxgnn.train.datamodule import GraphDataModule
    from relaxgnn.train.module import RelaxGNNModule

    cli_args = [
        f"--config={config}", f"--seed_everything={seed}", f"--runs_dir={args.out}",
        f"--experiment={experiment}", f"--trainer.accelerator={args.accelerator}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--data.shuffle_seed={seed}", f"--model.seed={seed}", *overrides,
    ]
    if not getattr(args, "compile", False):
        cli_args.append("--model.compile_model=false")
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the CLI reads `cli_args`, not ours
        cli = RelaxGNNCLI(RelaxGNNModule, GraphDataModule, args=cli_args, run=False,
                          trainer_defaults=trainer_defaults(),
                          save_config_kwargs={"overwrite": True})
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    if test_sets is None:
        test = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    else:
        test = {name: cli.trainer.test(cli.model, GraphDataModule(
                    train=cli.datamodule.train_set, test=dataset,
                    batch_size=cli.datamodule.eval_batch_size), verbose=False)[0]
                for name, dataset in test_sets.items()}
    best = {}
    if test_best:  # after the final weights' test: this loads the best epoch's weights
        path = cli.trainer.checkpoint_callback.best_model_path
        best = {"test_best": cli.trainer.test(cli.model, cli.datamodule, ckpt_path=path,
                                              verbose=False)[0],
                "best_checkpoint_epoch": torch_load_epoch(path)}
    run_dir = Path(cli.trainer.log_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    val = {}
    for row in csv.DictReader((run_dir / "metrics.csv").open()):
        if row.get(val_metric):
            val[int(float(row["epoch"]))] = float(row[val_metric])
    return {"seed": seed, "test": test, "val": val, "seconds": seconds, "run_dir": str(run_dir),
            "projected_equivariance": max(summary["projected_equivariance_error"].values()),
            "summary": {k: v for k, v in summary.items() if k.startswith("last_")}, **best}


def torch_load_epoch(path: str | Path) -> int:
    """The epoch a Lightning checkpoint was written at (read weights-only)."""
    from relaxgnn.models.io import load_weights_only

    return int(load_weights_only(path, what="checkpoint")["epoch"])


def derived_config(base: Path, out: Path, name: str, relax: Any = None,
                   train_data: dict[str, Any] | None = None, **callback: Any) -> Path:
    """A copy of the config ``base`` with one thing changed — the model's ``relax`` (when
    given), init arguments of the training set (``train_data``) or of its ``Relax`` callback —
    written to ``out/configs/<name>.yaml`` (atomically: grids beside each other write the same
    files)."""
    import yaml

    from relaxgnn.atomic import atomic_write_text

    config = yaml.safe_load(base.read_text())
    if relax is not None:
        config["model"]["model"]["init_args"]["relax"] = relax
    if train_data is not None:
        config["data"]["train"]["init_args"].update(train_data)
    for cb in config["trainer"].get("callbacks") or []:
        if cb["class_path"] == "relaxgnn.train.Relax":
            cb.setdefault("init_args", {}).update(callback)
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def _result_path(args: argparse.Namespace, key: str) -> Path:
    results = getattr(args, "results", None) or Path(args.out) / "results"
    return Path(results) / f"{key}.json"


def load_result(path: Path) -> dict:
    result = json.loads(path.read_text())
    result["val"] = {int(epoch): value for epoch, value in result["val"].items()}  # JSON keys
    return result


def _save(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)  # a killed run leaves no half-written result


def run_grid(keys: Sequence[str], run_one: Callable[[str], dict], args: argparse.Namespace
             ) -> dict[str, dict] | None:
    """Run every key of the grid not yet done (``run_one(key)`` returns its result), resuming
    and side by side as the module docstring says; returns ``{key: result}`` — or ``None`` in
    a child process started with ``--only``, which runs its one key."""
    if args.only:
        _save(_result_path(args, args.only), run_one(args.only))
        return None
    pending = [k for k in keys if not _result_path(args, k).is_file()]
    if len(pending) < len(keys):
        print(f"resuming: {len(keys) - len(pending)} of {len(keys)} runs already done",
              flush=True)
    if args.jobs > 1 and len(pending) > 1:
        _side_by_side(pending, args)
    else:
        for key in pending:
            if _result_path(args, key).is_file():  # written meanwhile by a grid beside this one
                continue
            _save(_result_path(args, key), run_one(key))
            print(f"finished {key}", flush=True)
    return {k: load_result(_result_path(args, k)) for k in keys}


def _side_by_side(pending: list[str], args: argparse.Namespace) -> None:
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    queue, running = list(pending), []
    while queue or running:
        while queue and len(running) < args.jobs:
            key = queue.pop(0)
            if _result_path(args, key).is_file():  # written meanwhile by a grid beside this one
                continue
            log = (logs / f"{key}.log").open("w")
            cmd = [sys.executable, sys.argv[0], *sys.argv[1:], "--only", key]
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                             env=env), key))
        time.sleep(1.0)
        for item in list(running):
            proc, key = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    raise RuntimeError(f"run {key} failed (exit {proc.returncode}); see "
                                       f"{logs / f'{key}.log'}")
                print(f"finished {key}", flush=True)


def paired_difference(arm: dict[int, float], plain: dict[int, float]
                      ) -> tuple[float, float, bool] | None:
    """The paired difference ``arm − plain`` over the seeds both have: its mean, its standard
    deviation, and whether |mean| exceeds twice its standard error (the arm differs from plain
    beyond the seed spread). ``None`` with fewer than two shared seeds."""
    diffs = [arm[s] - plain[s] for s in sorted(arm) if s in plain]
    if len(diffs) < 2:
        return None
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    return mean, std, abs(mean) > 2 * std / math.sqrt(len(diffs))


def verdict(name: str, arm: dict[int, float], plain: dict[int, float], where: str = "",
            lower_is_better: bool = True, reference: str = "plain") -> str | None:
    """One plain sentence: does ``name`` differ from ``reference`` (values ``plain``) beyond the
    seed spread, and by how many percent of its mean (see :func:`paired_difference`); a
    difference beyond the spread but under 1 % is called negligible."""
    stats = paired_difference(arm, plain)
    if stats is None:
        return None
    mean, _, significant = stats
    rel = 100 * mean / statistics.mean(plain.values())
    where = f"{where}: " if where else ""
    if not significant:
        return (f"{where}{name} does not differ from {reference} ({rel:+.1f} %, within the seed "
                "spread)")
    better = (mean < 0) == lower_is_better
    size = "negligibly " if abs(rel) < 1 else ""  # consistent across seeds, but < 1 %
    return (f"{where}{name} is {size}{'better' if better else 'worse'} than {reference} "
            f"({rel:+.1f} %, beyond the seed spread)")
