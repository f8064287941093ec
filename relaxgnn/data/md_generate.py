"""Generate a molecular-dynamics data set with GFN2-xTB (tblite), in the rMD17 layout.

:func:`generate_md` runs Langevin dynamics (NVT) of one molecule with the GFN2-xTB energies and
forces of tblite's ASE calculator and writes every ``sample_every``-th frame to an ``.npz`` file
with the keys of the revised MD17 release (Christensen & von Lilienfeld 2020):

- ``nuclear_charges`` ``(N,)`` int, ``coords`` ``(F, N, 3)`` Å,
- ``energies`` ``(F,)`` kcal/mol, ``forces`` ``(F, N, 3)`` kcal/mol/Å,

so that :class:`relaxgnn.data.MD17` reads it back (in eV and eV/Å); a JSON file with every
parameter is written beside it (same name, ``.json``). :class:`GeneratedMD` is such a data set
generated on first use. tblite is the optional ``md`` extra (``pip install relaxgnn[md]``).
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch_geometric.data import Data

from .. import __version__
from ..atomic import atomic_write
from .md17 import MD17, energy_factor

if TYPE_CHECKING:
    from ase import Atoms

MOLECULES = {
    "ethanol": "CH3CH2OH",
    "methanol": "CH3OH",
    "benzene": "C6H6",
    "water": "H2O",
    "acetaldehyde": "CH3CHO",
    "acetic acid": "CH3COOH",
}
"""Common names understood by :func:`generate_md`, as ``ase.build.molecule`` names."""


def resolve_molecule(molecule: str | Atoms) -> tuple[str, Atoms]:
    """``(name, atoms)``: a common name of :data:`MOLECULES`, any ``ase.build.molecule`` name
    (the G2 set, e.g. ``"CH3CH2OH"``), or an ``ase.Atoms`` (copied)."""
    from ase import Atoms
    from ase.build import molecule as build

    if isinstance(molecule, Atoms):
        return molecule.get_chemical_formula(), molecule.copy()
    name = MOLECULES.get(str(molecule).lower(), str(molecule))
    try:
        atoms = build(name)
    except KeyError:
        from ase.collections import g2

        raise ValueError(
            f"unknown molecule {molecule!r}: use one of {sorted(MOLECULES)} or a name that "
            f"ase.build.molecule knows (the G2 set: {', '.join(sorted(g2.names)[:8])}, ...)"
        ) from None
    return str(molecule), atoms


def generate_md(
    molecule: str | Atoms = "ethanol",
    steps: int = 20_000,
    out: str | os.PathLike | None = None,
    temperature: float = 500.0,
    timestep_fs: float = 0.5,
    friction: float = 0.01,
    seed: int = 0,
    sample_every: int = 10,
    equilibration_steps: int = 1_000,
    method: str = "GFN2-xTB",
    progress: bool = True,
) -> dict[str, Any]:
    """Langevin MD of ``molecule`` with GFN2-xTB; write ``out`` (rMD17 ``.npz``) and its
    ``.json``.

    The molecule starts from ``ase.build.molecule`` (ethanol = ``"CH3CH2OH"``) with
    Maxwell–Boltzmann velocities at ``temperature`` (no net momentum or rotation), is
    thermalised for ``equilibration_steps`` (not written), then run ``steps`` steps of
    ``ase.md.langevin.Langevin`` (centre of mass fixed with ``ase.constraints.FixCom``, ASE's
    recommended replacement of ``fixcm``); the state after every ``sample_every``-th of these
    steps is a frame, so there are ``steps // sample_every`` frames,
    ``sample_every * timestep_fs`` apart. The forces written are the calculator's, not the
    constrained ones. Every random number comes from ``numpy.random.default_rng(seed)``.

    Threads: unless ``OMP_NUM_THREADS`` is set, tblite runs on one OpenMP thread here (the
    variable is set, and the OpenMP runtime's thread count, which torch has already fixed by
    the time this runs, is set to 1 too; both are restored afterwards). A molecule of a few
    atoms is far too small for threads: with two or more, tblite is 10-100× slower (on a busy
    machine, up to 200×).

    Args:
        molecule: a name (:func:`resolve_molecule`) or an ``ase.Atoms``.
        steps: production steps (after equilibration).
        out: the ``.npz`` file; its directory must exist. Default
            ``datasets/md/<molecule>_xtb.npz``.
        temperature: K, of the initial velocities and of the thermostat.
        timestep_fs: integration step in fs.
        friction: Langevin friction in 1/fs.
        seed: seed of the velocities and of the thermostat's noise.
        sample_every: steps between written frames.
        equilibration_steps: steps run before the first frame.
        method: tblite's method (``"GFN2-xTB"`` or ``"GFN1-xTB"``).
        progress: show a tqdm progress bar.

    Returns:
        The metadata written to the ``.json`` (parameters, frame count, speed, versions).

    Raises:
        FileNotFoundError: ``out``'s directory does not exist.
        ValueError: an unknown molecule or a bad parameter.
        ImportError: tblite is not installed (``pip install relaxgnn[md]``).
    """
    for name, value, least in (("steps", steps, 1), ("sample_every", sample_every, 1),
                               ("equilibration_steps", equilibration_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if sample_every > steps:
        raise ValueError(f"sample_every ({sample_every}) exceeds steps ({steps}): no frame")
    for name, value in (("temperature", temperature), ("timestep_fs", timestep_fs),
                        ("friction", friction)):
        positive = name == "timestep_fs"
        if not np.isfinite(value) or value < 0 or (positive and value == 0):
            kind = "positive" if positive else "non-negative"
            raise ValueError(f"{name} must be a finite {kind} number, got {value!r}")
    name, atoms = resolve_molecule(molecule)
    out = Path(out) if out is not None else Path("datasets/md") / f"{_slug(name)}_xtb.npz"
    if out.suffix != ".npz":
        raise ValueError(f"the output file must end in .npz, got {out}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the output directory {out.parent} does not exist (create it "
                                f"first); nothing was run")
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise ImportError("generate_md needs tblite for GFN2-xTB energies and forces: "
                          "pip install relaxgnn[md]  (or pip install 'tblite>=0.4')") from err
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    atoms.calc = TBLite(method=method, verbosity=0)
    atoms.set_constraint(FixCom())
    thermalize(atoms, temperature, rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature,
                        friction=friction / units.fs, fixcm=False, rng=rng)
    frames = steps // sample_every
    coords = np.empty((frames, len(atoms), 3))
    energies = np.empty(frames)
    forces = np.empty((frames, len(atoms), 3))
    total = equilibration_steps + frames * sample_every
    bar = tqdm(total=total, unit="step", disable=not progress,
               desc=f"{method} MD of {name} at {temperature:g} K")
    start = time.perf_counter()
    with bar, single_openmp_thread() as threads:
        for k in range(total):
            dynamics.step()
            bar.update()
            done = k + 1 - equilibration_steps
            if done > 0 and done % sample_every == 0:
                frame = done // sample_every - 1
                coords[frame] = atoms.get_positions()
                energies[frame] = atoms.get_potential_energy()
                forces[frame] = atoms.get_forces(apply_constraint=False)
    wall = time.perf_counter() - start
    if not (np.isfinite(energies).all() and np.isfinite(forces).all()):
        raise FloatingPointError(f"{method} returned non-finite energies or forces for {name}; "
                                 "nothing was written")
    kcal_mol = energy_factor("kcal/mol")  # eV per kcal/mol
    arrays = {"nuclear_charges": atoms.numbers.astype(np.int64), "coords": coords,
              "energies": energies / kcal_mol, "forces": forces / kcal_mol}
    info = {
        "format": "rMD17 npz: nuclear_charges (N,), coords (F, N, 3) Å, energies (F,) kcal/mol, "
                  "forces (F, N, 3) kcal/mol/Å",
        "file": out.name,
        "molecule": name,
        "formula": atoms.get_chemical_formula(),
        "method": method,
        "calculator": f"tblite {_version('tblite')} (tblite.ase.TBLite)",
        "dynamics": "ase.md.langevin.Langevin (NVT), centre of mass fixed (FixCom)",
        "initial_state": "ase.build.molecule geometry, Maxwell-Boltzmann velocities at the "
                         "temperature, zero momentum and angular momentum",
        "temperature_K": temperature,
        "timestep_fs": timestep_fs,
        "friction_per_fs": friction,
        "seed": seed,
        "steps": steps,
        "equilibration_steps": equilibration_steps,
        "sample_every": sample_every,
        "frames": frames,
        "frame_spacing_fs": sample_every * timestep_fs,
        "frame_convention": f"frame k is the state after step equilibration_steps + "
                            f"{sample_every}*(k+1)",
        "kcal_per_mol_in_eV": kcal_mol,
        "openmp_threads": threads,
        "wall_s": round(wall, 3),
        "steps_per_s": round(total / wall, 2) if wall > 0 else None,
        "versions": {"relaxgnn": __version__, "ase": _version("ase"),
                     "tblite": _version("tblite"), "numpy": np.__version__},
    }
    atomic_write(out, lambda f: np.savez(f, **arrays))
    text = json.dumps(info, indent=2, ensure_ascii=False).encode()
    atomic_write(out.with_suffix(".json"), lambda f: f.write(text))
    return info


def thermalize(atoms: Atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann momenta at ``temperature`` (K): ASE's ``thermalize_momenta``
    (ASE ≥ 3.29), else ``MaxwellBoltzmannDistribution``."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        return
    thermalize_momenta(atoms, temperature, rng=rng)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower())


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _libgomp() -> Any:
    """The GNU OpenMP runtime (the copy already loaded, e.g. torch's, if any), or ``None``."""
    try:
        lib = ctypes.CDLL("libgomp.so.1")
        lib.omp_get_max_threads.restype = ctypes.c_int
        return lib
    except (OSError, AttributeError):
        return None


@contextmanager
def single_openmp_thread() -> Iterator[int | str]:
    """Run tblite on one OpenMP thread unless ``OMP_NUM_THREADS`` is set (then that is kept).

    Setting the variable alone is not enough in a process that has imported torch: its OpenMP
    runtime (which tblite shares) read the variable when it was loaded. So this also sets
    torch's and the runtime's thread count, and restores all three afterwards. Yields the
    thread setting in force.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        yield os.environ["OMP_NUM_THREADS"]
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    gomp = _libgomp()
    gomp_threads = gomp.omp_get_max_threads() if gomp is not None else None
    torch_threads = torch.get_num_threads()
    if gomp is not None:
        gomp.omp_set_num_threads(1)
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        del os.environ["OMP_NUM_THREADS"]
        if gomp is not None:
            gomp.omp_set_num_threads(gomp_threads)
        torch.set_num_threads(torch_threads)  # last: torch may share the runtime above


__all__ = ["MOLECULES", "generate_md", "resolve_molecule", "single_openmp_thread",
           "thermalize"]


# the parameters recorded in the .json that decide the frames (compared on first use)
_RECORDED = {"molecule": "molecule", "method": "method", "temperature_K": "temperature",
             "timestep_fs": "timestep_fs", "friction_per_fs": "friction", "seed": "seed",
             "steps": "steps", "equilibration_steps": "equilibration_steps",
             "sample_every": "sample_every"}


class GeneratedMD(MD17):
    """A GFN2-xTB trajectory (:func:`generate_md`) as an energy-and-forces data set, generated
    on first use and cached at ``path`` (with its ``.json``): a later use with the same
    parameters reads the file; with other parameters it is generated again (atomically, so an
    interrupted generation leaves the old file). Energies in eV, forces in eV/Å.

    Args:
        path: the ``.npz`` file (its directory is created).
        molecule, steps, temperature, timestep_fs, friction, seed, sample_every,
            equilibration_steps, method: as :func:`generate_md`.
        transform, dtype: see :class:`~relaxgnn.data.md17.EnergyForceDataset`.
        progress: show the generation's progress bar.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        molecule: str = "ethanol",
        steps: int = 20_000,
        temperature: float = 500.0,
        timestep_fs: float = 0.5,
        friction: float = 0.01,
        seed: int = 0,
        sample_every: int = 10,
        equilibration_steps: int = 1_000,
        method: str = "GFN2-xTB",
        transform: Callable[[Data], Data] | None = None,
        dtype: torch.dtype = torch.float32,
        progress: bool = True,
    ) -> None:
        path = Path(path)
        wanted = dict(molecule=resolve_molecule(molecule)[0], steps=steps,
                      temperature=temperature, timestep_fs=timestep_fs, friction=friction,
                      seed=seed, sample_every=sample_every,
                      equilibration_steps=equilibration_steps, method=method)
        if self._recorded(path) != wanted:
            path.parent.mkdir(parents=True, exist_ok=True)
            generate_md(molecule, out=path, progress=progress,
                        **{k: v for k, v in wanted.items() if k != "molecule"})
        super().__init__(path, energy_unit="kcal/mol", transform=transform, dtype=dtype)

    @staticmethod
    def _recorded(path: Path) -> dict[str, Any] | None:
        """The generation parameters of an existing file (from its ``.json``), or ``None``."""
        info_path = path.with_suffix(".json")
        if not (path.is_file() and info_path.is_file()):
            return None
        try:
            info = json.loads(info_path.read_text())
            return {ours: info[theirs] for theirs, ours in _RECORDED.items()}
        except (ValueError, KeyError, TypeError):
            return None  # unreadable or foreign metadata: generate again
