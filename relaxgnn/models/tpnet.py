"""TPNet: a NequIP-style stack of :class:`~relaxgnn.nn.tp_conv.TensorProductConv` layers with
node or graph heads (per-atom energies summed per molecule; forces by autograd)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from e3nn import o3
from torch import Tensor, nn
from torch_geometric.data import Data

from ..nn.checks import trusted_inputs
from ..nn.tp_conv import TensorProductConv, reset_e3nn
from ..relax.attach import relax_layers
from ..symmetry.irreps import IrrepsLike, as_irreps
from ..symmetry.signature import Signature
from .inputs import GraphInputs
from .io import records_init_args
from .neighbour_count import FitsNeighbourCount
from .pooling import Pool, check_pooling, pool

Output = Literal["node", "graph"]


def hidden_irreps(hidden_features: int, lmax: int) -> o3.Irreps:
    """``F x 0e`` plus, for ``1 ≤ l ≤ lmax``, ``max(1, F // 2^l)`` copies of both parities of
    ``l``: ``hidden_irreps(32, 2) = 32x0e+16x1o+16x1e+8x2o+8x2e``."""
    if hidden_features < 1 or lmax < 0:
        raise ValueError(f"need hidden_features >= 1 and lmax >= 0, got {hidden_features}, {lmax}")
    parts = [f"{hidden_features}x0e"]
    for ell in range(1, lmax + 1):
        mul = max(1, hidden_features // 2**ell)
        parts += [f"{mul}x{ell}o", f"{mul}x{ell}e"]
    return o3.Irreps("+".join(parts))


def _keep(irreps: o3.Irreps, allowed) -> o3.Irreps:
    """The entries of ``irreps`` whose irrep is in ``allowed``."""
    allowed = set(allowed)
    return o3.Irreps([(m, ir) for m, ir in irreps if ir in allowed])


@records_init_args
class TPNet(FitsNeighbourCount, nn.Module):
    r"""E(3)-equivariant tensor-product network in the style of NequIP (Batzner et al. 2022).

    .. math::
        h^0_i = W_{emb}\, s_i,\qquad
        h^{t+1} = \mathrm{TensorProductConv}_t(h^t, x, a),\qquad
        y_i = W_{out} W_{mid}\, h^T_i,

    with :math:`s_i` the input fields and one-hot species (:class:`GraphInputs`), :math:`a_i` the
    node attributes of the self-connections (one-hot species, or a constant 1 without
    ``atomic_numbers``) and :math:`W` e3nn ``Linear`` maps (the two-step head is NequIP's; it has
    no nonlinearity, so it is equivariant for any ``irreps_out``). ``"node"`` returns
    :math:`y_i`, ``"graph"`` :math:`\mathrm{pool}_i\, y_i`. A molecular energy
    :math:`E = \sum_i \varepsilon_i` is ``output="graph", pooling="sum", irreps_out="1x0e"``;
    the edge vectors are computed from ``data.pos`` (only neighbour *indices* come from vesin),
    so forces :math:`-\partial E/\partial x` follow by autograd.
    ``.double()`` gives an exact float64 model (see :class:`~relaxgnn.dtype.ExactWigner3j`).

    Args:
        fields: node fields read from the data with their irreps, e.g. ``{"vel": "1x1o"}``.
        atomic_numbers: elements one-hot encoded from ``data.z`` (input and node attributes).
        irreps_hidden: irreps of the hidden features; ``None`` builds them from
            ``hidden_features`` and ``lmax`` with :func:`hidden_irreps`. Layer ``t`` outputs the
            part of it reachable from its input ⊗ the edge harmonics (NequIP's rule), so the
            first layer, reading scalars, has no ``1e``/``2o`` channels.
        hidden_features: multiplicity of the hidden scalars when ``irreps_hidden`` is ``None``.
        lmax: degree of the edge spherical harmonics (and of the default hidden irreps).
        num_layers: number of interaction blocks.
        cutoff: radius of the envelope and of the radius graph built (with vesin) when the data
            has no ``edge_index``; a given graph should use the same radius.
        knn: build the ``knn``-nearest-neighbour graph instead when the data has no
            ``edge_index`` (point clouds); the envelope still vanishes at ``cutoff``.
        num_basis: Bessel functions of the radial basis.
        radial_hidden, radial_layers: the radial MLP of each block.
        avg_num_neighbors: :math:`\bar n`; messages are divided by :math:`\sqrt{\bar n}`.
            ``"fit"``: the training set's mean number of neighbours within the cutoff (fitted
            when ``relaxgnn fit`` starts, :meth:`fit_statistics`).
            ``None`` means 1 (no normalisation); for molecules pass the training set's mean
            number of neighbours within ``cutoff``.
        output: ``"node"`` or ``"graph"``.
        irreps_out: irreps of the output; each irrep must occur in the hidden irreps.
        pooling: ``"sum"`` or ``"mean"`` for ``output="graph"``.
        relax: relaxation paths: a path kind (``"linear"``, ``"mlp"``) or a mapping of
            :class:`~relaxgnn.relax.RelaxConfig` fields for the default placement in every layer
            (:meth:`~relaxgnn.nn.TensorProductConv.relaxation_placement`), or an explicit placement
            ``{module pattern: config}`` for :func:`~relaxgnn.relax.attach`; ``None`` for none.
            Drive them with :class:`~relaxgnn.relax.Relaxation`, remove them with
            :func:`~relaxgnn.relax.project`.
    """

    def __init__(
        self,
        fields: Mapping[str, str] | None = None,
        atomic_numbers: Sequence[int] | None = None,
        irreps_hidden: IrrepsLike | None = None,
        hidden_features: int = 32,
        lmax: int = 2,
        num_layers: int = 3,
        cutoff: float = 5.0,
        knn: int | None = None,
        num_basis: int = 8,
        radial_hidden: int = 64,
        radial_layers: int = 2,
        avg_num_neighbors: float | Literal["fit"] | None = None,
        output: Output = "graph",
        irreps_out: IrrepsLike = "1x0e",
        pooling: Pool = "sum",
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if output not in ("node", "graph"):
            raise ValueError(f"output must be 'node' or 'graph', got {output!r}")
        check_pooling(pooling)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.inputs = GraphInputs(fields, atomic_numbers, cutoff, knn)
        self.output = output
        self.pooling = pooling
        self.irreps_hidden = (hidden_irreps(hidden_features, lmax) if irreps_hidden is None
                              else as_irreps(irreps_hidden)).sort().irreps.simplify()
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.irreps_out = as_irreps(irreps_out)
        num_species = len(atomic_numbers) if atomic_numbers is not None else 1
        self.irreps_node_attr = o3.Irreps(f"{num_species}x0e")
        self._attr_dim = num_species  # an int for forward: dynamo cannot guard on e3nn Irreps

        irreps = _keep(self.irreps_hidden, [ir for _, ir in self.inputs.irreps])
        if irreps.dim == 0:
            raise ValueError(f"no irrep of the inputs {self.inputs.irreps} is among the hidden "
                             f"irreps {self.irreps_hidden}")
        self.embedding = o3.Linear(self.inputs.irreps, irreps)
        neighbours = self._init_neighbour_count(1.0 if avg_num_neighbors is None
                                                else avg_num_neighbors)
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            reachable = {ir_out for _, ir_in in irreps for _, ir_sh in self.irreps_sh
                         for ir_out in ir_in * ir_sh}
            layer = TensorProductConv(
                irreps, _keep(self.irreps_hidden, reachable), self.irreps_sh, num_basis, cutoff,
                radial_hidden, radial_layers,
                neighbours, self.irreps_node_attr,
)
            self.layers.append(layer)
            irreps = layer.irreps_out
        missing = {ir for _, ir in self.irreps_out} - {ir for _, ir in irreps}
        if missing:
            raise ValueError(f"irreps_out {self.irreps_out} needs {sorted(map(str, missing))}, "
                             f"absent from the last layer's irreps {irreps}")
        mid = o3.Irreps([(max(1, m // 2), ir) for m, ir in
                         _keep(irreps, [ir for _, ir in self.irreps_out])])
        self.head = nn.Sequential(o3.Linear(irreps, mid), o3.Linear(mid, self.irreps_out))
        self.relax = relax
        relax_layers(self, relax)

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()
        reset_e3nn(self.embedding)
        reset_e3nn(self.head)

    @property
    def signature(self) -> Signature:
        irreps_in = {"pos": "1x1o", **{k: str(v) for k, v in self.inputs.fields.items()}}
        return Signature(irreps_in, self.irreps_out, self.output)

    def forward(self, data: Data) -> Tensor:
        """``(num_nodes or num_graphs, irreps_out.dim)``."""
        edge_index, shift, batch = self.inputs.graph(data)
        pos = data.pos
        features = self.inputs.node_features(data)
        # node attributes: the one-hot species (the last columns of the inputs), or ones
        attr = features[:, -self._attr_dim:] if self.inputs.atomic_numbers is not None \
            else pos.new_ones(pos.shape[0], 1)
        h = self.embedding(features)
        with trusted_inputs():  # validated above by self.inputs
            for layer in self.layers:
                h = layer(h, pos, edge_index, node_attr=attr, edge_shift=shift)
        out = self.head(h)
        if self.output == "node":
            return out
        return pool(out, batch, self.pooling, getattr(data, "num_graphs", None))
