"""Force fields on generated GFN2-xTB molecular dynamics (``relaxgnn data md``): relaxgnn's
MACE-style MACENet and NequIP-style TPNet, plain and relaxed, per molecule; energy and force MAE
of the projected models on the test frames (meV, meV/Å), mean ± std over seeds, minutes per
run, the paired difference of each relaxed arm to its plain arm with a verdict, and a plot of
the validation force MAE against epoch (machinery in ``compare.py``; resumable, side by side).

Arms (configs, with the molecule's data file and split as overrides):
    mace        configs/md_ethanol_mace.yaml            (plain MACENet)
    mace_CR     configs/md_ethanol_mace_relaxed.yaml    (scheduled relaxation, the paper's)
    tpnet       configs/md_ethanol_tpnet.yaml           (plain TPNet)

    relaxgnn data md --molecule ethanol --steps 20000 --temperature 500 --sample-every 10
    .venv/bin/python benchmarks/force_field.py --molecule ethanol --arms mace tpnet \\
        --seeds 1 --epochs 10 --val-every 1 --jobs 2 --threads 1

For scale (a different data set: DFT rMD17, 950 training frames, converged training), the
published test MAE of MACE is 0.4 meV / 2.1 meV/Å on ethanol and 2.2 meV / 6.6 meV/Å on aspirin
(Batatia et al. 2022); numbers on this GFN2-xTB data are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse

from compare import Experiment, add_common_arguments, compare

ARMS = {"mace": "md_ethanol_mace.yaml", "mace_CR": "md_ethanol_mace_relaxed.yaml",
        "tpnet": "md_ethanol_tpnet.yaml", "tpnet_CR": "md_ethanol_tpnet_relaxed.yaml"}
PUBLISHED = {"ethanol": "MACE on DFT rMD17 ethanol 0.4 meV / 2.1 meV/Å",
             "aspirin": "MACE on DFT rMD17 aspirin 2.2 meV / 6.6 meV/Å",
             "malonaldehyde": "MACE on DFT rMD17 malonaldehyde 0.8 meV / 4.1 meV/Å"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--data", default=None, help="default datasets/md/<molecule>_xtb.npz")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--out", default="runs/force_field")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["mace", "mace_CR"],
                        help="the first is the reference the others are compared with")
    add_common_arguments(parser, epochs=10)
    args = parser.parse_args()
    data = args.data or f"datasets/md/{args.molecule}_xtb.npz"

    def overrides(args: argparse.Namespace, seed: int) -> list[str]:
        return [f"--data.dataset.init_args.path={data}",
                f"--data.dataset.init_args.molecule={args.molecule}",
                f"--data.split=[{args.train}, {args.val}, {args.test}]"]

    arms = {("plain" if i == 0 else arm): ARMS[arm] for i, arm in enumerate(args.arms)}
    exp = Experiment(
        name=f"ff_{args.molecule}_{args.arms[0]}", overrides=overrides, arms=arms,
        metrics=[("test/energy_mae_meV", "energy MAE (meV)"),
                 ("test/force_mae_meV_per_A", "force MAE (meV/Å)")],
        val_metric="val/force_mae_meV_per_A",
        published=PUBLISHED.get(args.molecule, "none") + " (a different data set: DFT, not "
                  "GFN2-xTB, and converged training)")
    compare(exp, args, f"{args.molecule}, {args.train} training frames, test on {args.test}; "
                       f"'plain' is {args.arms[0]}")


if __name__ == "__main__":
    main()
