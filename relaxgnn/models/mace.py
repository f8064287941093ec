"""MACENet: a MACE-style stack of :class:`~relaxgnn.nn.mace_conv.ManyBodyConv` layers with a
readout after every layer (per-atom energies summed per molecule; forces by autograd)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from e3nn import o3
from torch import Tensor, nn
from torch_geometric.data import Data

from ..nn.checks import trusted_inputs
from ..nn.mace_conv import ManyBodyConv
from ..nn.tp_conv import reset_e3nn
from ..relax.attach import relax_layers
from ..symmetry.signature import Signature
from .inputs import GraphInputs
from .io import records_init_args
from .neighbour_count import FitsNeighbourCount
from .pooling import Pool, check_pooling, pool

Output = Literal["node", "graph"]


class _ScalarMLP(nn.Module):
    """MACE's last readout: ``Linear → SiLU → Linear`` on the invariant (``0e``) features."""

    def __init__(self, irreps_in: o3.Irreps, hidden: int) -> None:
        super().__init__()
        self.first = o3.Linear(irreps_in, o3.Irreps(f"{hidden}x0e"))
        self.second = o3.Linear(o3.Irreps(f"{hidden}x0e"), o3.Irreps("1x0e"))

    def forward(self, h: Tensor) -> Tensor:
        return self.second(torch.nn.functional.silu(self.first(h)))


@records_init_args
class MACENet(FitsNeighbourCount, nn.Module):
    r"""E(3)-equivariant many-body network in the style of MACE (Batatia et al., NeurIPS 2022).

    .. math::
        h^0_i = W_{emb}\, a_i,\qquad
        h^{t+1} = \mathrm{ManyBodyConv}_t(h^t, x, a),\qquad
        \varepsilon_i = \sum_{t=1}^{T-1} W^{(t)}_{read}\, h^t_i
                      + \mathrm{MLP}\big(h^T_i\big),

    with :math:`a_i` the one-hot element, every layer of body order ``correlation + 1``, linear
    readouts after the inner layers and a one-hidden-layer MLP (SiLU) after the last, whose
    features are invariant (MACE's rule). Hidden features are ``channels`` copies of every
    irrep :math:`l \le` ``hidden_lmax`` of natural parity (``32x0e+32x1o`` is MACE's "L = 1").
    ``"node"`` returns :math:`\varepsilon_i`, ``"graph"`` :math:`\mathrm{pool}_i\,
    \varepsilon_i`; for a force field wrap it in :class:`~relaxgnn.models.EnergyForceModel`
    (``output="node"``), which adds the scale and the per-element reference energies.

    Args:
        atomic_numbers: the elements (one-hot encoded from ``data.z``).
        channels: multiplicity of every hidden irrep and of the atomic basis.
        hidden_lmax: highest degree of the hidden features (MACE's ``L``).
        lmax: degree of the edge harmonics and of the atomic basis (MACE's ``max_ell``).
        correlation: order of the symmetric products (MACE's ``correlation``).
        num_layers: number of layers.
        cutoff: radius of the envelope and of the radius graph built (with vesin) when the data
            has no ``edge_index``.
        num_basis, radial_hidden, radial_layers: the radial part of each layer.
        avg_num_neighbors: :math:`\bar n`; the atomic basis is divided by it. ``"fit"``: the
            mean number of neighbours within ``cutoff`` of the training set, set by
            :meth:`fit_statistics` (``relaxgnn fit`` calls it through
            :class:`~relaxgnn.models.EnergyForceModel`; MACE computes it so too).
        readout_hidden: width of the last readout's hidden layer.
        reduce_couplings: ``False`` (default): MACE's full set of coupling paths in the
            products; ``True``: only the independent symmetric couplings (the same functions
            with fewer weights, e.g. 8 instead of 23 for order 3 to ``0e``; it trained about
            6 % worse in force MAE at equal epochs on ethanol, ``benchmarks/README.md``).
        output: ``"node"`` or ``"graph"``.
        pooling: ``"sum"`` or ``"mean"`` for ``output="graph"``.
        relax: relaxation paths: a path kind or a mapping of
            :class:`~relaxgnn.relax.RelaxConfig` fields for the default placement in every
            layer (:meth:`~relaxgnn.nn.ManyBodyConv.relaxation_placement`), or an explicit
            placement ``{module pattern: config}``; ``None`` for none.
    """

    def __init__(
        self,
        atomic_numbers: Sequence[int],
        channels: int = 32,
        hidden_lmax: int = 1,
        lmax: int = 3,
        correlation: int = 3,
        num_layers: int = 2,
        cutoff: float = 5.0,
        num_basis: int = 8,
        radial_hidden: int = 64,
        radial_layers: int = 3,
        avg_num_neighbors: float | Literal["fit"] = 1.0,
        readout_hidden: int = 16,
        reduce_couplings: bool = False,
        output: Output = "node",
        pooling: Pool = "sum",
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if output not in ("node", "graph"):
            raise ValueError(f"output must be 'node' or 'graph', got {output!r}")
        check_pooling(pooling)
        if num_layers < 1 or channels < 1 or not 0 <= hidden_lmax <= lmax:
            raise ValueError(f"need num_layers >= 1, channels >= 1 and 0 <= hidden_lmax <= lmax, "
                             f"got {num_layers}, {channels}, {hidden_lmax}, {lmax}")
        self.inputs = GraphInputs(None, atomic_numbers, cutoff, None)
        self.output = output
        self.pooling = pooling
        E = len(self.inputs.atomic_numbers)
        self.irreps_node_attr = o3.Irreps(f"{E}x0e")
        hidden = o3.Irreps([(channels, (ell, (-1) ** ell)) for ell in range(hidden_lmax + 1)])
        scalars = o3.Irreps(f"{channels}x0e")
        self.embedding = o3.Linear(self.irreps_node_attr, scalars)
        neighbours = self._init_neighbour_count(avg_num_neighbors)
        self.layers = nn.ModuleList()
        self.readouts = nn.ModuleList()
        irreps = scalars
        for t in range(num_layers):
            last = t == num_layers - 1
            layer = ManyBodyConv(irreps, scalars if last else hidden, E, channels, lmax,
                                 correlation, num_basis, cutoff, radial_hidden, radial_layers,
                                 neighbours,
                                 residual=t > 0, reduce_couplings=reduce_couplings)
            self.layers.append(layer)
            irreps = layer.irreps_out
            self.readouts.append(_ScalarMLP(irreps, readout_hidden) if last
                                 else o3.Linear(irreps, o3.Irreps("1x0e")))
        self.irreps_out = o3.Irreps("1x0e")
        self.relax = relax
        relax_layers(self, relax)

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()
            layer.product.reset_parameters()
        reset_e3nn(self.embedding)
        reset_e3nn(self.readouts)

    @property
    def signature(self) -> Signature:
        return Signature({"pos": "1x1o"}, self.irreps_out, self.output)

    def forward(self, data: Data) -> Tensor:
        """``(num_nodes or num_graphs, 1)``."""
        edge_index, shift, batch = self.inputs.graph(data)
        pos = data.pos
        attr = self.inputs.node_features(data)  # the one-hot elements
        h = self.embedding(attr)
        energy = pos.new_zeros(pos.shape[0], 1)
        with trusted_inputs():  # validated above by self.inputs
            for layer, readout in zip(self.layers, self.readouts, strict=True):
                h = layer(h, pos, edge_index, node_attr=attr, edge_shift=shift)
                energy = energy + readout(h)
        if self.output == "node":
            return energy
        return pool(energy, batch, self.pooling, getattr(data, "num_graphs", None))
