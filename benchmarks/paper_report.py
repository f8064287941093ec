"""The report of the paper-scale relaxation study, rebuilt from its committed result files
(``benchmarks/results/relaxation_paper/*.json``, one per run; no training): a table per cell
(training trajectories) with mean ± std over seeds, every seed, the paired difference to plain
and a verdict, the published numbers beside them, and three plots — validation curves of the
projected models (mean and band over seeds), test MSE against training trajectories, and the
relaxation's own dynamics (θ, |γ|, λ, path norms, training against validation error)::

    .venv/bin/python benchmarks/paper_report.py            # writes benchmarks/relaxation_paper*
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from pathlib import Path

from grid import paired_difference, verdict

RESULTS = Path(__file__).parent / "results" / "relaxation_paper"
#: the data's own equivariance floor (``nbody_symmetry_floor.py``)
FLOOR = Path(__file__).parent / "results" / "nbody_symmetry_floor.json"
#: published test MSE at 3,000 trajectories, 1000 epochs: arm -> [(source, mean, std)]
PUBLISHED: dict[str, list[tuple[str, float, float | None]]] = {
    "plain": [("ACE's re-run of SEGNN (3 seeds)", 5.6e-3, 0.25e-3),
              ("SEGNN paper (Brandstetter et al. 2022)", 4.3e-3, None)],
    "CR": [("ACE's re-run of CR (3 seeds)", 4.9e-3, 0.18e-3)],
    "ACE": [("ACE paper (3 seeds)", 3.8e-3, 0.17e-3)],
}
COLOURS = {"plain": "tab:blue", "CR": "tab:orange", "ACE": "tab:green",
           "plain, ACE's optimizer": "tab:purple", "plain, no |v|": "tab:gray",
           "ACE, ACE's protocol": "tab:olive", "plain, ACE's protocol": "tab:cyan",
           "ACE, damped": "tab:red", "CR, θmax 10": "tab:brown"}
#: the arm each arm is compared with, paired by seed (default plain)
REFERENCE = {"ACE, ACE's protocol": "plain, ACE's protocol"}


def load_results(folder: Path = RESULTS) -> list[dict]:
    """Every run's record in ``folder`` (JSON keys of the curves made integers again)."""
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        record["val"] = {int(e): v for e, v in record["val"].items()}
        record["curves"] = {name: {int(e): v for e, v in curve.items()}
                            for name, curve in record.get("curves", {}).items()}
        results.append(record)
    return results


def cells(results: Iterable[dict]) -> dict[int, dict[str, dict[int, dict]]]:
    """``{trajectories: {arm: {seed: record}}}``: the papers' 3,000 first, arms in the order
    of :data:`COLOURS` (plain first), seeds ascending."""
    out: dict[int, dict[str, dict[int, dict]]] = {}
    for r in results:
        out.setdefault(r["trajectories"], {}).setdefault(r["arm"], {})[r["seed"]] = r
    order = {arm: i for i, arm in enumerate(COLOURS)}
    return {n: {arm: dict(sorted(arms[arm].items()))
                for arm in sorted(arms, key=lambda a: (order.get(a, len(order)), a))}
            for n, arms in sorted(out.items(), key=lambda item: (item[0] != 3000, item[0]))}


def _mean_std(values: list[float], scale: float = 1e3) -> str:
    std = statistics.stdev(values) if len(values) > 1 else None
    mean = statistics.mean(values) * scale
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std * scale:.2f}"


