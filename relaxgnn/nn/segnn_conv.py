r"""Steerable E(3)-equivariant graph convolution (Brandstetter et al., ICLR 2022: SEGNN)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from ..symmetry.irreps import IrrepsLike, as_irreps
from .checks import check_edge_index, check_features
from .o3_blocks import O3TensorProduct, O3TensorProductGate


class SEGNNConv(MessagePassing):
    r"""The SEGNN layer: steerable node features :math:`h_i` and steerable attributes.

    The attributes are spherical harmonics :math:`a_{ij} = Y(r_{ij}/\lVert r_{ij}\rVert)` of
    each edge and their neighbourhood mean :math:`a_i` per node (see
    :mod:`relaxgnn.geometry.attributes`); :math:`e_{ij}` are invariant edge features (e.g.
    :math:`[\lVert r_{ij}\rVert, q_i q_j]` in the N-body model). Every map is a tensor product
    with an attribute,
    :math:`\tilde W_a(x) = W(x \otimes a) + b` (:class:`~relaxgnn.nn.o3_blocks.O3TensorProduct`),
    :math:`\sigma` is the gate nonlinearity (:class:`~relaxgnn.nn.o3_blocks.O3TensorProductGate`):

    .. math::
        m_{ij} &= \sigma\Big(\tilde W^{(2)}_{a_{ij}}\,
            \sigma\big(\tilde W^{(1)}_{a_{ij}}\,[h_i \,\Vert\, h_j \,\Vert\, e_{ij}]\big)\Big) \\
        m_i &= \textstyle\bigoplus_{j \in \mathcal N(i)} m_{ij}
            \quad(\text{sum or mean; } 0 \text{ for a node without neighbours}) \\
        h_i' &= h_i + \tilde W^{(4)}_{a_i}\,
            \sigma\big(\tilde W^{(3)}_{a_i}\,[h_i \,\Vert\, m_i]\big)

    The residual :math:`h_i +` is used only when ``irreps_in == irreps_out``. Since
    :math:`a_{ij}, a_i` transform with :math:`D^{(l)}(g)` and :math:`e_{ij}` is invariant,
    :math:`h'` is E(3)-equivariant with irreps ``irreps_out``. There is deliberately no
    per-node normalisation or centring of the features: statistics taken over all components
    of a node's feature vector mix the irreps and break equivariance.

    The first message layer applies its weights to :math:`h` per node before gathering to the
    edges: the same numbers as on the gathered :math:`[h_i \Vert h_j \Vert e_{ij}]`, with those
    matrix products on the nodes' rows instead of the edges' (see
    :mod:`relaxgnn.nn.o3_tensor_product`). Messages are aggregated by PyG's ``aggr``.

    ``relax=`` attaches the default relaxation placement (:meth:`relaxation_placement`, the
    paper's) with :func:`relaxgnn.relax.attach`; the layer itself has no relaxation code.

    Args:
        irreps_in: irreps of :math:`h`.
        irreps_out: irreps of :math:`h'` (default ``irreps_in``).
        irreps_hidden: irreps of the messages and of the update's hidden layer (default
            ``irreps_out``); ``0e`` channels first (e.g. from
            :func:`~relaxgnn.nn.o3_blocks.balanced_irreps`).
        irreps_attr: irreps of :math:`a_{ij}` and :math:`a_i` (spherical harmonics up to
            ``lmax``; default ``lmax = 1``).
        edge_feature_dim: number of invariant edge features :math:`e_{ij}` (``0`` for none).
        aggr: ``"sum"`` or ``"mean"`` over neighbours.
        relax: shorthand for attaching :meth:`relaxation_placement` (a path kind, a mapping of
            :class:`~relaxgnn.relax.RelaxConfig` fields, or ``None``).
    """

    irreps_pos = as_irreps("1x1o")  # how the `pos` argument transforms

    def __init__(
        self,
        irreps_in: IrrepsLike,
        irreps_out: IrrepsLike | None = None,
        irreps_hidden: IrrepsLike | None = None,
        irreps_attr: IrrepsLike = "1x0e+1x1o",
        edge_feature_dim: int = 1,
        aggr: Literal["sum", "mean"] = "sum",
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        if aggr not in ("sum", "mean"):
            raise ValueError(f"aggr must be 'sum' or 'mean', got {aggr!r}")
        if edge_feature_dim < 0:
            raise ValueError(f"edge_feature_dim must be >= 0, got {edge_feature_dim}")
        super().__init__(aggr=aggr)
        self.irreps_in = as_irreps(irreps_in)
        self.irreps_out = as_irreps(irreps_out if irreps_out is not None else irreps_in)
        self.irreps_hidden = as_irreps(irreps_hidden if irreps_hidden is not None
                                       else self.irreps_out)
        self.irreps_attr = self.irreps_node_attr = self.irreps_edge_attr = as_irreps(irreps_attr)
        self.edge_feature_dim = edge_feature_dim
        edge_in = self.irreps_in + self.irreps_in
        if edge_feature_dim:
            edge_in = edge_in + as_irreps(f"{edge_feature_dim}x0e")
        H, A = self.irreps_hidden, self.irreps_attr
        self.message_layer_1 = O3TensorProductGate(edge_in, A, H)
        self.message_layer_2 = O3TensorProductGate(H, A, H)
        self.update_layer_1 = O3TensorProductGate(self.irreps_in + H, A, H)
        self.update_layer_2 = O3TensorProduct(H, A, self.irreps_out)
        self.residual = self.irreps_in == self.irreps_out
        # plain ints for forward: torch.compile cannot guard on e3nn's Irrep (o3_tensor_product)
        self._in_dim, self._attr_dim = self.irreps_in.dim, self.irreps_attr.dim
        self.reset_parameters()
        self.relax = relax
        if relax is not None:
            from ..relax.attach import attach, resolve_placement

            attach(self, resolve_placement(relax, self.relaxation_placement))

    def relaxation_placement(self, relax: Any = "linear") -> dict[str, Any]:
        r"""Where the relaxation paper puts the paths (Pertigkiozoglou et al. 2024, and ACE's
        SEGNN): inside both update layers, on their first input,

        .. math::
            u_i = \sigma\big(\tilde W^{(3)}_{a_i}[h_i \Vert m_i]\big)
                  + \theta\, g_1([h_i \Vert m_i]),\qquad
            h_i' = h_i + \tilde W^{(4)}_{a_i} u_i + \theta\, g_2(u_i),

        so the first path sees the aggregated message :math:`m_i`. ``relax`` is a path kind or
        :class:`~relaxgnn.relax.RelaxConfig` fields; its ``targets`` choose among
        ``"update_layer_1"`` and ``"update_layer_2"``. These paths see no positions (the update
        layers have none); for a path that does, place one on the layer itself, reading
        ``x``, ``node_attr`` and ``pos``."""
        from ..relax import RelaxConfig

        config = RelaxConfig.parse(relax)
        if config.positions:
            raise ValueError("SEGNNConv's relaxation placement (the update layers, as in the "
                             "paper) sees no positions; attach a path reading `pos` to the "
                             "layer itself instead")
        offered = ["update_layer_1", "update_layer_2"]
        return {name: config.replace(inputs=("x1",)) for name in offered
                if config.wants(name, offered)}

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for layer in (self.message_layer_1, self.message_layer_2, self.update_layer_1,
                      self.update_layer_2):
            layer.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        node_attr: Tensor,
        edge_attr: Tensor,
        edge_feat: Tensor | None = None,
        pos: Tensor | None = None,
    ) -> Tensor:
        """Return :math:`h'`, ``(num_nodes, irreps_out.dim)``.

        Args:
            x: ``(N, irreps_in.dim)`` node features :math:`h`.
            edge_index: ``(2, E)``, sender ``j`` first (PyG's ``source_to_target``).
            node_attr: ``(N, irreps_attr.dim)`` node attributes :math:`a_i`.
            edge_attr: ``(E, irreps_attr.dim)`` edge attributes :math:`a_{ij}`.
            edge_feat: ``(E, edge_feature_dim)`` invariant edge features :math:`e_{ij}`.
            pos: ``(N, 3)`` positions. Not used by the layer (it sees geometry through the
                attributes); an argument so that a relaxation path placed on the layer can read
                them.
        """
        N = x.shape[0] if isinstance(x, Tensor) and x.dim() > 0 else 0
        x = check_features(x, "x", N, self._in_dim)
        check_edge_index(edge_index, N)
        E = edge_index.shape[1]
        node_attr = check_features(node_attr, "node_attr", N, self._attr_dim)
        edge_attr = check_features(edge_attr, "edge_attr", E, self._attr_dim, what="edges")
        if self.edge_feature_dim:
            edge_feat = check_features(edge_feat, "edge_feat", E, self.edge_feature_dim,
                                       what="edges")
        else:
            edge_feat = None
        src, dst = edge_index
        parts = [x, x] if edge_feat is None else [x, x, edge_feat]
        index = [dst, src, None]  # [h_i ‖ h_j ‖ e_ij], weights applied per node before the gather
        m = self.message_layer_1(parts, edge_attr, index[:len(parts)])
        m = self.aggregate(self.message_layer_2(m, edge_attr), dst, dim_size=N)
        h = self.update_layer_1(torch.cat([x, m], -1), node_attr)
        h = self.update_layer_2(h, node_attr)
        if self.residual:
            h = h + x
        return h

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out}, "
                f"hidden={self.irreps_hidden}, attr={self.irreps_attr}, "
                f"edge_feature_dim={self.edge_feature_dim}, aggr={self.aggr!r})")
