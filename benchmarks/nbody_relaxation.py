"""Plain versus relaxed training on the charged N-body task, the comparison of the relaxation
paper: test MSE of the projected models, mean ± std over seeds, and a plot of validation MSE
against epoch (machinery in ``compare.py``).

    .venv/bin/python benchmarks/nbody_relaxation.py --model segnn --seeds 3 --epochs 40

The paper-scale run (1000 epochs, 3,000 training samples, the full validation and test sets)
on a GPU:

    .venv/bin/python benchmarks/nbody_relaxation.py --model segnn --seeds 3 --epochs 1000 \\
        --train-samples 3000 --eval-samples 2000 --accelerator gpu --val-every 5
"""

from __future__ import annotations

import argparse

from compare import Experiment, add_common_arguments, compare

PUBLISHED = {"segnn": 0.0043, "egnn": 0.0070}  # test MSE, 3,000 training samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PUBLISHED), default="segnn")
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--data", default="datasets/nbody")
    parser.add_argument("--out", default="runs/nbody_relaxation")
    add_common_arguments(parser, epochs=40)
    args = parser.parse_args()

    def overrides(args: argparse.Namespace, seed: int) -> list[str]:
        sizes = {"train": args.train_samples, "val": args.eval_samples,
                 "test": args.eval_samples}
        return [f"--data.{s}.init_args.max_samples={n}" for s, n in sizes.items()] + \
            [f"--data.{s}.init_args.root={args.data}" for s in sizes]

    exp = Experiment(
        name=f"nbody_{args.model}", overrides=overrides,
        arms={"plain": f"nbody_{args.model}.yaml", "relaxed": f"nbody_{args.model}_relaxed.yaml"},
        metrics=[("test/mse", "test MSE (projected)")], val_metric="val/mse",
        published=f"{args.model.upper()} test MSE {PUBLISHED[args.model]} (3,000 samples, "
                  "1000 epochs)")
    compare(exp, args, f"{args.train_samples} training trajectories, test on "
                       f"{args.eval_samples}")


if __name__ == "__main__":
    main()
