"""Force fields on generated GFN2-xTB molecular dynamics (``relaxgnn data md``): relaxgnn's
MACE-style MACENet and NequIP-style TPNet, plain and relaxed, per molecule; energy and force MAE
of the projected models on the test frames (meV, meV/Å), mean ± std over seeds, minutes per
run, the paired difference of each relaxed arm to its plain arm with a verdict, and a plot of
the validation force MAE against epoch (machinery in ``compare.py``; resumable, side by side).

Arms (configs, with the data set replaced by ``relaxgnn.data.MD17`` on the molecule's file,
written to ``<out>/configs/``; the split as an override; stage two starts, as in MACE, at epoch
``epochs // 4 * 3``):
    mace        configs/md_ethanol_mace.yaml            (plain MACENet)
    mace_CR     configs/md_ethanol_mace_relaxed.yaml    (scheduled relaxation, the paper's)
    mace_ACE    configs/md_ethanol_mace_dual.yaml       (learned relaxation, ACE's constraint)
    tpnet       configs/md_ethanol_tpnet.yaml           (plain TPNet)

``--set KEY=VALUE`` (repeatable) changes an existing entry of every arm's config, KEY its dotted
path in the YAML and VALUE read as YAML: ``--set data.batch_size=5`` trains at the MACE paper's
batch size (the shipped MACENet configs use 3), ``--set
model.model.init_args.network.init_args.channels=48`` widens MACENet.

    relaxgnn data md --molecule ethanol --steps 20000 --temperature 500 --sample-every 10
    .venv/bin/python benchmarks/force_field.py --molecule ethanol --arms mace tpnet \\
        --seeds 1 --epochs 10 --val-every 1 --jobs 2 --threads 1

Aspirin (not in ASE's molecule set) starts from the first frame of the genuine MD17 sample
``datasets/md/aspirin_15frames.extxyz``::

    python -c "from ase.io import read; from relaxgnn.data.md_generate import generate_md; \\
        generate_md(read('datasets/md/aspirin_15frames.extxyz', 0), \\
        out='datasets/md/aspirin_xtb.npz', steps=20000, temperature=500.0, sample_every=10)"

For scale (a different data set: DFT rMD17, 950 training frames, converged training), the
published test MAE of MACE is 0.4 meV / 2.1 meV/Å on ethanol and 2.2 meV / 6.6 meV/Å on aspirin
(Batatia et al. 2022); numbers on this GFN2-xTB data are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from compare import Experiment, add_common_arguments, compare

from relaxgnn.atomic import atomic_write_text

ARMS = {"mace": "md_ethanol_mace.yaml", "mace_CR": "md_ethanol_mace_relaxed.yaml",
        "mace_ACE": "md_ethanol_mace_dual.yaml", "tpnet": "md_ethanol_tpnet.yaml",
        "tpnet_CR": "md_ethanol_tpnet_relaxed.yaml"}
PUBLISHED = {"ethanol": "MACE on DFT rMD17 ethanol 0.4 meV / 2.1 meV/Å",
             "aspirin": "MACE on DFT rMD17 aspirin 2.2 meV / 6.6 meV/Å",
             "malonaldehyde": "MACE on DFT rMD17 malonaldehyde 0.8 meV / 4.1 meV/Å"}


def set_entry(config: dict, key: str, value: object) -> None:
    """Replace the existing entry at the dotted path ``key`` of ``config`` (``KeyError`` naming
    the first missing part: a typo must not add an entry that nothing reads)."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    if not isinstance(node, dict) or last not in node:
        raise KeyError(last)
    node[last] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--data", default=None, help="default datasets/md/<molecule>_xtb.npz")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--out", default=None, help="default runs/force_field/<molecule>")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["mace", "mace_CR"],
                        help="the first is the reference the others are compared with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, e.g. data.batch_size=5")
    add_common_arguments(parser, epochs=10)
    args = parser.parse_args()
    data = args.data or f"datasets/md/{args.molecule}_xtb.npz"
    args.out = args.out or f"runs/force_field/{args.molecule}"  # results are keyed by arm, seed

    if not Path(data).is_file():
        parser.error(f"{data} does not exist: generate it first (see the docstring)")

    def overrides(args: argparse.Namespace, seed: int) -> list[str]:
        return [f"--data.split=[{args.train}, {args.val}, {args.test}]"]

    configs = Path(args.out) / "configs"  # each arm's config reading the molecule's file
    configs.mkdir(parents=True, exist_ok=True)
    arms = {}
    for i, arm in enumerate(args.arms):
        config = yaml.safe_load((Path(args.configs) / ARMS[arm]).read_text())
        config["data"]["dataset"] = {"class_path": "relaxgnn.data.MD17",
                                     "init_args": {"path": str(Path(data).resolve())}}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--set wants KEY=VALUE (e.g. data.batch_size=5), got {item!r}")
            try:
                set_entry(config, key, yaml.safe_load(value))
            except KeyError as err:
                parser.error(f"--set {item}: {ARMS[arm]} has no entry {err.args[0]!r}")
        name = f"{arm}_{args.molecule}.yaml"
        atomic_write_text(configs / name, yaml.safe_dump(config, sort_keys=False))
        arms["plain" if i == 0 else arm] = name
    args.configs = str(configs)
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