def cell_table(n: int, arms: dict[str, dict[int, dict]]) -> list[str]:
    """The markdown table of one cell (MSE in units of 1e-3)."""
    best_of = {arm: {s: r["test_mse_best"] for s, r in runs.items()} for arm, runs in arms.items()}
    lines = [f"**{n:,} training trajectories** ({_steps(arms)} optimizer steps; test MSE ×10⁻³ of "
             "the projected model on the 2,000 test trajectories)", "",
             "| arm | seeds | test MSE at the best validation epoch | per seed | Δ, paired "
             "(vs plain unless named) | test MSE at the last epoch | best epoch | min per run |",
             "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for arm, runs in arms.items():
        seeds = sorted(runs)
        best = best_of[arm]
        delta, reference = "", REFERENCE.get(arm, "plain")
        if arm != reference:
            ref = best_of.get(reference, {})
            stats = paired_difference(best, ref)
            if stats is not None:
                rel = 100 * stats[0] / statistics.mean(ref[s] for s in best if s in ref)
                delta = (f"{stats[0] * 1e3:+.2f} ± {stats[1] * 1e3:.2f} ({rel:+.1f} %)"
                         f"{' *' if stats[2] else ''}"
                         + (f" vs {reference}" if reference != "plain" else ""))
                verdicts.append(verdict(arm, best, ref, reference=reference))
        lines.append(
            f"| {arm} | {len(seeds)} | {_mean_std(list(best.values()))} | "
            + ", ".join(f"{best[s] * 1e3:.2f}" for s in seeds) + f" | {delta} | "
            + _mean_std([runs[s]["test_mse_final"] for s in seeds]) + " | "
            + ", ".join(str(runs[s]["best_epoch"]) for s in seeds) + " | "
            + ", ".join(f"{runs[s]['seconds'] / 60:.0f}" for s in seeds) + " |")
    lines += ["", "Paired Δ: the arm minus plain at the same seed, mean ± std over seeds; * where "
              "|mean| exceeds twice its standard error."]
    lines += [f"- {v}" for v in verdicts if v]
    return lines


def _steps(arms: dict[str, dict[int, dict]]) -> str:
    steps = sorted({r["steps"] for runs in arms.values() for r in runs.values()})
    return f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}–{steps[-1]:,}"


def published_table() -> list[str]:
    lines = ["| arm | source | test MSE ×10⁻³ |", "|---|---|---|"]
    for arm, rows in PUBLISHED.items():
        for source, mean, std in rows:
            value = f"{mean * 1e3:.1f}" + (f" ± {std * 1e3:.2f}" if std is not None else "")
            lines.append(f"| {arm} | {source} | {value} |")
    return lines


def markdown(results: list[dict]) -> str:
    """The whole report as markdown."""
    if not results:
        return "No runs yet."
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['threads']} thread(s) per run, "
                       f"{r['machine']['jobs']} side by side" for r in results})
    dates = sorted({r["date"] for r in results})
    commits = sorted({r["commit"][:7] for r in results})
    out = [f"Runs: {len(results)}; {'; '.join(machines)}; {dates[0]} to {dates[-1]}; "
           f"commit(s) {', '.join(commits)}.", ""]
    for n, arms in cells(results).items():
        out += [*cell_table(n, arms), ""]
    out += ["Published (3,000 trajectories, 1000 epochs; their inputs differ, see the text):", "",
            *published_table()]
    floor = equivariant_floor()
    if floor is not None:
        out += ["", f"The lowest test MSE any exactly equivariant model can reach on this test set "
                f"(the force clip of the simulator depends on the frame; "
                f"`nbody_symmetry_floor.py`): {floor * 1e3:.2f} ×10⁻³."]
    return "\n".join(out) + "\n"


def equivariant_floor(path: Path = FLOOR) -> float | None:
    """The data's equivariant floor (test MSE), if it was measured."""
    if not path.is_file():
        return None
    results = json.loads(path.read_text())["results"]
    return next(v["equivariant floor"] for k, v in results.items() if k.startswith("clip"))


