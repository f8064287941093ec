"""Energies and forces from any file ASE reads (extended XYZ, ASE databases, ...).

Each frame's energy and forces are taken, in this order, from its calculator's results
(``atoms.calc``: what ``get_potential_energy()`` / ``get_forces()`` return, e.g. the
``SinglePointCalculator`` that ``energy=`` / ``forces`` of an extended XYZ file become), from
``atoms.info[energy_key]`` / ``atoms.arrays[forces_key]``, and, for an ASE database, from the
row's ``data`` (where e.g. SchNetPack stores them). Items have the layout of
:class:`relaxgnn.data.md17.EnergyForceDataset`: ``Data(z, pos, energy (1,), forces)`` in eV, Å
and eV/Å.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch_geometric.data import Data

from .md17 import (
    EnergyForceDataset,
    check_atomic_numbers,
    check_finite,
    check_real,
    energy_factor,
)

if TYPE_CHECKING:
    from ase import Atoms

_DB_FORMATS = ("db", "json", "postgresql", "mysql", "aselmdb")


class ASEDataset(EnergyForceDataset):
    """Frames with energies and forces read with ASE.

    Args:
        path: a file ``ase.io.read`` understands, or an ASE database (``.db``, ``.json``).
        energy_unit: unit of the stored energies (forces: per Å), converted to eV; e.g. the
            MD17 samples store kcal/mol (see :data:`relaxgnn.data.md17.ENERGY_UNITS`).
        index: frames to read, in ``ase.io.read``'s syntax (``":"``, ``"2:10"``, ``"-1"``).
        energy_key, forces_key: the ``info`` / ``arrays`` / database ``data`` keys used when the
            frame has no calculator results.
        format: file format for ``ase.io.read`` (guessed from the file by default).
        transform, dtype: see :class:`EnergyForceDataset`.

    Raises:
        FileNotFoundError: the file does not exist.
        IndexError: an int ``index`` past the last frame.
        ValueError: naming the file, when ASE cannot read it (truncated or corrupt), and the
            frame index (and atom) when a frame lacks its energy or forces, or has a
            non-finite position, energy or force or an atomic number outside 1 to 118.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        energy_unit: str = "eV",
        index: str | int | slice = ":",
        energy_key: str = "energy",
        forces_key: str = "forces",
        format: str | None = None,
        transform: Callable[[Data], Data] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ASE data file {self.path} does not exist")
        factor = energy_factor(energy_unit)
        numbers, positions, energies, forces = [], [], [], []
        for i, atoms, extra in _frames(self.path, index, format):
            energy, force = _energy_forces(atoms, extra, energy_key, forces_key)
            where = f"{self.path}, frame {i}"
            if energy is None:
                raise ValueError(
                    f"{where} has no energy (no calculator result, info[{energy_key!r}] "
                    f"or data[{energy_key!r}])"
                )
            if force is None:
                raise ValueError(
                    f"{where} has no forces (no calculator result, arrays[{forces_key!r}] "
                    f"or data[{forces_key!r}])"
                )
            energy, force = _as_real(energy, where, "energy"), _as_real(force, where, "forces")
            if energy.size != 1:
                raise ValueError(f"{where}: energy must be one number, got shape {energy.shape}")
            if force.shape != (len(atoms), 3):
                raise ValueError(
                    f"{where}: forces have shape {force.shape}, expected ({len(atoms)}, 3)"
                )
            z = check_atomic_numbers(atoms.numbers, where, "atomic numbers", ("atom",))
            position = check_real(atoms.positions, where, "positions")
            check_finite(position, where, "positions", ("atom",))
            check_finite(energy.reshape(()), where, "energy", ())
            check_finite(force, where, "forces", ("atom",))
            numbers.append(z)
            positions.append(position)
            energies.append(float(energy.reshape(())) * factor)
            forces.append(force * factor)
        if not energies:
            raise ValueError(f"{self.path}: no frames selected by index {index!r}")
        super().__init__(numbers, positions, energies, forces, transform, dtype)

    def __repr__(self) -> str:
        return f"ASEDataset({len(self)}, path={str(self.path)!r})"


