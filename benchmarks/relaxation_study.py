"""Where does relaxation help? Plain, scheduled (CR: the relaxation paper) and learned (ACE)
SEGNN on the charged N-body task, on the same data and the same number of optimizer steps, over
the axes where the papers report effects, and over the settings that decide whether a path
matters at all. Test MSE of the projected models, ≥ 3 seeds per cell; a table and a plot.

Grids (``--grid``):

* ``axes`` (default): training trajectories 300 / 1,000 / 3,000 at 4 layers, and 2 / 4 / 8
  layers at 1,000 trajectories; arms plain (``configs/nbody_segnn.yaml``), CR
  (``nbody_segnn_relaxed.yaml``: linear paths N(0, 1e-4²), Triangle θ, λ = 0.01) and ACE
  (``nbody_segnn_dual.yaml``: MLP branches, learned γ = 0 constraint).
* ``main``: the README's main job — the three arms at 300 trajectories and 4 layers only,
  where relaxation is most likely to matter (few samples).
* ``settings``: at 300 trajectories and 4 layers, variants of the arms — CR with paths started
  at N(0, 1e-2²), with θmax = 10, without penalties (λ = 0), with ACE's MLP branch; ACE with
  linear N(0, 1e-4²) paths, resilient ACE, ACE with a learning rate of 2e-2 for γ (40× the
  task's: at the task's rate Adam moves γ ~5e-4 a step, too slowly to reach 0 in 750 steps),
  and with that and the dual rate scaled by the same 40 (ACE's 30,000 steps / 750) — next to
  the three arms of the ``axes`` grid.

All arms use the plain config's optimizer (Adam 5e-4, weight decay 1e-12), so that they differ
only in relaxation (ACE's own N-body learning rate is 9e-4); the same seed gives every arm the
same equivariant weights and batches. Each run trains ``--steps`` optimizer steps (rounded to
whole epochs), validates 5 times on 500 trajectories (the last epoch always), and tests the
projected model on the 2,000 test trajectories. The grid resumes (a result file per run) and
runs two one-thread runs side by side with ``--jobs 2 --threads 1``:

    .venv/bin/python benchmarks/relaxation_study.py --jobs 2 --threads 1      # ~1 hour here
    .venv/bin/python benchmarks/relaxation_study.py --grid settings --jobs 2 --threads 1

* ``paper``: the papers' own protocol and budget (1000 epochs; 30,000 steps at 3,000
  trajectories), each arm with its own optimizer settings, test at the best validation epoch,
  at 3,000, 300 and 1,000 trajectories (``benchmarks/paper_grid.py``). Hours per run on this
  CPU; one result file per run under ``--results``, committed, so that the report
  (``benchmarks/paper_report.py``) rebuilds without training::

    .venv/bin/python benchmarks/relaxation_study.py --grid paper --compile --jobs 2 --threads 1 \
        --results benchmarks/results/relaxation_paper --out runs/relaxation_paper
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from datetime import date
from pathlib import Path

import torch
from grid import (
    add_grid_arguments,
    derived_config,
    paired_difference,
    run_grid,
    train_and_test,
    verdict,
)
from machine import cpu_name
from paper_grid import paper_keys, run_record

from relaxgnn.data import NBody

ARMS = {"plain": "nbody_segnn.yaml", "CR": "nbody_segnn_relaxed.yaml",
        "ACE": "nbody_segnn_dual.yaml"}
AXES = [(300, 4), (1000, 4), (3000, 4), (1000, 2), (1000, 8)]  # (trajectories, layers)
SETTINGS_CELL = (300, 4)
ACE_BRANCH = {"kind": "mlp", "hidden": ["2x", "1x"], "activation": "gelu", "init_std": None}
VARIANTS = ["CR init 1e-2", "CR θmax 10", "CR λ = 0", "CR, ACE's MLP branch",
            "ACE, linear paths", "ACE resilient", "ACE, γ lr 2e-2", "ACE, γ lr 2e-2, dual 3.2e-2"]


def _placement(path: dict) -> dict:
    return {"layers.*.update_layer_1": path, "layers.*.update_layer_2": path}


def variant_configs(configs: Path, out: Path) -> dict[str, Path]:
    """The arm and variant configs: the three arms as shipped, and the ``settings`` variants
    written under ``out/configs`` (a copy of an arm's config with one thing changed)."""
    arms = {name: configs / file for name, file in ARMS.items()}

    def derive(name: str, base: str, relax: dict | None = None, **callback) -> Path:
        return derived_config(arms[base], out, name, relax, **callback)

    variants = dict(zip(VARIANTS, [
        derive("cr_init1e-2", "CR", _placement({"kind": "linear", "init_std": 1e-2})),
        derive("cr_theta10", "CR", theta=10.0),
        derive("cr_nopenalty", "CR", lie_weight=0.0, norm_weight=0.0),
        derive("cr_mlp", "CR", _placement(ACE_BRANCH)),
        derive("ace_linear", "ACE", _placement({"kind": "linear"})),
        derive("ace_resilient", "ACE", controller="resilient"),
        derive("ace_gamma_lr", "ACE", gamma_lr=2e-2),
        derive("ace_scaled", "ACE", gamma_lr=2e-2, dual_lr=3.2e-2),
    ], strict=True))
    return {**arms, **variants}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def grid_keys(grid: str, seeds: int) -> dict[str, tuple[int, int, str, int]]:
    """``{key: (trajectories, layers, arm, seed)}`` of a grid; keys are shared between grids,
    so a run both grids need is run once."""
    if grid == "axes":
        cells = [(n, layers, arm) for n, layers in AXES for arm in ARMS]
    elif grid == "main":
        cells = [(*SETTINGS_CELL, arm) for arm in ARMS]
    else:
        cells = [(*SETTINGS_CELL, arm) for arm in [*ARMS, *VARIANTS]]
    return {f"n{n}_L{layers}_{_slug(arm)}_s{seed}": (n, layers, arm, seed)
            for n, layers, arm in cells for seed in range(seeds)}


def run_one(n: int, layers: int, arm: str, seed: int, configs: dict[str, Path],
            args: argparse.Namespace) -> dict:
    batches = math.ceil(n / 100)
    epochs = max(1, round(args.steps / batches))
    overrides = [
        f"--trainer.max_epochs={epochs}",
        f"--trainer.check_val_every_n_epoch={max(1, epochs // 5)}",
        f"--model.model.init_args.num_layers={layers}",
        "--model.optimizer.init_args.lr=5.0e-4",
        "--model.optimizer.init_args.weight_decay=1.0e-12",
        f"--data.train.init_args.max_samples={n}", "--data.val.init_args.max_samples=500",
        "--data.test.init_args.max_samples=2000",
        *[f"--data.{split}.init_args.root={args.data}" for split in ("train", "val", "test")],
    ]
    result = train_and_test(configs[arm], f"n{n}_L{layers}_{_slug(arm)}_s{seed}", seed, args,
                            overrides)
    return {"trajectories": n, "layers": layers, "arm": arm, "steps": epochs * batches,
            **result}


def _runs(results: list[dict], arm: str, n: int, layers: int) -> list[dict]:
    """The runs of ``arm`` in the cell (``n`` trajectories, ``layers`` layers)."""
    return [r for r in results
            if r["arm"] == arm and r["trajectories"] == n and r["layers"] == layers]


def _cell(results: list[dict], arm: str, n: int, layers: int) -> dict[int, float]:
    """``{seed: test MSE}`` of ``arm`` in the cell."""
    return {r["seed"]: r["test"]["test/mse"] for r in _runs(results, arm, n, layers)}


def _fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.5f} ± {std:.5f}"


