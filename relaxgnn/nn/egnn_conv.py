r"""E(n)-equivariant graph convolution (Satorras, Hoogeboom & Welling, ICML 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from e3nn import o3
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from .checks import check_edge_index, check_features, check_positions
from .mlp import MLP

VECTOR = o3.Irreps("1x1o")


class EGNNConv(MessagePassing):
    r"""The EGNN layer: invariant node features :math:`h_i` and coordinates :math:`x_i`.

    For each edge :math:`j \to i` with :math:`r_{ij} = x_i - x_j`:

    .. math::
        m_{ij} &= \phi_e\big(h_i, h_j, \lVert r_{ij}\rVert^2, a_{ij}\big) \\
        \Delta_i &= C \sum_{j} \hat r_{ij}\, \phi_x(m_{ij}),
            \qquad \hat r_{ij} = r_{ij} / (\lVert r_{ij}\rVert + \epsilon)
            \ \text{if normalize else}\ r_{ij} \\
        x_i' &= x_i + \Delta_i \quad\text{or, with velocities,}\quad
            x_i' = x_i + \phi_v(h_i)\, v_i + \Delta_i \\
        h_i' &= h_i + \phi_h\big(h_i, \textstyle\sum_j m_{ij}\big)

    :math:`C` is :math:`1/|\mathcal N(i)|` (``coord_aggr="mean"``) or 1 (``"sum"``). The
    update is made safe against the coordinate blow-up of public EGNN code: ``coord_tanh``
    bounds :math:`\phi_x` by ``coord_range``·tanh, and ``coord_clamp`` caps
    :math:`\lVert\Delta_i\rVert`. :math:`h` and :math:`a_{ij}` are invariant, so :math:`h'` is
    E(3)-invariant and :math:`x'` E(3)-equivariant (translations included).

    How its arguments and outputs transform is declared as irreps (``irreps_in`` for ``x``,
    ``irreps_pos``, ``irreps_vel``, and ``irreps_out`` per element of ``(h', x')``), which is
    what :func:`relaxgnn.relax.attach` reads. ``relax=`` attaches the default relaxation
    placement (:meth:`relaxation_placement`); the layer itself has no relaxation code.

    Args:
        in_channels: width of :math:`h`.
        out_channels: width of :math:`h'` (a residual is used when equal to ``in_channels``).
        hidden_channels: width of the MLPs and of :math:`m_{ij}`.
        edge_dim: width of the invariant edge attributes :math:`a_{ij}` (0 for none).
        velocity: add the velocity term :math:`\phi_v(h_i) v_i` (EGNN's N-body variant).
        update_coords: compute :math:`x'`; otherwise :math:`x' = x`.
        update_features: compute :math:`h'`; otherwise :math:`h' = h` (the last layer of a
            model that predicts positions needs no :math:`\phi_h`).
        relax: shorthand for attaching :meth:`relaxation_placement` (a path kind, a mapping of
            :class:`~relaxgnn.relax.RelaxConfig` fields, or ``None``).
    """

    irreps_pos = irreps_vel = VECTOR

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        hidden_channels: int = 64,
        edge_dim: int = 0,
        velocity: bool = False,
        update_coords: bool = True,
        update_features: bool = True,
        normalize: bool = False,
        coord_aggr: Literal["mean", "sum"] = "mean",
        coord_tanh: bool = False,
        coord_range: float = 15.0,
        coord_clamp: float | None = 100.0,
        eps: float = 1e-8,
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(aggr="sum")
        if coord_aggr not in ("mean", "sum"):
            raise ValueError(f"coord_aggr must be 'mean' or 'sum', got {coord_aggr!r}")
        if not update_features and (out_channels or in_channels) != in_channels:
            raise ValueError(
                "update_features=False keeps h, so out_channels must equal in_channels"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.hidden_channels = hidden_channels
        self.edge_dim = edge_dim
        self.velocity = velocity
        self.update_coords = update_coords
        self.normalize = normalize
        self.coord_aggr = coord_aggr
        self.coord_tanh = coord_tanh
        self.coord_range = coord_range
        self.coord_clamp = coord_clamp
        self.eps = eps
        # how the arguments and outputs transform (read by equivariance tools and relaxation)
        self.irreps_in = o3.Irreps(f"{in_channels}x0e")
        self.irreps_out = (o3.Irreps(f"{self.out_channels}x0e"), VECTOR)
        H = hidden_channels
        self.edge_mlp = MLP([2 * in_channels + 1 + edge_dim, H, H], act_last=True)
        self.node_mlp = MLP([in_channels + H, H, self.out_channels]) if update_features else None
        self.coord_mlp = MLP([H, H, 1], last_bias=False, last_gain=1e-3) if update_coords else None
        self.vel_mlp = MLP([in_channels, H, 1]) if velocity and update_coords else None
        self.reset_parameters()
        self.relax = relax
        if relax is not None:
            from ..relax.attach import attach, resolve_placement

            attach(self, resolve_placement(relax, self.relaxation_placement))

    def relaxation_placement(self, relax: Any = "linear") -> dict[str, Any]:
        r"""Relaxation paths in the node and coordinate updates, on the layer's output:

        .. math::
            h_i' \mathrel{+}= \theta\, g_h(u_i)\ \text{(target ``"features"``)},\qquad
            x_i' \mathrel{+}= \theta\, g_x(u_i)\ \text{(target ``"coords"``)},\qquad
            u_i = [h_i \Vert x_i \Vert v_i]

        (positions and velocities as plain numbers; :math:`x_i` only with the config's
        ``positions``, the default); the paths are named ``features`` and ``coords``. The
        coordinate path is added after the layer's ``coord_clamp``, so it is not clamped away.
        Paths on ``node_mlp``/``coord_mlp`` themselves would read only invariants
        (:math:`h, m, \lVert r\rVert^2`) and could break no symmetry, so the paths read the
        layer's inputs instead."""
        from ..relax import RelaxConfig

        config = RelaxConfig.parse(relax)
        positions = config.positions is None or config.positions
        inputs = ("x",) + (("pos",) if positions else ()) + (("vel",) if self.velocity else ())
        offered = [t for t, on in (("features", self.node_mlp is not None),
                                   ("coords", self.coord_mlp is not None)) if on]
        paths = [config.replace(inputs=inputs, output=k, name=t)
                 for k, t in enumerate(("features", "coords"))
                 if t in offered and config.wants(t, offered)]
        return {"": paths} if paths else {}

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in (self.edge_mlp, self.node_mlp, self.coord_mlp, self.vel_mlp):
            if module is not None:
                module.reset_parameters()

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        vel: Tensor | None = None,
        edge_attr: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Return ``(h', x')``: ``(N, out_channels)`` features and ``(N, 3)`` coordinates."""
        N = pos.shape[0]
        check_positions(pos)
        x = check_features(x, "x", N, self.in_channels)
        check_edge_index(edge_index, N)
        if self.edge_dim:
            edge_attr = check_features(
                edge_attr, "edge_attr", edge_index.shape[1], self.edge_dim, what="edges"
            )
        if self.velocity:
            if vel is None:
                raise ValueError("EGNNConv(velocity=True) needs `vel` of shape (num_nodes, 3)")
            check_positions(vel, "vel")

        j, i = edge_index
        rel = pos[i] - pos[j]
        dist2 = rel.pow(2).sum(-1, keepdim=True)
        m = self._messages(x, i, j, dist2, edge_attr)
        h_out = x
        if self.node_mlp is not None:
            m_i = scatter(m, i, dim=0, dim_size=N, reduce="sum")
            h_out = self.node_mlp(torch.cat([x, m_i], -1))
            if self.out_channels == self.in_channels:
                h_out = h_out + x
        if self.coord_mlp is None:
            return h_out, pos
        return h_out, pos + self._coord_update(x, pos, rel, dist2, m, i, vel)

    def _messages(self, x: Tensor, i: Tensor, j: Tensor, dist2: Tensor,
                  edge_attr: Tensor | None) -> Tensor:
        r""":math:`m_{ij} = \phi_e(h_i, h_j, \lVert r_{ij}\rVert^2, a_{ij})`, with the first
        linear map applied per node before the gather: :math:`W[h_i \Vert h_j \Vert e] + b =
        (W_1 h)_i + (W_2 h)_j + W_3 e + b`, the same numbers (up to round-off) with the
        :math:`2C`-wide product on the nodes' rows instead of the edges'. When something hooks
        ``edge_mlp`` (e.g. a relaxation path placed on it) the MLP is called as a module on the
        concatenated input instead, so that its hooks run."""
        invariants = [dist2] + ([edge_attr] if self.edge_dim else [])
        if _hooked(self.edge_mlp):
            return self.edge_mlp(torch.cat([x[i], x[j], *invariants], -1))
        first, C = self.edge_mlp[0], self.in_channels
        W = first.weight
        per_node = nn.functional.linear(x, torch.cat([W[:, :C], W[:, C:2 * C]], 0))
        receiver, sender = per_node.split(W.shape[0], -1)
        m = receiver[i] + sender[j] + nn.functional.linear(
            torch.cat(invariants, -1) if len(invariants) > 1 else dist2, W[:, 2 * C:],
            first.bias)
        for layer in list(self.edge_mlp)[1:]:
            m = layer(m)
        return m

    def _coord_update(self, x, pos, rel, dist2, m, i, vel) -> Tensor:
        N = pos.shape[0]
        if self.normalize:
            rel = rel / (dist2.sqrt() + self.eps)
        weight = self.coord_mlp(m)
        if self.coord_tanh:
            weight = torch.tanh(weight) * self.coord_range
        delta = scatter(rel * weight, i, dim=0, dim_size=N, reduce=self.coord_aggr)
        if self.coord_clamp is not None:
            norm = delta.norm(dim=-1, keepdim=True)
            delta = delta * torch.clamp(self.coord_clamp / (norm + self.eps), max=1.0)
        if self.vel_mlp is not None:
            delta = delta + self.vel_mlp(x) * vel
        return delta

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"hidden={self.hidden_channels}, edge_dim={self.edge_dim}, "
            f"velocity={self.velocity})"
        )


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` or a submodule has forward (pre-)hooks."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
