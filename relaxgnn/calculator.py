"""An ASE calculator for relaxgnn force fields: a thin layer over a model that outputs one
energy per molecule (e.g. :class:`~relaxgnn.models.EnergyForceModel`).

Example::

    from ase.build import molecule
    from relaxgnn.calculator import RelaxGNNCalculator

    atoms = molecule("CH3CH2OH")
    atoms.calc = RelaxGNNCalculator("runs/md_ethanol_tpnet/version_0/checkpoints/model.pt")
    atoms.get_potential_energy(), atoms.get_forces()  # eV, eV/Å

Give calculators **projected** models: the ``model.pt`` written at the end of training, or
``relaxgnn project CKPT OUT``. A model that still carries relaxation paths is projected here
when every θ is 0 (the same function, without the paths); one with θ ≠ 0 is not exactly
equivariant and is refused unless ``allow_relaxed=True``.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from torch import nn
from torch_geometric.data import Data

from .models.forces import energy_and_forces
from .models.io import load_model
from .relax import find_paths, project

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class RelaxGNNCalculator(Calculator):
    """ASE calculator: energy (eV) and forces (eV/Å) of a relaxgnn model.

    Args:
        model: a model file (:func:`relaxgnn.models.load_model`) or a module that maps a
            ``Data(z, pos)`` to one energy per molecule (a copy is used, so the caller's
            module is not moved or changed). The model's energy unit must be eV (relaxgnn's
            data sets convert to eV).
        device: torch device of the evaluation.
        dtype: ``torch.float64`` (default; molecular dynamics conserves energy better) or
            ``torch.float32`` (or their names); ``None`` keeps the model's dtype.
        allow_relaxed: accept a model whose relaxation paths have θ ≠ 0 (with a warning).
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Periodic atoms get a radius graph with the model's ``cutoff`` built here (with the cell
    and the periodic directions); molecules let the model build its own graph.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = torch.float64,
        allow_relaxed: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device)
        if isinstance(model, nn.Module):
            model = copy.deepcopy(model)
        else:
            model = load_model(model, map_location=self.device)
        self.model = self._prepare(model, dtype, allow_relaxed)

    def _prepare(self, model: nn.Module, dtype, allow_relaxed: bool) -> nn.Module:
        paths = find_paths(model)
        active = sorted(name for name, path in paths.items() if path.active)
        if active and not allow_relaxed:
            raise ValueError(
                f"the model has relaxation paths with θ ≠ 0 ({', '.join(active)}): it is not "
                "exactly equivariant. Give the calculator the projected model (the model.pt "
                "written at the end of training, or `relaxgnn project CKPT OUT`), or pass "
                "allow_relaxed=True")
        if active:
            warnings.warn(f"evaluating a relaxed model (θ ≠ 0 in {len(active)} paths): its "
                          "energies are not rotation invariant", stacklevel=3)
        elif paths:
            model = project(model)  # θ = 0 everywhere: the same function, without the paths
        signature = getattr(model, "signature", None)
        if signature is not None and (signature.level != "graph"
                                      or str(signature.irreps_out) != "1x0e"):
            raise ValueError(f"{type(model).__name__} outputs {signature.irreps_out} per "
                             f"{signature.level}; a calculator needs one energy (1x0e) per "
                             "molecule (wrap the network in relaxgnn.models.EnergyForceModel)")
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        model = model.to(self.device) if dtype is None else model.to(self.device, dtype)
        for param in model.parameters():
            param.requires_grad_(False)  # forces need gradients in positions only
        return model.eval()

    @property
    def dtype(self) -> torch.dtype:
        return next(t.dtype for t in [*self.model.parameters(), *self.model.buffers(),
                                      torch.empty(0)] if t.is_floating_point())

    def graph(self, atoms: Atoms) -> Data:
        """The model's input for ``atoms``: ``Data(z, pos)``, plus ``cell`` and ``pbc`` when any
        direction is periodic (the model then builds its periodic radius graph)."""
        pos = torch.as_tensor(np.asarray(atoms.positions), dtype=self.dtype, device=self.device)
        data = Data(z=torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device),
                    pos=pos)
        if atoms.pbc.any():
            cutoff = getattr(self.model, "cutoff", None)
            if cutoff is None:
                raise ValueError(f"periodic atoms need a model with a cutoff radius; "
                                 f"{type(self.model).__name__} has none")
            data.cell = torch.as_tensor(np.asarray(atoms.cell), dtype=self.dtype,
                                        device=self.device)
            data.pbc = torch.as_tensor(atoms.pbc)
        return data

    def energy_and_forces(self, data: Data) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E (1,), F (N, 3))`` of one molecule (forces by autograd)."""
        return energy_and_forces(self.model, data)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        energy, forces = self.energy_and_forces(self.graph(self.atoms))
        if energy.numel() != 1:
            raise ValueError(f"the model returned {energy.numel()} energies for one molecule")
        value = float(energy.reshape(()))
        self.results = {"energy": value, "free_energy": value,
                        "forces": forces.detach().cpu().numpy().astype(np.float64)}


__all__ = ["RelaxGNNCalculator"]
