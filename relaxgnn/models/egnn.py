"""EGNN: a stack of :class:`~relaxgnn.nn.EGNNConv` layers with position, node or graph heads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ..nn.checks import trusted_inputs
from ..nn.egnn_conv import EGNNConv
from ..nn.mlp import MLP
from ..relax.attach import relax_layers
from ..symmetry.irreps import as_irreps
from ..symmetry.signature import Signature
from .inputs import GraphInputs
from .io import records_init_args
from .pooling import Pool, pool

Output = Literal["position", "node", "graph"]


@records_init_args
class EGNN(nn.Module):
    r"""E(n)-equivariant graph network (Satorras et al. 2021).

    .. math::
        h^0 = W_{emb}\,[s_i \,\Vert\, \lVert v_i\rVert],\quad
        (h^{t+1}, x^{t+1}) = \mathrm{EGNNConv}_t(h^t, x^t, v, a),

    followed by one of three heads: ``"position"`` returns :math:`x^T` (E(3)-equivariant and
    translated with the input, EGNN's N-body model), ``"node"`` returns
    :math:`\mathrm{MLP}(h^T_i)` and ``"graph"`` returns :math:`\mathrm{MLP}(\mathrm{pool}_i\,h^T_i)`
    (both invariant).

    Args:
        fields: invariant (``0e``) node fields read from the data, e.g. ``{"charges": "1x0e"}``.
        atomic_numbers: elements one-hot encoded from ``data.z``.
        velocity_field: name of a ``1x1o`` velocity field (adds :math:`\phi_v(h)v` to the
            coordinate update and :math:`\lVert v\rVert` to the input features).
        pair_fields: scalar node fields :math:`q` whose products :math:`q_i q_j` are edge
            attributes (EGNN's charges in the N-body task).
        output: ``"position"``, ``"node"`` or ``"graph"`` (``out_channels`` scalars for the
            last two).
        cutoff: radius graph when the data has no ``edge_index`` (fully connected if ``None``).
        knn: build the ``knn``-nearest-neighbour graph instead (point clouds).
        relax: relaxation paths: a path kind (``"linear"``, ``"mlp"``) or a mapping of
            :class:`~relaxgnn.relax.RelaxConfig` fields for the default placement in every layer
            (:meth:`~relaxgnn.nn.EGNNConv.relaxation_placement`), or an explicit placement
            ``{module pattern: config}`` for :func:`~relaxgnn.relax.attach`; ``None`` for none.
            Drive them with :class:`~relaxgnn.relax.Relaxation`, remove them with
            :func:`~relaxgnn.relax.project`.
    """

    def __init__(
        self,
        fields: Mapping[str, str] | None = None,
        atomic_numbers: Sequence[int] | None = None,
        hidden_channels: int = 64,
        num_layers: int = 4,
        velocity_field: str | None = None,
        pair_fields: Sequence[str] = (),
        output: Output = "position",
        out_channels: int = 1,
        pooling: Pool = "sum",
        cutoff: float | None = None,
        knn: int | None = None,
        normalize: bool = False,
        coord_tanh: bool = False,
        coord_clamp: float | None = 100.0,
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if output not in ("position", "node", "graph"):
            raise ValueError(f"output must be 'position', 'node' or 'graph', got {output!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.inputs = GraphInputs(fields, atomic_numbers, cutoff, knn)
        for name, ir in self.inputs.fields.items():
            if any(i.ir.l > 0 or i.ir.p != 1 for i in as_irreps(ir)):
                raise ValueError(f"EGNN reads only invariant (0e) fields; `{name}` is {ir}")
        self.velocity_field = velocity_field
        self.pair_fields = tuple(pair_fields)
        self.output = output
        self.pooling = pooling
        self.out_channels = out_channels
        in_dim = self.inputs.irreps.dim + (1 if velocity_field else 0)
        self.embedding = nn.Linear(in_dim, hidden_channels)
        self.layers = nn.ModuleList(
            EGNNConv(
                hidden_channels,
                hidden_channels,
                hidden_channels,
                edge_dim=len(self.pair_fields),
                velocity=velocity_field is not None,
                update_coords=output == "position" or k < num_layers - 1,
                update_features=output != "position" or k < num_layers - 1,
                normalize=normalize,
                coord_tanh=coord_tanh,
                coord_clamp=coord_clamp,
            )
            for k in range(num_layers)
        )
        self.head = (
            None if output == "position" else MLP([hidden_channels, hidden_channels, out_channels])
        )
        self.relax = relax
        relax_layers(self, relax)

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        if self.head is not None:
            self.head.reset_parameters()

    @property
    def signature(self) -> Signature:
        irreps_in = {"pos": "1x1o", **self.inputs.fields}
        if self.velocity_field:
            irreps_in[self.velocity_field] = "1x1o"
        irreps_in.update(dict.fromkeys(self.pair_fields, "1x0e"))
        if self.output == "position":
            return Signature(irreps_in, "1x1o", "node", output_translates=True)
        return Signature(irreps_in, f"{self.out_channels}x0e", self.output)

    def forward(self, data: Data) -> Tensor:
        edge_index, shift, batch = self.inputs.graph(data)
        if shift is not None:
            raise ValueError("EGNN does not support periodic graphs (edge_shift given)")
        h = self.inputs.node_features(data)
        vel = None
        if self.velocity_field:
            vel = self.inputs.vector(data, self.velocity_field)
            h = torch.cat([h, vel.norm(dim=-1, keepdim=True)], -1)
        edge_attr = None
        if self.pair_fields:
            edge_attr = self.inputs.pair_features(data, edge_index, self.pair_fields)
        h = self.embedding(h)
        pos = data.pos
        with trusted_inputs():  # validated above by self.inputs
            for layer in self.layers:
                h, pos = layer(h, pos, edge_index, vel=vel, edge_attr=edge_attr)
        if self.output == "position":
            return pos
        out = self.head(h)
        return (
            out
            if self.output == "node"
            else pool(out, batch, self.pooling, getattr(data, "num_graphs", None))
        )
