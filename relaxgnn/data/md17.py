"""MD17 and revised MD17 trajectories (energies and forces) from their ``.npz`` files.

- MD17 (Chmiela et al. 2017, sgdml.org): keys ``z`` ``(N,)``, ``R`` ``(F, N, 3)`` Å,
  ``E`` ``(F, 1)`` kcal/mol, ``F`` ``(F, N, 3)`` kcal/mol/Å.
- rMD17 (Christensen & von Lilienfeld 2020, figshare 12672038): ``nuclear_charges``, ``coords``,
  ``energies`` ``(F,)``, ``forces``, same units.

Energies and forces are converted to eV and eV/Å with ASE's constants:
1 kcal/mol = ``ase.units.kcal / ase.units.mol`` = 0.0433641039 eV (ASE's CODATA 2014 values).

Every frame becomes ``Data(z, pos, energy, forces)``: ``z`` ``(N,)`` long, ``pos`` ``(N, 3)`` Å,
``energy`` ``(1,)`` eV, so that a batch of ``G`` frames has ``energy`` of shape ``(G,)``, and
``forces`` ``(N, 3)`` eV/Å. :class:`EnergyForceDataset` holds that layout for any source
(see also :class:`relaxgnn.data.ase_dataset.ASEDataset`).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .base import GraphDataset

ENERGY_UNITS = ("eV", "meV", "kcal/mol", "kJ/mol", "Hartree")
"""Energy units understood by the loaders; forces are in the energy unit per Å."""
MAX_ATOMIC_NUMBER = 118
"""The largest atomic number a loader accepts (oganesson)."""

# what numpy / zipfile raise on a truncated or corrupt .npz (missing files are checked first)
_NPZ_ERRORS = (OSError, EOFError, ValueError, TypeError, zipfile.BadZipFile, zlib.error)


# (MD17 key, rMD17 key) of each field
_NPZ_KEYS = {
    "atomic numbers": ("z", "nuclear_charges"),
    "positions": ("R", "coords"),
    "energies": ("E", "energies"),
    "forces": ("F", "forces"),
}


def check_real(values, where: str, field: str) -> np.ndarray:
    """``values`` as a float64 array; ``ValueError`` naming ``where`` and ``field`` when they are
    not real numbers (strings, complex, booleans are not cast silently)."""
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{where}: {field} must be real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def check_finite(array: np.ndarray, where: str, field: str, axes: Sequence[str]) -> None:
    """``ValueError`` at the first NaN or infinity of ``array``, naming ``where``, its position
    along ``axes`` (e.g. ``("frame", "atom")``; trailing axes such as x, y, z are not named)
    and ``field``."""
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        first = tuple(int(i) for i in bad[0])
        raise ValueError(f"{where}{_place(axes, first)}: non-finite {field}: {array[first]}")


def check_atomic_numbers(values, where: str, field: str, axes: Sequence[str]) -> np.ndarray:
    """``values`` as an int64 array; ``ValueError`` at the first entry that is not an integer
    from 1 to :data:`MAX_ATOMIC_NUMBER` (6.7 is not read as 6), naming ``where``, its position
    along ``axes`` and ``field``."""
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        array = check_real(array, where, field)
    with np.errstate(invalid="ignore"):
        valid = (array == np.round(array)) & (array >= 1) & (array <= MAX_ATOMIC_NUMBER)
    bad = np.argwhere(~valid)
    if len(bad):
        first = tuple(int(i) for i in bad[0])
        value = array[first]
        shown = int(value) if float(value).is_integer() else value
        raise ValueError(
            f"{where}{_place(axes, first)}: {field} must be integers from 1 to "
            f"{MAX_ATOMIC_NUMBER}, got {shown}"
        )
    return array.astype(np.int64)


def _place(axes: Sequence[str], index: tuple[int, ...]) -> str:
    """``", frame 3, atom 5"`` for ``axes=("frame", "atom")`` and ``index=(3, 5, 1)``."""
    return "".join(f", {name} {i}" for name, i in zip(axes, index[: len(axes)], strict=True))


def energy_factor(unit: str) -> float:
    """eV per ``unit`` (one of :data:`ENERGY_UNITS`), from ``ase.units`` (CODATA 2014):
    e.g. 1 kcal/mol = ``units.kcal / units.mol`` = 0.0433641039 eV."""
    from ase import units  # imported here: relaxgnn imports without ASE

    factors = {
        "eV": 1.0,
        "meV": 1e-3,
        "kcal/mol": units.kcal / units.mol,
        "kJ/mol": units.kJ / units.mol,
        "Hartree": units.Hartree,
    }
    if unit not in factors:
        raise ValueError(f"unknown energy unit {unit!r}; choose one of {list(factors)}")
    return factors[unit]


class EnergyForceDataset(GraphDataset):
    """Frames of atoms with energies and forces, stored packed (one tensor per field).

    Args:
        numbers: atomic numbers of each frame.
        positions: ``(N_f, 3)`` positions of each frame, Å.
        energies: one energy per frame, eV.
        forces: ``(N_f, 3)`` forces of each frame, eV/Å.
        transform: applied to each ``Data`` on access.
        dtype: floating dtype of ``pos``, ``energy`` and ``forces`` (stored in float64).

    Indexing follows PyG (:mod:`relaxgnn.data.base`): an int gives
    ``Data(z, pos, energy (1,), forces)``; a slice, list, tensor or mask gives a view, whose
    :attr:`energy` is its own.
    """

    def __init__(
        self,
        numbers: Sequence[np.ndarray],
        positions: Sequence[np.ndarray],
        energies: Sequence[float] | np.ndarray,
        forces: Sequence[np.ndarray],
        transform: Callable[[Data], Data] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(transform)
        if not len(numbers) == len(positions) == len(energies) == len(forces):
            raise ValueError(
                f"got {len(numbers)} atomic-number arrays, {len(positions)} position arrays, "
                f"{len(energies)} energies and {len(forces)} force arrays; expected one per frame"
            )
        sizes = torch.tensor([len(z) for z in numbers], dtype=torch.long)
        self._ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self._z = torch.as_tensor(np.concatenate(numbers) if len(numbers) else [], dtype=torch.long)
        self._pos = _packed(positions)
        self._forces = _packed(forces)
        self._energy = torch.as_tensor(np.asarray(energies, dtype=np.float64).reshape(-1))
        self.dtype = dtype

    def len(self) -> int:
        return self._energy.numel()

    def get(self, idx: int) -> Data:
        lo, hi = int(self._ptr[idx]), int(self._ptr[idx + 1])
        return Data(
            z=self._z[lo:hi],
            pos=self._pos[lo:hi].to(self.dtype),
            energy=self._energy[idx : idx + 1].to(self.dtype),
            forces=self._forces[lo:hi].to(self.dtype),
        )

    @property
    def energy(self) -> Tensor:
        """All energies, ``(len(self),)``, eV."""
        return self.select(self._energy).to(self.dtype)


def _packed(arrays: Sequence[np.ndarray]) -> Tensor:
    if not len(arrays):
        return torch.zeros(0, 3, dtype=torch.float64)
    return torch.as_tensor(np.concatenate([np.asarray(a, dtype=np.float64) for a in arrays]))


class MD17(EnergyForceDataset):
    """An MD17 or rMD17 trajectory from its ``.npz`` file, in eV and eV/Å.

    Args:
        path: the ``.npz`` file (MD17 keys ``z, R, E, F`` or rMD17 keys ``nuclear_charges,
            coords, energies, forces``).
        energy_unit: unit of the file's energies (forces: per Å); both releases use kcal/mol.
        transform, dtype: see :class:`EnergyForceDataset`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        energy_unit: str = "kcal/mol",
        transform: Callable[[Data], Data] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.path = Path(path)
        factor = energy_factor(energy_unit)
        z, pos, energy, forces = read_md17_npz(self.path)
        frames = len(pos)
        super().__init__(
            [z] * frames, list(pos), energy * factor, list(forces * factor), transform, dtype
        )

    def __repr__(self) -> str:
        return f"MD17({len(self)}, path={str(self.path)!r})"


