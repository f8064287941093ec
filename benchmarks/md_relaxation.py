"""Plain versus relaxed TPNet force fields on a generated ethanol set (GFN2-xTB Langevin MD at
500 K, `relaxgnn data md`): energy and force MAE of the projected models (meV, meV/Å), mean ±
std over seeds, the paired difference of each relaxed arm to plain with a verdict, and a plot of
the validation force MAE against epoch (machinery in ``compare.py``). Arms: plain
(``configs/md_ethanol_tpnet.yaml``), scheduled CR (``md_ethanol_tpnet_relaxed.yaml``) and
learned ACE (``md_ethanol_tpnet_dual.yaml``, with ``--arms CR ACE``).

    relaxgnn data md --molecule ethanol --steps 20000 --out datasets/md/ethanol_xtb.npz
    .venv/bin/python benchmarks/md_relaxation.py --seeds 3 --epochs 4 --val-every 1 \
        --jobs 2 --threads 1
"""

from __future__ import annotations

import argparse

from compare import Experiment, add_common_arguments, compare

ARMS = {"plain": "md_ethanol_tpnet.yaml", "CR": "md_ethanol_tpnet_relaxed.yaml",
        "ACE": "md_ethanol_tpnet_dual.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="datasets/md/ethanol_xtb.npz")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--out", default="runs/md_relaxation")
    parser.add_argument("--arms", nargs="+", choices=[a for a in ARMS if a != "plain"],
                        default=["CR"], help="relaxed arms beside plain")
    add_common_arguments(parser, epochs=20)
    args = parser.parse_args()

    def overrides(args: argparse.Namespace, seed: int) -> list[str]:
        return [f"--data.dataset.init_args.path={args.data}",
                f"--data.split=[{args.train}, {args.val}, {args.test}]"]

    exp = Experiment(
        name="md_ethanol_tpnet", overrides=overrides,
        arms={arm: ARMS[arm] for arm in ["plain", *args.arms]},
        metrics=[("test/energy_mae_meV", "energy MAE (meV)"),
                 ("test/force_mae_meV_per_A", "force MAE (meV/Å)")],
        val_metric="val/force_mae_meV_per_A",
        published="none for GFN2-xTB ethanol (the paper's MD experiments use MD17 with other "
                  "models)")
    compare(exp, args, f"{args.train} training frames, test on {args.test}")


if __name__ == "__main__":
    main()