def _as_real(value, where: str, field: str) -> np.ndarray:
    """``value`` (a calculator result, ``info`` entry or database field) as a float64 array."""
    try:
        value = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{where}: {field} must be a number or an array, got {value!r}") from err
    if value.dtype.kind in "OUS":  # e.g. `energy=abc` of an extended XYZ comment line
        raise ValueError(f"{where}: {field} must be a number, got {value.tolist()!r}")
    return check_real(value, where, field)


def _read(path: Path, fmt: str, index: int | slice) -> Atoms | list[Atoms]:
    """``ase.io.read``, its errors on a truncated or corrupt file as one ``ValueError`` naming
    the file (ASE raises XYZError, KeyError, RuntimeError, ... depending on the damage)."""
    import ase.io

    try:
        return ase.io.read(str(path), index=index, format=fmt)
    except StopIteration:  # an int index past the last frame
        raise IndexError(f"{path}: frame {index} is out of range (the file ends before)") from None
    except Exception as err:
        raise ValueError(
            f"{path}: cannot be read as {fmt} (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err


def _rows(path: Path, fmt: str) -> list:
    """All rows of an ASE database; errors of a corrupt database as a ``ValueError`` naming it."""
    import ase.db

    try:
        return list(ase.db.connect(str(path), type=fmt).select())
    except Exception as err:  # sqlite3.DatabaseError, json.JSONDecodeError, ...
        raise ValueError(
            f"{path}: cannot be read as {fmt} (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err


def _frames(path: Path, index, format: str | None) -> Iterator[tuple[int, Atoms, dict]]:
    """``(frame number in the file, atoms, database row data)`` of the selected frames."""
    from ase import Atoms  # imported here: relaxgnn imports without ASE
    from ase.io.formats import UnknownFileTypeError, filetype, string2index

    try:
        fmt = format or filetype(str(path))
    except UnknownFileTypeError as err:
        raise ValueError(f"{path}: unknown file format ({err}); pass `format`") from None
    selection = string2index(index) if isinstance(index, str) else index
    if fmt in _DB_FORMATS:
        rows = _rows(path, fmt)
        for i in _select(range(len(rows)), selection, path):
            yield i, rows[i].toatoms(), dict(rows[i].get("data", {}))
        return
    numbering = _forward_numbering(selection)
    if numbering is None:  # negative or reversed selections need the frame count: read all
        frames = _read(path, fmt, slice(None))
        for i in _select(range(len(frames)), selection, path):
            yield i, frames[i], {}
        return
    frames = _read(path, fmt, selection)
    frames = [frames] if isinstance(frames, Atoms) else frames
    for i, atoms in zip(numbering, frames, strict=False):
        yield i, atoms, {}


def _select(numbers: range, selection: int | slice, path: Path) -> list[int]:
    try:
        chosen = numbers[selection]
    except IndexError:
        raise IndexError(
            f"{path}: frame {selection} is out of range ({len(numbers)} frames)"
        ) from None
    return [chosen] if isinstance(chosen, int) else list(chosen)


def _forward_numbering(selection: int | slice) -> range | None:
    """Frame numbers of a selection that counts forward from the start, else ``None``."""
    if isinstance(selection, int):
        return range(selection, selection + 1) if selection >= 0 else None
    start, stop, step = selection.start or 0, selection.stop, selection.step or 1
    if start < 0 or step < 0 or (stop is not None and stop < 0):
        return None
    return range(start, stop if stop is not None else 2**62, step)


def _energy_forces(atoms: Atoms, extra: dict, energy_key: str, forces_key: str):
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get(energy_key, extra.get(energy_key)))
    forces = results.get("forces", atoms.arrays.get(forces_key, extra.get(forces_key)))
    return energy, forces