def read_md17_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(z (N,), R (F, N, 3), E (F,), F (F, N, 3))`` of an MD17 or rMD17 file, in its units.

    Raises errors naming the file and the missing key, the shapes that do not agree, the frame,
    atom and key of a non-finite number or of an atomic number that is not an integer from 1 to
    :data:`MAX_ATOMIC_NUMBER`, or, for a truncated or corrupt file, the file (and key).
    """
    if not path.is_file():
        raise FileNotFoundError(f"MD17 file {path} does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise TypeError(f"numpy read a single {type(npz).__name__}, not an archive of arrays")
    except _NPZ_ERRORS as err:
        raise ValueError(
            f"{path} is not a readable .npz archive (truncated or corrupt?): "
            f"{type(err).__name__}: {err}"
        ) from err
    with npz:
        keys = set(npz.files)
        fields, names = {}, {}
        for field, (md17, rmd17) in _NPZ_KEYS.items():
            key = md17 if md17 in keys else rmd17 if rmd17 in keys else None
            if key is None:
                raise ValueError(
                    f"{path} has no {field}: expected key {md17!r} (MD17) or {rmd17!r} (rMD17); "
                    f"keys present: {sorted(keys)}"
                )
            names[field] = f"{field} (key {key!r})"
            try:
                fields[field] = npz[key]
            except _NPZ_ERRORS as err:
                raise ValueError(
                    f"{path}: cannot read {names[field]} (truncated or corrupt?): "
                    f"{type(err).__name__}: {err}"
                ) from err
    z, pos, energy, forces = fields.values()
    shapes = (
        f"atomic numbers {z.shape}, positions {pos.shape}, energies {energy.shape}, "
        f"forces {forces.shape}"
    )
    if z.ndim != 1 or pos.ndim != 3 or pos.shape[1:] != (len(z), 3):
        raise ValueError(
            f"{path}: atom counts do not match, expected atomic numbers (N,) and positions "
            f"(frames, N, 3); got {shapes}"
        )
    if forces.shape != pos.shape:
        raise ValueError(f"{path}: forces must have the shape of the positions; got {shapes}")
    if energy.shape not in ((len(pos),), (len(pos), 1)):
        raise ValueError(
            f"{path}: expected one energy per frame, (frames,) or (frames, 1); got {shapes}"
        )
    z = check_atomic_numbers(z, str(path), names["atomic numbers"], ("atom",))
    pos, energy, forces = (
        check_real(values, str(path), names[field])
        for field, values in (("positions", pos), ("energies", energy), ("forces", forces))
    )
    energy = energy.reshape(-1)
    check_finite(pos, str(path), names["positions"], ("frame", "atom"))
    check_finite(energy, str(path), names["energies"], ("frame",))
    check_finite(forces, str(path), names["forces"], ("frame", "atom"))
    return z, pos, energy, forces
