"""The ``relaxgnn`` command line.

``relaxgnn demo`` prints the equivariance report of every model on a molecule. Training
commands (``fit``, ``validate``, ``test``) arrive with the training engine.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaxgnn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"relaxgnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="equivariance report of every model on a molecule")
    demo.add_argument(
        "--molecule",
        default="CH3CH2OH",
        help="a name that ase.build.molecule knows (default: ethanol)",
    )
    demo.add_argument("--trials", type=int, default=3, help="random transformations per check")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ase.collections import g2

        if args.molecule not in g2.names:
            print(
                f"relaxgnn demo: unknown molecule {args.molecule!r}; try one of "
                f"{', '.join(sorted(g2.names)[:12])}, ...",
                file=sys.stderr,
            )
            return 2
        from .demo import equivariance_report

        print(equivariance_report(args.molecule, args.trials, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
