"""Plain versus relaxed training on the charged N-body task, the comparison of the relaxation
paper: for each arm and seed, train from the experiment's config with the given budget, then
report the test MSE of the *projected* model (θ = 0 at the end of the schedule, evaluated on
the test split) as mean ± std over seeds, with a plot of validation MSE against epoch.

    .venv/bin/python benchmarks/nbody_relaxation.py --model segnn --seeds 3 --epochs 60

Both arms of a seed start from identical equivariant weights (relaxation paths draw no numbers
from the global generator) and see the same batches in the same order, so the comparison
isolates the effect of relaxation. The paper-scale run (1000 epochs, 3,000 training samples,
the full validation and test sets) on a GPU:

    .venv/bin/python benchmarks/nbody_relaxation.py --model segnn --seeds 3 --epochs 1000 \\
        --train-samples 3000 --eval-samples 2000 --accelerator gpu --val-every 5
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from machine import cpu_name

PUBLISHED = {"segnn": 0.0043, "egnn": 0.0070}  # test MSE with 3,000 training samples


def run_arm(model: str, relaxed: bool, seed: int, args: argparse.Namespace) -> dict:
    """Train one arm from configs/nbody_<model>[_relaxed].yaml; returns its numbers."""
    from relaxgnn.train.cli import RelaxGNNCLI, trainer_defaults
    from relaxgnn.train.datamodule import GraphDataModule
    from relaxgnn.train.module import RelaxGNNModule

    config = Path(args.configs) / f"nbody_{model}{'_relaxed' if relaxed else ''}.yaml"
    name = f"{model}_{'relaxed' if relaxed else 'plain'}_seed{seed}"
    overrides = [
        f"--config={config}", f"--seed_everything={seed}", f"--experiment={name}",
        f"--runs_dir={args.out}", f"--trainer.max_epochs={args.epochs}",
        f"--trainer.accelerator={args.accelerator}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.check_val_every_n_epoch={args.val_every}",
        f"--data.shuffle_seed={seed}", f"--model.seed={seed}",
        f"--data.train.init_args.max_samples={args.train_samples}",
        f"--data.val.init_args.max_samples={args.eval_samples}",
        f"--data.test.init_args.max_samples={args.eval_samples}",
    ] + [f"--data.{s}.init_args.root={args.data}" for s in ("train", "val", "test")]
    cli = RelaxGNNCLI(RelaxGNNModule, GraphDataModule, args=overrides, run=False,
                      trainer_defaults=trainer_defaults(), save_config_kwargs={"overwrite": True})
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    test = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]  # θ = 0: projected
    run_dir = Path(cli.trainer.log_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    val = {}
    for row in csv.DictReader((run_dir / "metrics.csv").open()):
        if row.get("val/mse"):
            val[int(float(row["epoch"]))] = float(row["val/mse"])
    return {"arm": "relaxed" if relaxed else "plain", "seed": seed, "test_mse": test["test/mse"],
            "val_mse": val, "seconds": seconds, "run_dir": str(run_dir),
            "projected_equivariance": max(summary["projected_equivariance_error"].values())}


def plot(results: list[dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, color in (("plain", "tab:blue"), ("relaxed", "tab:orange")):
        runs = [r["val_mse"] for r in results if r["arm"] == arm]
        epochs = sorted(set.intersection(*(set(v) for v in runs)))
        values = torch.tensor([[v[e] for e in epochs] for v in runs])
        mean, std = values.mean(0), values.std(0) if len(runs) > 1 else torch.zeros(len(epochs))
        ax.plot(epochs, mean, color=color, label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MSE (θ = 0)")
    ax.set_title(f"{model.upper()} on charged N-body: plain vs relaxed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [f"N-body {args.model.upper()}: {args.train_samples} training trajectories, "
             f"{args.epochs} epochs, {len(args.seeds_list)} seeds per arm, test on "
             f"{args.eval_samples} trajectories ({args.accelerator}, {torch.get_num_threads()} "
             f"threads, {cpu_name()}, torch {torch.__version__}, {date.today()})",
             f"{'arm':<10}{'test MSE (projected)':>26}{'per seed':>40}{'min/run':>10}"]
    for arm in ("plain", "relaxed"):
        mses = [r["test_mse"] for r in results if r["arm"] == arm]
        minutes = statistics.mean(r["seconds"] for r in results if r["arm"] == arm) / 60
        std = statistics.stdev(mses) if len(mses) > 1 else 0.0
        seeds = ", ".join(f"{m:.5f}" for m in mses)
        lines.append(f"{arm:<10}{statistics.mean(mses):>16.5f} ± {std:<7.5f}{seeds:>40}"
                     f"{minutes:>10.1f}")
    worst = max(r["projected_equivariance"] for r in results)
    lines.append(f"published ({args.model.upper()}, 3,000 samples, 1000 epochs): "
                 f"{PUBLISHED[args.model]}; worst projected equivariance error: {worst:.1e}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PUBLISHED), default="segnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--val-every", type=int, default=5)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="configs")
    parser.add_argument("--data", default="datasets/nbody")
    parser.add_argument("--out", default="runs/nbody_relaxation")
    args = parser.parse_args()
    args.seeds_list = list(range(args.seeds))
    torch.set_num_threads(args.threads)
    results = []
    for seed in args.seeds_list:
        for relaxed in (False, True):
            results.append(run_arm(args.model, relaxed, seed, args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = out / f"{args.model}_val_mse.png"
    plot(results, plot_path, args.model)
    text = table(results, args)
    (out / f"{args.model}_results.json").write_text(json.dumps(results, indent=2))
    (out / f"{args.model}_table.txt").write_text(text + "\n")
    print("\n" + text)
    print(f"plot: {plot_path}")


if __name__ == "__main__":
    main()
