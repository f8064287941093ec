"""Evaluate a force field on any file ASE reads and write its predictions as extended XYZ
(``relaxgnn eval MODEL.pt IN.xyz OUT.xyz``, as MACE's ``mace_eval_configs``).

Every frame of the input is written to the output with the model's energy in
``info["relaxgnn_energy"]`` (eV) and forces in ``arrays["relaxgnn_forces"]`` (eV/Å); what the
frame carried (its labels, other keys) is kept. Where frames have reference energies or forces
— from their calculator (the ``energy=``/``forces`` of an extended XYZ file) or under the given
``energy_key``/``forces_key`` — the mean absolute and root-mean-square errors are returned
(meV, meV per atom, meV/Å). Molecules are evaluated in batches; periodic frames one at a time
(each with its own cell). Nothing from the model file is executed
(:func:`~relaxgnn.models.load_model`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from .calculator import RelaxGNNCalculator
from .models.forces import energy_and_forces

ENERGY_KEY, FORCES_KEY = "relaxgnn_energy", "relaxgnn_forces"


def reference(atoms: Any, energy_key: str | None, forces_key: str | None
              ) -> tuple[float | None, np.ndarray | None]:
    """A frame's reference energy and forces, if it has them: its calculator's results first,
    then ``info[energy_key]`` / ``arrays[forces_key]``."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    energy = results.get("energy")
    forces = results.get("forces")
    if energy is None and energy_key and energy_key in atoms.info:
        energy = atoms.info[energy_key]
    if forces is None and forces_key and forces_key in atoms.arrays:
        forces = atoms.arrays[forces_key]
    return (None if energy is None else float(energy),
            None if forces is None else np.asarray(forces, dtype=np.float64))


def _batches(frames: list, size: int) -> Iterator[list[int]]:
    """Indices in batches of molecules; a periodic frame is a batch of its own."""
    current: list[int] = []
    for i, atoms in enumerate(frames):
        if atoms.pbc.any():
            if current:
                yield current
                current = []
            yield [i]
            continue
        current.append(i)
        if len(current) == size:
            yield current
            current = []
    if current:
        yield current


def predict_frames(calculator: RelaxGNNCalculator, frames: list, batch_size: int = 32,
                   progress: bool = True) -> list[tuple[float, np.ndarray]]:
    """``[(energy, forces)]`` of every frame, in eV and eV/Å."""
    from tqdm.auto import tqdm

    out: list[tuple[float, np.ndarray] | None] = [None] * len(frames)
    batches = list(_batches(frames, batch_size))
    for indices in tqdm(batches, desc="evaluating", unit="batch", disable=not progress):
        batch = Batch.from_data_list([calculator.graph(frames[i]) for i in indices])
        energy, forces = energy_and_forces(calculator.model, batch)
        energy = energy.detach().reshape(-1).cpu().double().numpy()
        forces = forces.detach().cpu().double().numpy()
        sizes = [len(frames[i]) for i in indices]
        for k, (i, part) in enumerate(zip(indices, np.split(forces, np.cumsum(sizes)[:-1]),
                                          strict=True)):
            out[i] = (float(energy[k]), part)
    return out  # type: ignore[return-value]


def errors(frames: list, predictions: list[tuple[float, np.ndarray]],
           energy_key: str | None, forces_key: str | None) -> dict[str, float]:
    """MAE and RMSE against the frames' references, where they have them."""
    e_err, e_atom, f_err = [], [], []
    for i, (atoms, (energy, forces)) in enumerate(zip(frames, predictions, strict=True)):
        ref_e, ref_f = reference(atoms, energy_key, forces_key)
        if ref_e is not None:
            e_err.append(energy - ref_e)
            e_atom.append((energy - ref_e) / len(atoms))
        if ref_f is not None:
            if ref_f.shape != forces.shape:
                raise ValueError(f"frame {i}: reference forces of shape "
                                 f"{ref_f.shape} for {len(atoms)} atoms")
            f_err.append((forces - ref_f).ravel())
    out: dict[str, float] = {}
    if e_err:
        e = np.asarray(e_err) * 1e3
        out.update({"energy_mae_meV": float(np.abs(e).mean()),
                    "energy_rmse_meV": float(math.sqrt((e**2).mean())),
                    "energy_per_atom_mae_meV": float(np.abs(np.asarray(e_atom) * 1e3).mean()),
                    "frames_with_energy": len(e_err)})
    if f_err:
        f = np.concatenate(f_err) * 1e3
        out.update({"forces_mae_meV_per_A": float(np.abs(f).mean()),
                    "forces_rmse_meV_per_A": float(math.sqrt((f**2).mean())),
                    "frames_with_forces": len(f_err)})
    return out


def evaluate_file(model: str | os.PathLike, source: str | os.PathLike,
                  out: str | os.PathLike, energy_key: str | None = "REF_energy",
                  forces_key: str | None = "REF_forces", index: str = ":",
                  batch_size: int = 32, device: str = "cpu", dtype: str = "float64",
                  progress: bool = True) -> dict[str, float]:
    """Predict every frame of ``source`` with ``model`` and write ``out`` (extended XYZ,
    atomically); returns the errors against the frames' references (module docstring)."""
    import io

    import ase.io

    from .atomic import atomic_write_text

    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"input file {source} does not exist")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    try:
        frames = ase.io.read(source, index=index)
    except Exception as err:  # ASE raises many kinds for an unreadable file
        raise ValueError(f"ASE cannot read {source}: {type(err).__name__}: {err}") from err
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ValueError(f"{source} holds no frames (index {index!r})")
    calculator = RelaxGNNCalculator(model, device=device, dtype=dtype)
    with torch.inference_mode(False):
        predictions = predict_frames(calculator, frames, batch_size, progress)
    written = []
    for atoms, (energy, forces) in zip(frames, predictions, strict=True):
        atoms = atoms.copy() if atoms.calc is None else _with_results(atoms)
        atoms.info[ENERGY_KEY] = energy
        atoms.arrays[FORCES_KEY] = forces
        written.append(atoms)
    text = io.StringIO()
    ase.io.write(text, written, format="extxyz")
    atomic_write_text(out, text.getvalue())
    return errors(frames, predictions, energy_key, forces_key)


def _with_results(atoms: Any) -> Any:
    """A copy of ``atoms`` that keeps its calculator's energy and forces (``copy`` drops the
    calculator; extended XYZ writes them as ``energy=`` and ``forces``)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    copy = atoms.copy()
    results = {k: v for k, v in atoms.calc.results.items() if k in ("energy", "forces")}
    if results:
        copy.calc = SinglePointCalculator(copy, **results)
    return copy