def table(results: list[dict], grid: str, args: argparse.Namespace) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in results))
    cells = list(dict.fromkeys((r["trajectories"], r["layers"]) for r in results))
    steps = sorted({r["steps"] for r in results})
    lines = [f"relaxation study ({grid}): charged N-body SEGNN, {args.steps} optimizer steps "
             f"(actual {steps[0]}–{steps[-1]}), batch 100, {args.seeds} seeds, test MSE of the "
             f"projected models on 2,000 test trajectories ({args.accelerator}, {args.threads} "
             f"thread(s) per run, {args.jobs} at a time, {cpu_name()}, torch "
             f"{torch.__version__}, {date.today()})",
             "paired Δ = the arm minus plain, same seed (mean ± std over seeds); * where |mean Δ| "
             "exceeds twice its standard error", ""]
    header = f"{'trajectories':>12} {'layers':>6}  {'arm':<22}{'test MSE':>22}{'Δ vs plain':>24}"
    lines += [header, "-" * len(header)]
    verdicts = []
    for n, layers in cells:
        plain = _cell(results, "plain", n, layers)
        for arm in arms:
            values = _cell(results, arm, n, layers)
            if not values:
                continue
            stats = paired_difference(values, plain) if arm != "plain" else None
            delta = "" if stats is None else \
                f"{stats[0]:+.5f} ± {stats[1]:.5f}{'*' if stats[2] else ' '}"
            lines.append(f"{n:>12} {layers:>6}  {arm:<22}{_fmt(list(values.values())):>22}"
                         f"{delta:>24}")
            if stats is not None:
                verdicts.append("  " + verdict(arm, values, plain,
                                               f"{n} trajectories, {layers} layers"))
    worst = max(r["projected_equivariance"] for r in results)
    minutes = sum(r["seconds"] for r in results) / 60
    lines.append(f"worst projected equivariance error {worst:.1e}; {minutes:.0f} min of training "
                 "in all")
    return "\n".join([*lines, "", "verdict (paired over seeds):", *verdicts,
                      *_end_gammas(results, arms, cells)])


