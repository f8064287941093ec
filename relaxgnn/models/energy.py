r"""A potential energy surface from any network of :mod:`relaxgnn.models`: per-atom energies,
scaled and shifted by per-element reference energies, summed per molecule; forces by autograd.

.. math::
    E = \sum_i \big(s\, \varepsilon_i + e_{Z_i}\big), \qquad
    F_i = -\frac{\partial E}{\partial x_i},

with :math:`\varepsilon_i` the wrapped network's per-atom scalars (``output="node"``,
``irreps_out="1x0e"``), :math:`s` a fixed energy scale and :math:`e_Z` fixed per-element
reference energies (e.g. from :func:`fit_reference_energies`). Because the network is
invariant, :math:`E` is invariant and :math:`F` equivariant; the network's relaxation paths (if
any) live inside it, so :class:`~relaxgnn.relax.Relaxation` and :func:`~relaxgnn.relax.project`
work on the whole model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ..relax.path import RelaxConfig
from ..symmetry.signature import Signature
from .forces import energy_and_forces
from .io import build_model, model_spec, records_init_args
from .pooling import pool


def _element(z: int) -> str:
    """``"O (Z=8)"``: the element's symbol where ASE is installed, else ``"Z=8"``."""
    try:
        from ase.data import chemical_symbols
    except ImportError:  # relaxgnn imports without ASE
        return f"Z={z}"
    symbol = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else "?"
    return f"{symbol} (Z={z})"


