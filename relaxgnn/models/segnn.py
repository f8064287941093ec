"""SEGNN: a stack of :class:`~relaxgnn.nn.segnn_conv.SEGNNConv` layers with position, node or
graph heads (Brandstetter et al., ICLR 2022)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from e3nn import o3
from torch import Tensor, nn
from torch_geometric.data import Data

from ..geometry.attributes import segnn_attributes
from ..geometry.clouds import centre_per_graph
from ..nn.checks import check_features, trusted_inputs
from ..nn.o3_blocks import O3TensorProduct, O3TensorProductGate, balanced_irreps
from ..nn.segnn_conv import SEGNNConv
from ..relax.attach import relax_layers
from ..symmetry.irreps import IrrepsLike, as_irreps
from ..symmetry.signature import CHECKS, Signature
from .inputs import GraphInputs
from .io import records_init_args
from .pooling import Pool, check_pooling, pool

Output = Literal["position", "node", "graph"]


@records_init_args
class SEGNN(nn.Module):
    r"""Steerable E(3)-equivariant graph network (Brandstetter et al. 2022).

    .. math::
        h^0_i = \tilde W_{a_i}\, f_i,\qquad
        h^{t+1} = \mathrm{SEGNNConv}_t\big(h^t, a_i, a_{ij},
            e_{ij} = [\lVert r_{ij}\rVert \,\Vert\, q_i q_j]\big),

    where :math:`f_i` are the input fields (any irreps), the element one-hot and, with
    ``position_input="centred"``, :math:`x_i - \bar x_{G(i)}` (the mean of the node's graph;
    ``"absolute"``: :math:`x_i` itself, as ACE's N-body code, which makes the model equivariant
    to rotations and reflections about the origin but not to translations), with
    ``speed_input`` the speed :math:`\lVert v_i\rVert` of the ``velocity_field`` (SEGNN's N-body
    input :math:`[x_i - \bar x, v_i, \lVert v_i\rVert]`), and
    :math:`\tilde W_a(x) = W(x \otimes a) + b`. The attributes :math:`a_{ij}, a_i` are spherical
    harmonics up to ``lmax_attr`` (:func:`~relaxgnn.geometry.attributes.segnn_attributes`), with
    :math:`Y(v_i)` added to :math:`a_i` when ``velocity_field`` is set (SEGNN's N-body model).
    Heads: ``"node"`` returns :math:`\tilde W_{a_i}\sigma(\tilde W_{a_i} h^T_i)`, ``"position"``
    returns :math:`x_i` plus that (a ``1x1o`` displacement; translated with the input), and
    ``"graph"`` returns :math:`\tilde W\,\sigma(\tilde W\,\mathrm{pool}_i\,
    \sigma(\tilde W_{a_i} h^T_i))` (after pooling there is no attribute: the maps are
    equivariant linear layers).

    Args:
        fields: node fields with their irreps, e.g. ``{"vel": "1x1o", "charges": "1x0e"}``.
        atomic_numbers: elements one-hot encoded from ``data.z``.
        hidden_features: width of the scalar network whose weight count the hidden irreps
            match (:func:`~relaxgnn.nn.o3_blocks.balanced_irreps`).
        lmax: highest degree of the hidden irreps.
        irreps_hidden: explicit hidden irreps (overrides ``hidden_features`` and ``lmax``).
        lmax_attr: degree of the attributes (default ``lmax``).
        velocity_field: a ``1x1o`` field whose spherical harmonics are added to :math:`a_i`.
        pair_fields: scalar node fields :math:`q` whose products :math:`q_i q_j` are invariant
            edge features next to the distance (SEGNN's charges in the N-body task).
        position_input: append positions as a ``1x1o`` input, ``"centred"`` per graph or
            ``"absolute"`` (not translation-equivariant); ``None``: no position input.
        speed_input: append the norm of ``velocity_field`` as a ``1x0e`` input.
        output: ``"position"``, ``"node"`` or ``"graph"``.
        irreps_out: output irreps (default ``1x1o`` for ``"position"``, else ``1x0e``).
        pooling: ``"sum"`` or ``"mean"`` for the graph head.
        cutoff: radius graph when the data has no ``edge_index`` (fully connected if ``None``).
        knn: build the ``knn``-nearest-neighbour graph instead (point clouds).
        aggr: neighbour aggregation of the layers, ``"sum"`` or ``"mean"``.
        relax: relaxation paths: a path kind (``"linear"``, ``"mlp"``) or a mapping of
            :class:`~relaxgnn.relax.RelaxConfig` fields for the paper's placement in every layer
            (:meth:`~relaxgnn.nn.SEGNNConv.relaxation_placement`: both update layers), or an
            explicit placement ``{module pattern: config}`` for
            :func:`~relaxgnn.relax.attach` (e.g. ``{"layers.*.message_layer_1": "linear"}``);
            ``None`` for none. Drive them with :class:`~relaxgnn.relax.Relaxation`, remove them
            with :func:`~relaxgnn.relax.project`.

    ``data.node_attr``, ``data.edge_attr`` and ``data.edge_dist`` are used when the data has
    them and its own ``edge_index`` (from :class:`~relaxgnn.data.SEGNNAttributes`); otherwise
    they are computed from ``pos``.
    """

    def __init__(
        self,
        fields: Mapping[str, str] | None = None,
        atomic_numbers: Sequence[int] | None = None,
        hidden_features: int = 64,
        lmax: int = 1,
        irreps_hidden: IrrepsLike | None = None,
        lmax_attr: int | None = None,
        num_layers: int = 4,
        velocity_field: str | None = None,
        pair_fields: Sequence[str] = (),
        position_input: Literal["centred", "absolute"] | None = None,
        speed_input: bool = False,
        output: Output = "position",
        irreps_out: IrrepsLike | None = None,
        pooling: Pool = "sum",
        cutoff: float | None = None,
        knn: int | None = None,
        aggr: Literal["sum", "mean"] = "sum",
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if output not in ("position", "node", "graph"):
            raise ValueError(f"output must be 'position', 'node' or 'graph', got {output!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        check_pooling(pooling)
        self.inputs = GraphInputs(fields, atomic_numbers, cutoff, knn)
        self.lmax_attr = lmax if lmax_attr is None else lmax_attr
        if self.lmax_attr < 0:
            raise ValueError(f"lmax_attr must be >= 0, got {self.lmax_attr}")
        self.velocity_field = velocity_field
        self.pair_fields = tuple(pair_fields)
        if position_input not in ("centred", "absolute", None):
            raise ValueError(f"position_input must be 'centred', 'absolute' or None, got "
                             f"{position_input!r}")
        self.position_input = position_input
        if speed_input and not velocity_field:
            raise ValueError("speed_input reads the norm of velocity_field: give velocity_field")
        self.speed_input = speed_input
        self.output = output
        self.pooling = pooling
        self.irreps_out = as_irreps(irreps_out if irreps_out is not None
                                    else "1x1o" if output == "position" else "1x0e")
        if output == "position" and self.irreps_out != o3.Irreps("1x1o"):
            raise ValueError(f"output='position' predicts a 1x1o displacement, got irreps_out "
                             f"{self.irreps_out}")
        self.irreps_attr = o3.Irreps.spherical_harmonics(self.lmax_attr)
        self._attr_dim = self.irreps_attr.dim  # an int for forward (see SEGNNConv)
        self.irreps_hidden = as_irreps(irreps_hidden) if irreps_hidden is not None \
            else balanced_irreps(hidden_features, lmax, self.irreps_attr)
        self.irreps_in = (self.inputs.irreps
                          + (o3.Irreps("1x1o") if position_input else o3.Irreps(""))
                          + (o3.Irreps("1x0e") if speed_input else o3.Irreps("")))
        H, A = self.irreps_hidden, self.irreps_attr
        self.embedding = O3TensorProduct(self.irreps_in, A, H)
        self.layers = nn.ModuleList(
            SEGNNConv(H, H, H, A, edge_feature_dim=1 + len(self.pair_fields), aggr=aggr)
            for _ in range(num_layers)
        )
        self.pre_head = O3TensorProductGate(H, A, H)
        if output == "graph":
            self.post_pool = O3TensorProductGate(H, None, H)
            self.head = O3TensorProduct(H, None, self.irreps_out)
        else:
            self.post_pool = None
            self.head = O3TensorProduct(H, A, self.irreps_out)
        self.relax = relax
        relax_layers(self, relax)

    def reset_parameters(self) -> None:
        for module in (self.embedding, *self.layers, self.pre_head, self.post_pool, self.head):
            if module is not None:
                module.reset_parameters()

    @property
    def signature(self) -> Signature:
        irreps_in = {"pos": "1x1o", **{k: str(v) for k, v in self.inputs.fields.items()}}
        if self.velocity_field:
            irreps_in[self.velocity_field] = "1x1o"
        irreps_in.update(dict.fromkeys(self.pair_fields, "1x0e"))
        symmetries = tuple(c for c in CHECKS
                           if c != "translation" or self.position_input != "absolute")
        if self.output == "position":
            return Signature(irreps_in, "1x1o", "node", output_translates=True,
                             symmetries=symmetries)
        return Signature(irreps_in, self.irreps_out, self.output, symmetries=symmetries)

    def attributes(self, data: Data, edge_index: Tensor, shift: Tensor | None
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """``(node_attr, edge_attr, edge_dist)``: precomputed ones if the data has them (with its
        own ``edge_index``), else computed from ``pos``."""
        names = ("edge_index", "node_attr", "edge_attr", "edge_dist")
        if all(getattr(data, name, None) is not None for name in names):
            N, E, d = data.pos.shape[0], edge_index.shape[1], self._attr_dim
            return (check_features(data.node_attr, "node_attr", N, d),
                    check_features(data.edge_attr, "edge_attr", E, d, what="edges"),
                    check_features(data.edge_dist, "edge_dist", E, 1, what="edges"))
        vel = None
        if self.velocity_field:
            vel = self.inputs.vector(data, self.velocity_field)
        return segnn_attributes(data.pos, edge_index, self.lmax_attr, vel, shift)

    def forward(self, data: Data) -> Tensor:
        edge_index, shift, batch = self.inputs.graph(data)
        node_attr, edge_attr, edge_feat = self.attributes(data, edge_index, shift)
        if self.pair_fields:
            pairs = self.inputs.pair_features(data, edge_index, self.pair_fields)
            edge_feat = torch.cat([edge_feat, pairs], -1)
        f = self.inputs.node_features(data)
        if self.position_input == "centred":
            f = torch.cat([f, centre_per_graph(data.pos, batch)], -1)
        elif self.position_input == "absolute":
            f = torch.cat([f, data.pos], -1)
        if self.speed_input:
            vel = self.inputs.vector(data, self.velocity_field)
            f = torch.cat([f, torch.linalg.vector_norm(vel, dim=-1, keepdim=True)], -1)
        h = self.embedding(f, node_attr)
        with trusted_inputs():  # validated above by self.inputs
            for layer in self.layers:
                h = layer(h, edge_index, node_attr, edge_attr, edge_feat, pos=data.pos)
        h = self.pre_head(h, node_attr)
        if self.output == "graph":
            h = pool(h, batch, self.pooling, getattr(data, "num_graphs", None))
            return self.head(self.post_pool(h))
        out = self.head(h, node_attr)
        return data.pos + out if self.output == "position" else out
