"""The ``relaxgnn`` command line.

- ``relaxgnn fit|validate|test|predict --config FILE.yaml [--trainer.max_epochs 5 …]``: training
  on LightningCLI (see :mod:`relaxgnn.train.cli`); a shipped config also by its name
  (``--config md_ethanol_mace``, :mod:`relaxgnn.config_files`).
- ``relaxgnn project CKPT OUT``: a relaxed checkpoint → projected, exactly equivariant model file.
- ``relaxgnn eval MODEL.pt IN.xyz OUT.xyz``: energies and forces of every frame of a file, into
  extended XYZ, with errors against the frames' labels (:mod:`relaxgnn.evaluate`).
- ``relaxgnn data nbody --kind charged --out DIR``: generate the charged N-body data set.
- ``relaxgnn data md --molecule ethanol --steps N --out FILE.npz``: an MD17-like data set
  (Langevin MD at 500 K with GFN2-xTB from tblite, the ``md`` extra).
- ``relaxgnn data shapes --root DIR [--num-points N --samples-per-class K]``: generate the
  synthetic shape-classification set (:class:`relaxgnn.data.SyntheticShapes`).
- ``relaxgnn demo``: the equivariance report of every model on a molecule.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

from . import __version__

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relaxgnn", description="E(3)-equivariant GNNs with constraint relaxation.",
        epilog="Training: relaxgnn {fit,validate,test,predict} --config FILE.yaml "
               "(relaxgnn fit --help lists every option).")
    parser.add_argument("--version", action="version", version=f"relaxgnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in TRAIN_COMMANDS:
        commands.add_parser(name, help=f"{name} a model from a YAML config (LightningCLI)",
                            add_help=False)
    evaluate = commands.add_parser(
        "eval", help="predict energies and forces of every frame of a file (extended XYZ out)",
        description="Predict every frame of IN (any file ASE reads) with MODEL and write OUT, "
                    "extended XYZ with info['relaxgnn_energy'] (eV) and "
                    "arrays['relaxgnn_forces'] (eV/Å) beside what the frames carried; print the "
                    "errors against the frames' reference energies and forces where they have "
                    "them (their calculator's, or --energy-key / --forces-key).")
    evaluate.add_argument("model", help="a model file (model.pt, or relaxgnn project's)")
    evaluate.add_argument("input", help="frames, any format ase.io.read knows")
    evaluate.add_argument("output", help="the extended XYZ file to write")
    evaluate.add_argument("--energy-key", default="REF_energy")
    evaluate.add_argument("--forces-key", default="REF_forces")
    evaluate.add_argument("--index", default=":", help="frames to read (ase.io.read's syntax)")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    project = commands.add_parser("project", help="relaxed checkpoint -> projected model file")
    project.add_argument("checkpoint", help="a training checkpoint (.ckpt)")
    project.add_argument("out", help="the model file to write (.pt)")
    data = commands.add_parser("data", help="generate data sets")
    kinds = data.add_subparsers(dest="dataset", required=True)
    kinds.add_parser("nbody", help="the charged N-body set of EGNN/SEGNN (5 particles)",
                     add_help=False)  # its options: _nbody_parser
    md = kinds.add_parser("md", help="an MD17-like set: Langevin MD with GFN2-xTB (tblite)")
    md.add_argument("--molecule", default="ethanol", help="a name ase.build.molecule knows, or "
                    "ethanol/aspirin-style aliases (see relaxgnn.data.md_generate.MOLECULES)")
    md.add_argument("--steps", type=int, default=20_000)
    md.add_argument("--out", default=None, help="default datasets/md/<molecule>_xtb.npz")
    md.add_argument("--temperature", type=float, default=500.0, help="K")
    md.add_argument("--timestep-fs", type=float, default=0.5)
    md.add_argument("--friction", type=float, default=0.01, help="per fs")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--sample-every", type=int, default=10)
    md.add_argument("--equilibration-steps", type=int, default=1_000)
    md.add_argument("--method", default="GFN2-xTB")
    shapes = kinds.add_parser("shapes", help="the synthetic shape-classification set "
                              "(eight z-aligned primitives, SyntheticShapes)")
    shapes.add_argument("--root", "--out", dest="root", default="datasets/shapes",
                        help="cache directory")
    shapes.add_argument("--splits", nargs="+", choices=["train", "val", "test"],
                        default=["train", "val", "test"])
    for name, default in (("num-points", 300), ("samples-per-class", 100), ("seed", 0)):
        shapes.add_argument(f"--{name}", type=int, default=default)
    shapes.add_argument("--noise", type=float, default=0.02)
    shapes.add_argument("--deformation", type=float, default=0.2)
    demo = commands.add_parser("demo", help="equivariance report of every model on a molecule")
    demo.add_argument("--molecule", default="CH3CH2OH",
                      help="a name that ase.build.molecule knows (default: ethanol)")
    demo.add_argument("--trials", type=int, default=3, help="random transformations per check")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _nbody_parser(params: type) -> argparse.ArgumentParser:
    """``relaxgnn data nbody``: ``--out`` and one option per field of the parameter record
    ``params`` (``--num-train`` for ``num_train``), typed and defaulted like the field."""
    parser = argparse.ArgumentParser(
        prog="relaxgnn data nbody", description="Generate the charged N-body data set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--kind", choices=["charged"], default="charged")
    parser.add_argument("--out", default="datasets/nbody", help="cache directory")
    for field in dataclasses.fields(params):
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                            type=type(field.default), default=field.default,
                            help=f"{params.__name__}.{field.name}")
    return parser


def _data_nbody(argv: list[str]) -> int:
    """``relaxgnn data nbody [options]``: generate the cache (parsed apart from the other
    commands because its options come from ChargedParams, and importing it imports torch)."""
    from .data.nbody import ChargedParams, generate_charged

    generation = vars(_nbody_parser(ChargedParams).parse_args(argv))
    out = generation.pop("out")
    del generation["kind"]  # "charged", the only choice
    try:
        info = generate_charged(out, ChargedParams(**generation))
    except (OSError, ValueError, TypeError) as err:
        return _fail("data nbody", err)
    print(f"wrote {out}/charged_{{train,val,test}}.npz and charged.json "
          f"({info['frames']} frames; {info['frame_steps']})")
    return 0


def _fail(command: str, err: BaseException | str) -> int:
    if os.environ.get("RELAXGNN_TRACEBACK") and isinstance(err, BaseException):
        raise err
    print(f"relaxgnn {command}: error: {err}", file=sys.stderr)
    return 2


def config_error(err: argparse.ArgumentError, command: str = "fit") -> str:
    """A configuration error in one line, its cause first: jsonargparse nests it over several
    lines (``Parser key "model.model": Problem with given class_path …: Option 'x' is not
    accepted``, or a list of the subtypes a value failed); here the dotted key, the innermost
    cause (or the value and what was expected of it), and where the options are listed."""
    message = str(err)
    lines = [line.strip().rstrip(":") for line in message.splitlines() if line.strip()]
    if not lines:
        return "invalid configuration"
    keys = re.findall(r'Parser key "([^"]+)"', message)
    cause = lines[-1]
    if "Does not validate against any of the Union subtypes" in message:
        given = re.search(r"Given value: (.*?)(\. Got value|$)", message, re.MULTILINE)
        expected = [line.removeprefix("- ") for line in lines[lines.index("Errors") + 1:]
                    if line.startswith("- ")] if "Errors" in lines else []
        cause = (f"{given.group(1)!r} is not accepted" if given else "value not accepted") + (
            f" ({'; '.join(expected)})" if expected else "")
    key = ".".join(keys)
    return (f"{key}: {cause}" if key and key not in cause else cause) + (
        f" (`relaxgnn {command} --help` lists the options)")


def _missing_training_extra() -> str | None:
    """What to install when a package of the ``train`` extra cannot be imported (the first
    missing one named), or ``None``."""
    import importlib.util

    for module in ("lightning", "jsonargparse", "yaml", "matplotlib"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules
            found = False
        if not found:
            return f"it needs {module}, of the training extra: pip install 'relaxgnn[train]'"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAIN_COMMANDS:
        if missing := _missing_training_extra():
            return _fail(argv[0], missing)
        from .config_files import resolve_config_arguments
        from .train.cli import run_lightning

        try:
            resolved = resolve_config_arguments(argv)
        except FileNotFoundError as err:
            return _fail(argv[0], err)
        if argv == sys.argv[1:]:  # the process's own arguments: a DDP launch re-reads them
            sys.argv[1:] = resolved
        argv = resolved
        try:
            run_lightning(argv)
        except argparse.ArgumentError as err:  # the config or an option: its cause first
            return _fail(argv[0], config_error(err, argv[0]))
        except (ValueError, OSError, TypeError, FloatingPointError, KeyError) as err:
            return _fail(argv[0], err)  # OSError: e.g. a disk that fills up during the run
        return 0
    if argv[:2] == ["data", "nbody"]:
        return _data_nbody(argv[2:])
    args = build_parser().parse_args(argv)
    if args.command == "project":
        if missing := _missing_training_extra():
            return _fail("project", missing)
        from .train.cli import project_checkpoint

        try:
            path = project_checkpoint(args.checkpoint, args.out)
        except (ValueError, OSError) as err:
            return _fail("project", err)
        print(f"projected model written to {path}")
    elif args.command == "eval":
        from .evaluate import evaluate_file

        try:
            metrics = evaluate_file(args.model, args.input, args.output, args.energy_key,
                                    args.forces_key, args.index, args.batch_size,
                                    args.device, args.dtype)
        except (ValueError, OSError, TypeError) as err:
            return _fail("eval", err)
        print(f"predictions written to {args.output}")
        for name, value in metrics.items():
            print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")
    elif args.command == "data" and args.dataset == "shapes":
        from .data.shapes import SyntheticShapes

        try:
            for split in args.splits:
                data = SyntheticShapes(args.root, split, num_points=args.num_points,
                                       samples_per_class=args.samples_per_class,
                                       seed=args.seed, noise=args.noise,
                                       deformation=args.deformation)
                print(f"{data.cache_path}: {len(data)} clouds of {args.num_points} points, "
                      f"{data.num_classes} classes")
        except (OSError, ValueError) as err:
            return _fail("data shapes", err)
    elif args.command == "data" and args.dataset == "md":
        from .data.md_generate import generate_md

        out = args.out or f"datasets/md/{args.molecule}_xtb.npz"
        try:
            info = generate_md(args.molecule, steps=args.steps, out=out,
                               temperature=args.temperature, timestep_fs=args.timestep_fs,
                               friction=args.friction, seed=args.seed,
                               sample_every=args.sample_every,
                               equilibration_steps=args.equilibration_steps, method=args.method)
        except (OSError, ValueError, ImportError) as err:
            return _fail("data md", err)
        print(f"wrote {out} ({info.get('frames', '?')} frames) and its .json")
    elif args.command == "demo":
        from ase.collections import g2

        if args.molecule not in g2.names:
            print(f"relaxgnn demo: unknown molecule {args.molecule!r}; try one of "
                  f"{', '.join(sorted(g2.names)[:12])}, ...", file=sys.stderr)
            return 2
        from .demo import equivariance_report

        print(equivariance_report(args.molecule, args.trials, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