def _end_gammas(results: list[dict], arms: list[str], cells: list[tuple[int, int]]
                ) -> list[str]:
    """For the learned arms: the mean |γ| at the end of training, the reason a learned arm can
    be worse after projection (γ far from 0: the projection removes a branch still in use)."""
    out = []
    for n, layers in cells:
        for arm in arms:
            ends = [abs(v["gamma"]) for r in _runs(results, arm, n, layers)
                    for v in r["summary"].get("last_gammas", {}).values()]
            if ends:
                out.append(f"  {n} trajectories, {layers} layers: {arm} ends with mean |γ| "
                           f"{statistics.mean(ends):.3f} (max {max(ends):.3f}); the projection "
                           "removes γ·g(u) whatever its size")
    return ["", "learned γ at the end of training:", *out] if out else []


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    panels = [("trajectories", 4, "training trajectories (4 layers)"),
              ("layers", 1000, "layers (1,000 trajectories)")]
    for ax, (axis, fixed, label) in zip(axes, panels, strict=True):
        other = "layers" if axis == "trajectories" else "trajectories"
        for arm, color in zip(ARMS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
            xs = sorted({r[axis] for r in results if r[other] == fixed and r["arm"] == arm})
            if not xs:
                continue
            stats = [[r["test"]["test/mse"] for r in results if r["arm"] == arm
                      and r[axis] == x and r[other] == fixed] for x in xs]
            mean = [statistics.mean(v) for v in stats]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in stats]
            ax.plot(xs, mean, marker="o", color=color, label=arm)
            ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=color,
                            alpha=0.2)
        ax.set_xscale("log" if axis == "trajectories" else "linear")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("test MSE of the projected model")
    axes[0].legend()
    fig.suptitle("N-body SEGNN: plain vs scheduled (CR) vs learned (ACE) relaxation, "
                 "same step budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=["axes", "main", "settings", "paper"], default="axes")
    parser.add_argument("--steps", type=int, default=750, help="optimizer steps per run")
    parser.add_argument("--epochs", type=int, default=1000,
                        help="epochs per run of the paper grid (the papers': 1000)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", default="datasets/nbody")
    parser.add_argument("--out", default="runs/relaxation_study")
    add_grid_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not args.only:  # generate the data set once, not in every run started side by side
        NBody(args.data, split="train", max_samples=1, progress=True)
    if args.grid == "paper":
        keys = paper_keys(args.seeds)
        done = run_grid(list(keys), lambda key: run_record(*keys[key], args), args)
        if done is not None:
            print(f"{len(done)} runs; report: benchmarks/paper_report.py --results "
                  f"{args.results or out / 'results'}")
        return
    configs = variant_configs(Path(args.configs), out)
    keys = grid_keys(args.grid, args.seeds)
    done = run_grid(list(keys), lambda key: run_one(*keys[key], configs, args), args)
    if done is None:
        return
    results = list(done.values())
    text = table(results, args.grid, args)
    (out / f"study_{args.grid}_table.txt").write_text(text + "\n")
    (out / f"study_{args.grid}_results.json").write_text(json.dumps(results, indent=2))
    print(text)
    if args.grid == "axes":
        plot(results, out / "study_axes.png")
        print(f"plot: {out / 'study_axes.png'}")
    print(f"table: {out / f'study_{args.grid}_table.txt'}; runs under {out}")


if __name__ == "__main__":
    main()