def _band(runs: dict[int, dict], curve: str | None) -> tuple[list[int], list[float],
                                                            list[float], list[float]]:
    """Epochs common to every seed, and the mean, min and max over seeds of a curve there
    (``None``: the validation curve)."""
    series = [r["val"] if curve is None else r["curves"].get(curve, {}) for r in runs.values()]
    epochs = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = [[s[e] for s in series] for e in epochs]
    return (epochs, [statistics.mean(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])


def plot_validation(results: list[dict], path: Path) -> None:
    """Validation MSE of the projected model over epochs, one panel per cell."""
    plt = _pyplot()
    by_cell = cells(results)
    fig, axes = plt.subplots(1, len(by_cell), figsize=(max(7, 5 * len(by_cell)), 4),
                             squeeze=False)
    floor = equivariant_floor()
    for ax, (n, arms) in zip(axes[0], by_cell.items(), strict=True):
        if floor is not None:
            ax.axhline(floor, color="k", ls=":", lw=1, label="equivariant floor of the data")
        for arm, runs in arms.items():
            epochs, mean, low, high = _band(runs, None)
            colour = COLOURS.get(arm)
            ax.plot(epochs, mean, color=colour, label=f"{arm} ({len(runs)})", lw=1)
            ax.fill_between(epochs, low, high, color=colour, alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(f"{n:,} training trajectories")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation MSE, projected model")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("N-body SEGNN at the papers' budget (1000 epochs): mean and min–max over seeds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(results: list[dict], path: Path) -> None:
    """Test MSE at the best validation epoch against training trajectories, with the
    published numbers at 3,000."""
    plt = _pyplot()
    by_cell = cells(results)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    arms = list(dict.fromkeys(arm for runs in by_cell.values() for arm in runs))
    for i, arm in enumerate(arms):
        ns = sorted(n for n in by_cell if arm in by_cell[n])
        values = [[r["test_mse_best"] for r in by_cell[n][arm].values()] for n in ns]
        mean = [statistics.mean(v) for v in values]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        shift = [n * (1 + 0.03 * (i - len(arms) / 2)) for n in ns]  # side by side
        ax.errorbar(shift, mean, yerr=std, marker="o", capsize=3, color=COLOURS.get(arm),
                    label=arm)
    for arm, rows in PUBLISHED.items():
        for _, mean, std in rows:
            ax.errorbar([3000 * 1.12], [mean], yerr=[std or 0.0], marker="*", ms=10,
                        color=COLOURS[arm], ls="none", alpha=0.6)
    ax.plot([], [], "k*", ls="none", alpha=0.6, label="published (their inputs)")
    floor = equivariant_floor()
    if floor is not None:
        ax.axhline(floor, color="k", ls=":", lw=1,
                   label="floor of any equivariant model (the data's clip)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training trajectories (1000 epochs)")
    ax.set_ylabel("test MSE at the best validation epoch")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dynamics(results: list[dict], path: Path, n: int = 3000) -> None:
    """The relaxation's own numbers over a run at ``n`` trajectories: θ (CR) and γ (ACE),
    λ (ACE), the mean path norm ‖g(x)‖, and the training against validation MSE of plain."""
    plt = _pyplot()
    arms = cells(results).get(n, {})
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    panels = [("θ (CR) and mean γ (ACE)", [("CR", "theta"), ("ACE", "gamma")]),
              ("mean λ (ACE)", [("ACE", "lambda")]),
              ("mean path norm ‖g(x)‖ (unscaled)", [("CR", "path_norm"), ("ACE", "path_norm")]),
              ("training (dashed) and validation MSE", [(arm, "train_mse") for arm in arms])]
    for ax, (title, series) in zip(axes, panels, strict=True):
        for arm, curve in series:
            if arm not in arms:
                continue
            epochs, mean, low, high = _band(arms[arm], curve)
            ax.plot(epochs, mean, color=COLOURS.get(arm), lw=1,
                    ls="--" if curve == "train_mse" else "-", label=arm)
            ax.fill_between(epochs, low, high, color=COLOURS.get(arm), alpha=0.2)
            if curve == "train_mse":
                epochs, mean, _, _ = _band(arms[arm], None)
                ax.plot(epochs, mean, color=COLOURS.get(arm), lw=1)
                ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{n:,} training trajectories: the relaxation over the run (mean and min–max "
                 "over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default=str(Path(__file__).parent),
                        help="folder of relaxation_paper.md and the plots")
    parser.add_argument("--refresh-curves-from", metavar="RUNS", default=None,
                        help="first recompute the result files' curves from the metrics.csv of "
                             "their runs under RUNS (the grid's --out)")
    args = parser.parse_args()
    if args.refresh_curves_from:
        from paper_grid import refresh_curves

        keys = refresh_curves(Path(args.results), Path(args.refresh_curves_from))
        print(f"curves recomputed for {len(keys)} runs")
    results = load_results(Path(args.results))
    out = Path(args.out)
    text = markdown(results)
    (out / "relaxation_paper.md").write_text(text)
    print(text)
    if results:
        plot_validation(results, out / "relaxation_paper_val.png")
        plot_samples(results, out / "relaxation_paper_samples.png")
        plot_dynamics(results, out / "relaxation_paper_dynamics.png")
        print(f"plots: {out}/relaxation_paper_{{val,samples,dynamics}}.png")


if __name__ == "__main__":
    main()