@records_init_args
class EnergyForceModel(nn.Module):
    r"""Molecular energies :math:`E = \sum_i (s\,\varepsilon_i + e_{Z_i})` (module docstring)
    and forces :math:`F = -\partial E/\partial x` from a wrapped equivariant network.

    Args:
        network: the per-atom network, as a spec ``{"class_path": ..., "init_args": {...}}``
            (built with :func:`~relaxgnn.models.build_model`; ``atomic_numbers`` and
            ``output="node"`` are filled in when the spec omits them) or as a module built by a
            ``@records_init_args`` class (its :func:`~relaxgnn.models.model_spec` is recorded).
            It must output ``1x0e`` per node (``output="node"``), or per graph with
            ``pooling="sum"``.
        atomic_numbers: the elements the model knows; any other element in ``data.z`` is an
            error that names it.
        reference_energies: ``{Z: e_Z}`` in the energy unit of the data (keys may be strings,
            as in a saved file); every element of ``atomic_numbers`` needs one. ``None``: all 0.
            ``"fit"``: fitted on the training set by :meth:`fit_statistics` (least squares,
            :func:`fit_reference_energies`; ``relaxgnn fit`` does it before training, MACE's
            ``E0s="average"``). They are a float64 buffer (whatever the model's dtype), not
            trained, and are recorded with the constructor arguments (not in the state dict).
        energy_scale: :math:`s`, the scale of the network's output, so that the network works
            with numbers of order 1; ``"fit"``: the RMS of the training forces
            (:meth:`fit_statistics`; MACE's ``rms_forces_scaling``).
        relax: relaxation paths for a network given as a spec: when not ``None`` it replaces
            the spec's ``relax``. After :func:`~relaxgnn.relax.project` the model is recorded
            with ``relax=None`` (here and in the network's spec).

    ``forward(data)`` returns ``(num_graphs, 1)`` energies; :meth:`energy_and_forces` also the
    forces. The model's :attr:`init_args` are recomputed from the network, so a saved file
    always describes the network as it is (relaxed or projected).
    """

    def __init__(
        self,
        network: Mapping[str, Any] | nn.Module,
        atomic_numbers: Sequence[int],
        reference_energies: Mapping[int, float] | Literal["fit"] | None = None,
        energy_scale: float | Literal["fit"] = 1.0,
        relax: RelaxConfig | str | Mapping | None = None,
    ) -> None:
        super().__init__()
        elements = [int(z) for z in atomic_numbers]
        if not elements or len(set(elements)) != len(elements) or min(elements) < 1:
            raise ValueError(f"atomic_numbers must be distinct positive integers, got "
                             f"{list(atomic_numbers)}")
        self.atomic_numbers = elements
        self.network = self._build(network, elements, relax)
        self._check_network()
        self.relax = getattr(self.network, "relax", None)
        self.register_buffer("reference_energies", torch.zeros(len(elements),
                                                               dtype=torch.float64),
                             persistent=False)
        table = torch.full((max(elements) + 1,), -1, dtype=torch.long)
        table[torch.tensor(elements)] = torch.arange(len(elements))
        self.register_buffer("species_index", table, persistent=False)
        self._unfitted: set[str] = set()
        self.set_statistics(reference_energies, energy_scale)

    @property
    def unfitted(self) -> set[str]:
        """The ``"fit"`` arguments not yet fitted, the network's included (e.g. MACENet's
        ``avg_num_neighbors``)."""
        return self._unfitted | set(getattr(self.network, "unfitted", set()))

    def set_statistics(self, reference_energies: Mapping[int, float] | Literal["fit"] | None,
                       energy_scale: float | Literal["fit"]) -> None:
        """Set the reference energies and the scale (as the constructor's arguments; recorded
        in the model file's constructor arguments)."""
        self._unfitted = {name for name, value in (("reference_energies", reference_energies),
                                                   ("energy_scale", energy_scale))
                          if isinstance(value, str)}
        for name, value in (("reference_energies", reference_energies),
                            ("energy_scale", energy_scale)):
            if isinstance(value, str) and value != "fit":
                raise ValueError(f"{name} must be a number, a mapping or 'fit', got {value!r}")
        if energy_scale != "fit" and (not np.isfinite(energy_scale) or energy_scale == 0):
            raise ValueError(f"energy_scale must be finite and non-zero, got {energy_scale}")
        self.energy_scale = 1.0 if energy_scale == "fit" else float(energy_scale)
        elements = self.atomic_numbers
        if reference_energies == "fit":
            reference_energies = None
        references = {int(z): float(e) for z, e in (reference_energies or {}).items()}
        unknown = sorted(set(references) - set(elements))
        if unknown:
            raise ValueError(f"reference_energies name element(s) "
                             f"{', '.join(map(_element, unknown))} not in atomic_numbers "
                             f"{elements}")
        missing = [z for z in elements if z not in references]
        if reference_energies is not None and missing:
            raise ValueError(f"reference_energies lack element(s) "
                             f"{', '.join(map(_element, missing))}")
        # float64 whatever the model's dtype (see _apply): -1029.9 eV in float32 is off by 2e-5.
        # Not in the state dict: the constructor arguments (the model file's init_args) hold
        # them, and the state dict stays that of the network (its dtype is the model's).
        self._reference_values = [references.get(z, 0.0) for z in elements]
        self.reference_energies = torch.tensor(self._reference_values, dtype=torch.float64,
                                               device=self.reference_energies.device)
        recorded = self.__dict__.get("_recorded_args")
        if recorded is not None:  # what a model file records: the numbers, once fitted
            recorded["reference_energies"] = (
                "fit" if "reference_energies" in self._unfitted
                else {str(z): e for z, e in zip(elements, self._reference_values, strict=True)})
            recorded["energy_scale"] = ("fit" if "energy_scale" in self._unfitted
                                        else self.energy_scale)

    def fit_statistics(self, dataset: Iterable[Data], energy_field: str = "energy",
                       forces_field: str = "forces") -> dict[str, Any]:
        r"""Resolve the ``"fit"`` arguments on a training set: reference energies by least
        squares (:func:`fit_reference_energies`), the scale as the forces' RMS
        :math:`\sqrt{\langle F^2 \rangle}` over all atoms and components, and the network's
        own (its ``fit_statistics``, e.g. MACENet's ``avg_num_neighbors``). Returns what was
        set; arguments given as numbers are left as they are."""
        items = list(dataset)
        fitted: dict[str, Any] = {}
        if getattr(self.network, "unfitted", None):
            fitted.update(self.network.fit_statistics(items))
        refs: Any = dict(zip(self.atomic_numbers, self._reference_values, strict=True))
        scale: Any = self.energy_scale
        if "reference_energies" in self._unfitted:
            refs = fit_reference_energies(items, self.atomic_numbers, energy_field)
        if "energy_scale" in self._unfitted:
            forces = [getattr(item, forces_field, None) for item in items]
            if not forces or any(f is None for f in forces):
                raise ValueError(f"energy_scale='fit' needs `{forces_field}` in every item")
            squares = torch.cat([f.reshape(-1).double() for f in forces]).pow(2)
            scale = float(squares.mean().sqrt())
            if scale == 0:
                raise ValueError("energy_scale='fit': the training forces are all zero")
        self.set_statistics(refs, scale)
        return {**fitted, "reference_energies": refs, "energy_scale": scale}

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _build(network: Mapping[str, Any] | nn.Module, elements: list[int],
               relax: RelaxConfig | str | Mapping | None) -> nn.Module:
        if isinstance(network, nn.Module):
            if relax is not None:
                raise ValueError("`relax` applies to a network given as a spec dict; build the "
                                 "module itself with relax=... instead")
            model_spec(network)  # a TypeError when the class does not record its arguments
            return network
        if not isinstance(network, Mapping) or "class_path" not in network:
            raise TypeError("network must be an nn.Module or a spec {'class_path': ..., "
                            f"'init_args': {{...}}}}, got {type(network).__name__}")
        stray = sorted(set(network) - {"class_path", "init_args"})
        if stray:  # e.g. a command-line override that landed beside init_args
            raise ValueError(
                f"the network spec has key(s) {stray} beside class_path and init_args; network "
                "arguments go inside init_args (on the command line the network is one value: "
                "override it whole, or edit the config file, rather than "
                "--model.model.init_args.network.init_args.<name>)")
        init_args = dict(network.get("init_args") or {})
        init_args.setdefault("atomic_numbers", elements)
        init_args.setdefault("output", "node")
        if relax is not None:
            init_args["relax"] = relax
        return build_model({"class_path": network["class_path"], "init_args": init_args})

    def _check_network(self) -> None:
        name = type(self.network).__name__
        signature = getattr(self.network, "signature", None)
        if not isinstance(signature, Signature):
            raise TypeError(f"the network {name} declares no `signature`")
        if str(signature.irreps_out) != "1x0e" or signature.output_translates:
            raise ValueError(f"the network must output one invariant scalar (1x0e) per atom or "
                             f"molecule; {name} outputs {signature.irreps_out} per "
                             f"{signature.level} (build it with output='node', irreps_out='1x0e' "
                             f"or out_channels=1)")
        if signature.level == "graph" and getattr(self.network, "pooling", "sum") != "sum":
            raise ValueError(f"a graph-level network must sum its atoms (pooling='sum'); {name} "
                             f"has pooling={self.network.pooling!r}")
        known = getattr(getattr(self.network, "inputs", None), "atomic_numbers", None)
        if known is not None and set(known) != set(self.atomic_numbers):
            raise ValueError(f"the network knows elements {known}, the energy model "
                             f"{self.atomic_numbers}; give both the same list")

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.float()``, ``.cuda()``, ...: the reference energies move with the model
        but stay float64 (restored from the exact values given, not from a rounded copy)."""
        super()._apply(fn, recurse)
        refs = self.reference_energies
        if refs.dtype != torch.float64:
            self.reference_energies = torch.tensor(self._reference_values, dtype=torch.float64,
                                                   device=refs.device)
        return self

    # ------------------------------------------------------------------ model-file record
    @property
    def init_args(self) -> dict[str, Any]:
        """Constructor arguments with the network's current spec (relaxed or projected)."""
        args = dict(self.__dict__["_recorded_args"])
        args["network"] = model_spec(self.network)
        args["relax"] = args["network"]["init_args"].get("relax")
        return args

    @init_args.setter
    def init_args(self, value: dict[str, Any]) -> None:  # set by @records_init_args
        self.__dict__["_recorded_args"] = dict(value)

    # ------------------------------------------------------------------ properties
    @property
    def signature(self) -> Signature:
        """Inputs of the wrapped network; one invariant energy per graph."""
        inner = self.network.signature
        return Signature({k: str(v) for k, v in inner.irreps_in.items()}, "1x0e", "graph",
                         translated=inner.translated)

    @property
    def cutoff(self) -> float | None:
        """The radius of the graph the network builds (``None``: fully connected)."""
        return getattr(getattr(self.network, "inputs", None), "cutoff", None)

    # ------------------------------------------------------------------ evaluation
    def _species(self, z: Tensor | None, num_nodes: int) -> Tensor:
        if z is None:
            raise ValueError("the energy model reads atomic numbers `z` but the data has none")
        if z.shape != (num_nodes,):
            raise ValueError(f"`z` must have shape ({num_nodes},), got {tuple(z.shape)}")
        table = self.species_index
        index = table[z.clamp(0, len(table) - 1)]
        bad = (index < 0) | (z < 0) | (z >= len(table))
        if bool(bad.any()):
            unknown = sorted(set(z[bad].tolist()))
            raise ValueError(f"element(s) {', '.join(map(_element, unknown))} not known to the "
                             f"energy model (atomic_numbers {self.atomic_numbers})")
        return index

    def _check_fitted(self) -> None:
        if self.unfitted:
            raise RuntimeError(
                f"{' and '.join(sorted(self.unfitted))} of the energy model are 'fit' but were "
                "never fitted: call fit_statistics(training set) first (relaxgnn fit does)")

    def atomic_energies(self, data: Data) -> Tensor:
        r"""Per-atom energies :math:`s\,\varepsilon_i + e_{Z_i}`, ``(N,)`` (node-level
        networks only)."""
        if self.network.signature.level != "node":
            raise ValueError(f"{type(self.network).__name__} outputs one value per molecule; "
                             "per-atom energies need output='node'")
        self._check_fitted()
        species = self._species(getattr(data, "z", None), data.pos.shape[0])
        eps = self.network(data).reshape(-1)
        return self.energy_scale * eps + self.reference_energies.to(eps)[species]

    def forward(self, data: Data) -> Tensor:
        """Energies ``(num_graphs, 1)``."""
        num_graphs = getattr(data, "num_graphs", None)
        batch = getattr(data, "batch", None)
        if self.network.signature.level == "node":
            return pool(self.atomic_energies(data).unsqueeze(-1), batch, "sum", num_graphs)
        self._check_fitted()
        species = self._species(getattr(data, "z", None), data.pos.shape[0])
        out = self.network(data).reshape(-1, 1)
        ref = pool(self.reference_energies.to(out)[species].unsqueeze(-1), batch, "sum",
                   out.shape[0])
        return self.energy_scale * out + ref

    def energy_and_forces(self, data: Data, training: bool = False) -> tuple[Tensor, Tensor]:
        """``(E (num_graphs,), F = -∂E/∂pos (N, 3))``.

        ``training=True`` keeps the graph of the forces (``create_graph``) so that a force loss
        can be backpropagated, and returns ``E`` attached; otherwise both are detached. Works
        under ``torch.no_grad`` (gradients are enabled inside) but not in inference mode.
        """
        return energy_and_forces(self, data, training)


def fit_reference_energies(
    dataset: Iterable[Data],
    atomic_numbers: Sequence[int],
    energy_field: str = "energy",
) -> dict[int, float]:
    r"""Per-element reference energies :math:`e_Z` minimising
    :math:`\sum_m (E_m - \sum_Z n_{mZ} e_Z)^2` over the molecules (or batches) of ``dataset``.

    Solved in float64 with ``numpy.linalg.lstsq``, which returns the minimum-norm solution
    when the element counts are collinear: for a data set of one molecule (MD17) the mean
    energy is shared out as :math:`e_Z = n_Z \bar E / \lVert n\rVert^2`, so that
    :math:`\sum_Z n_Z e_Z = \bar E`. Elements absent from the data get 0.

    Args:
        dataset: ``Data`` (or ``Batch``) items with ``z`` and ``energy_field`` (one value per
            molecule), e.g. a training split.
        atomic_numbers: the elements to fit.
        energy_field: the energy field.

    Returns:
        ``{Z: e_Z}`` in the data's energy unit, for :class:`EnergyForceModel`.
    """
    elements = [int(z) for z in atomic_numbers]
    column = {z: k for k, z in enumerate(elements)}
    rows, energies = [], []
    for n, item in enumerate(dataset):
        z = getattr(item, "z", None)
        energy = getattr(item, energy_field, None)
        if z is None or energy is None:
            raise ValueError(f"item {n} of the data set has no `z` or `{energy_field}`")
        energy = torch.as_tensor(energy, dtype=torch.float64).reshape(-1)
        batch = getattr(item, "batch", None)
        batch = torch.zeros_like(z) if batch is None else batch
        molecules = int(batch.max()) + 1 if z.numel() else 0
        if molecules != energy.numel():
            raise ValueError(f"item {n}: {energy.numel()} energies for {molecules} molecules")
        unknown = sorted(set(z.tolist()) - set(column))
        if unknown:
            raise ValueError(f"item {n} has element(s) {', '.join(map(_element, unknown))} "
                             f"not in atomic_numbers {elements}")
        counts = np.zeros((energy.numel(), len(elements)))
        np.add.at(counts, (batch.numpy(), [column[int(v)] for v in z]), 1.0)
        rows.append(counts)
        energies.append(energy.numpy())
    if not rows:
        raise ValueError("the data set is empty: no energies to fit reference energies to")
    solution, *_ = np.linalg.lstsq(np.concatenate(rows), np.concatenate(energies), rcond=None)
    return {z: float(e) for z, e in zip(elements, solution, strict=True)}


__all__ = ["EnergyForceModel", "fit_reference_energies"]
