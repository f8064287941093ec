r"""NequIP interaction block (Batzner et al., Nat. Commun. 2022) as a PyG layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from ..dtype import ExactWigner3j
from ..geometry.neighbours import edge_vectors
from ..symmetry.irreps import IrrepsLike, as_irreps
from .checks import check_edge_index, check_features, check_positions
from .radial import BesselBasis, PolynomialCutoff


def reset_e3nn(module: nn.Module) -> None:
    """Re-draw the weights of the e3nn modules inside ``module`` as e3nn initialises them:
    ``N(0, 1)`` weights (e3nn normalises in the forward pass) and zero biases."""
    for m in module.modules():
        if isinstance(m, (o3.Linear, o3.TensorProduct)):
            for name, p in m.named_parameters(recurse=False):
                nn.init.zeros_(p) if name == "bias" else nn.init.normal_(p)
        elif isinstance(m, FullyConnectedNet):
            for p in m.parameters():
                nn.init.normal_(p)


def check_conv_inputs(x: Tensor, pos: Tensor, edge_index: Tensor, node_attr: Tensor | None,
                      attr_dim: int | None, edge_shift: Tensor | None, x_dim: int
                      ) -> tuple[Tensor, Tensor | None]:
    """The checks of a convolution's inputs (shapes, finiteness, index range); returns ``x``
    and ``node_attr`` as checked (``node_attr`` unchecked when ``attr_dim`` is ``None``)."""
    N = pos.shape[0]
    check_positions(pos)
    x = check_features(x, "x", N, x_dim)
    check_edge_index(edge_index, N)
    if attr_dim is not None:
        node_attr = check_features(node_attr, "node_attr", N, attr_dim)
    if edge_shift is not None:
        check_features(edge_shift, "edge_shift", edge_index.shape[1], 3, what="edges")
    return x, node_attr


class RadialTensorProductConv(MessagePassing, ExactWigner3j):
    r"""What the NequIP and MACE layers share: messages :math:`\mathrm{TP}(h_j, Y_{ij};
    R_{ij})` of a tensor product ``tp`` with radial weights (``basis``, ``radial``,
    ``envelope``; :meth:`edge_embedding`), the re-initialisation of their e3nn parts, and the
    default relaxation placement on the layer's output. Subclasses build those modules and
    call ``propagate`` in their ``forward`` (PyG reads its arguments from that source)."""

    irreps_pos = o3.Irreps("1x1o")  # how the `pos` argument transforms

    def relaxation_placement(self, relax: Any = "linear") -> dict[str, Any]:
        r"""An Equiformer-style path in the node update (the relaxation paper's MD model adds
        :math:`\theta\,\mathrm{MLP}([h_i \Vert a_i \Vert x_i])` to its feed-forward update),
        on the layer's output:

        .. math::
            h_i' \mathrel{+}= \theta\, g([h_i \Vert a_i \Vert x_i])

        (target ``"update"``; :math:`a_i` when the layer has node attributes, :math:`x_i` with
        the config's ``positions``, the default)."""
        from ..relax import RelaxConfig

        config = RelaxConfig.parse(relax)
        inputs = ("x",) + (("node_attr",) if self.irreps_node_attr is not None else ()) + \
            (("pos",) if config.positions is None or config.positions else ())
        return {"": config.replace(inputs=inputs)} if config.wants("update", ["update"]) else {}

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.basis.reset_parameters()
        reset_e3nn(self)

    def edge_embedding(self, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None
                       ) -> tuple[Tensor, Tensor]:
        """``(Y, R)``: the spherical harmonics (``"component"``) of the edge vectors (computed
        from ``pos``, so forces follow by autograd) and the radial weights times the envelope.
        (The subclass calls ``propagate`` itself: PyG reads its arguments from the source of
        ``forward``.)"""
        vec = edge_vectors(pos, edge_index, edge_shift)
        r = vec.norm(dim=-1)
        sh = o3.spherical_harmonics(self._sh_degrees, vec, normalize=True,
                                    normalization="component")
        return sh, self.radial(self.basis(r)) * self.envelope(r).unsqueeze(-1)

    def message(self, x_j: Tensor, sh: Tensor, weight: Tensor) -> Tensor:
        return self.tp(x_j, sh, weight)

    def _relax_default(self, relax: str | Mapping[str, Any] | None) -> None:
        """``relax=``: attach :meth:`relaxation_placement` (the layer has no relaxation code)."""
        self.relax = relax
        if relax is not None:
            from ..relax.attach import attach, resolve_placement

            attach(self, resolve_placement(relax, self.relaxation_placement))


class TensorProductConv(RadialTensorProductConv):
    r"""The NequIP interaction block: an E(3)-equivariant convolution of irreps features.

    For each edge :math:`j \to i` with :math:`r_{ij} = x_j - x_i\,(+\,\text{shift})`:

    .. math::
        Y_{ij} &= Y\big(r_{ij} / \lVert r_{ij}\rVert\big), \qquad
        R_{ij} = \mathrm{MLP}\big(e(\lVert r_{ij}\rVert)\big)\; u(\lVert r_{ij}\rVert) \\
        m_{ij} &= \mathrm{TP}^{uvu}\big(W_1 h_j,\ Y_{ij};\ R_{ij}\big) \\
        h_i' &= \mathrm{Gate}\Big(W_2\, \frac{1}{\sqrt{\bar n}} \sum_{j} m_{ij}\Big)
              + \mathrm{SC}(h_i, a_i)

    :math:`Y` are spherical harmonics (``"component"`` normalisation, ``irreps_sh``),
    :math:`e` the :class:`~relaxgnn.nn.radial.BesselBasis`, :math:`u` the
    :class:`~relaxgnn.nn.radial.PolynomialCutoff`, :math:`W_1, W_2` e3nn ``Linear`` maps and
    :math:`\mathrm{TP}^{uvu}` a channel-wise tensor product whose path weights :math:`R_{ij}` come
    from the radial MLP (only paths whose output irrep the layer needs). Messages are divided by
    :math:`\sqrt{\bar n}` with :math:`\bar n` = ``avg_num_neighbors`` (NequIP's convention).
    The gate applies SiLU to even scalars, tanh to odd scalars and multiplies each ``l > 0``
    output by a sigmoid scalar. The self-connection is NequIP's
    ``FullyConnectedTensorProduct(h_i, a_i)`` with node attributes :math:`a_i` (one-hot species),
    or an e3nn ``Linear(h_i)`` without them; it is left out when no irrep of ``irreps_out`` can be
    reached from ``irreps_in`` (⊗ ``irreps_node_attr``). Unlike NequIP, it is added after the gate
    (a residual), not before.

    ``relax=`` attaches the default relaxation placement (:meth:`relaxation_placement`) with
    :func:`relaxgnn.relax.attach`; the layer itself has no relaxation code.

    Edges with :math:`\lVert r_{ij}\rVert \ge` ``cutoff`` contribute exactly 0 (the envelope),
    so the graph's own cutoff (e.g. :class:`~relaxgnn.data.graphs.RadiusGraph`) should match
    ``cutoff``: a larger graph radius only costs time, a smaller one truncates the interaction
    non-smoothly. Zero-length edges (self-loops) are finite: :math:`Y = (1, 0, \dots)`.

    The Clebsch–Gordan constants are kept exact in the layer's dtype after casts and checkpoint
    loads (:class:`~relaxgnn.dtype.ExactWigner3j`), so ``.double()`` gives a float64 layer.

    Args:
        irreps_in: irreps of :math:`h`.
        irreps_out: irreps of :math:`h'`; scalars (``l = 0``) must come first, and every irrep
            must be reachable from ``irreps_in ⊗ irreps_sh``.
        irreps_sh: spherical harmonics of the edge directions.
        num_basis: number of Bessel functions.
        cutoff: radius of the envelope (the positions' unit).
        radial_hidden: width of the radial MLP.
        radial_layers: hidden layers of the radial MLP.
        avg_num_neighbors: :math:`\bar n`, the typical number of neighbours of a node.
        irreps_node_attr: irreps of :math:`a_i` for the self-connection (``None``: no attributes).
        relax: shorthand for attaching :meth:`relaxation_placement` (a path kind, a mapping of
            :class:`~relaxgnn.relax.RelaxConfig` fields, or ``None``).
    """

    def __init__(
        self,
        irreps_in: IrrepsLike,
        irreps_out: IrrepsLike,
        irreps_sh: IrrepsLike = "1x0e+1x1o+1x2e",
        num_basis: int = 8,
        cutoff: float = 5.0,
        radial_hidden: int = 64,
        radial_layers: int = 2,
        avg_num_neighbors: float = 1.0,
        irreps_node_attr: IrrepsLike | None = None,
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(aggr="sum")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.irreps_in = as_irreps(irreps_in).simplify()
        self.irreps_out = as_irreps(irreps_out).simplify()
        self.irreps_sh = as_irreps(irreps_sh)
        self._sh_degrees = [ir.l for _, ir in self.irreps_sh]  # ints for forward (dynamo)
        self.irreps_node_attr = None if irreps_node_attr is None else as_irreps(irreps_node_attr)
        # ints for forward: dynamo cannot guard on e3nn Irreps (their __len__ raises)
        self._in_dim = self.irreps_in.dim
        self._attr_dim = None if self.irreps_node_attr is None else self.irreps_node_attr.dim
        self.cutoff = float(cutoff)
        self.avg_num_neighbors = float(avg_num_neighbors)

        scalars = o3.Irreps([(m, ir) for m, ir in self.irreps_out if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in self.irreps_out if ir.l > 0])
        if (scalars + gated).simplify() != self.irreps_out:
            raise ValueError(f"irreps_out must list its scalars first, got {self.irreps_out}")
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = Gate(scalars, [torch.nn.functional.silu if ir.p == 1 else torch.tanh
                                   for _, ir in scalars],
                         gates, [torch.sigmoid] * len(gates), gated)

        # uvu paths h_j ⊗ Y_ij → every irrep the gate needs (NequIP's InteractionBlock)
        target = {ir for _, ir in self.gate.irreps_in}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in target:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        missing = target - {ir for _, ir in mid}
        if missing:
            raise ValueError(
                f"irreps_out {self.irreps_out} (with the gates) needs {sorted(map(str, missing))}, "
                f"which no path of {self.irreps_in} ⊗ {self.irreps_sh} produces")
        mid, perm, _ = o3.Irreps(mid).sort()
        instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]

        self.basis = BesselBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.linear_1 = o3.Linear(self.irreps_in, self.irreps_in)
        self.tp = o3.TensorProduct(self.irreps_in, self.irreps_sh, mid, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet(
            [num_basis] + radial_layers * [radial_hidden] + [self.tp.weight_numel],
            torch.nn.functional.silu)
        self.linear_2 = o3.Linear(mid.simplify(), self.gate.irreps_in)
        if self.irreps_node_attr is None:
            sc = o3.Linear(self.irreps_in, self.irreps_out)
        else:
            sc = o3.FullyConnectedTensorProduct(self.irreps_in, self.irreps_node_attr,
                                                self.irreps_out)
        self.sc = sc if sc.weight_numel > 0 else None
        self.reset_parameters()
        self._keep_wigner_3j_exact()
        self._relax_default(relax)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        node_attr: Tensor | None = None,
        edge_shift: Tensor | None = None,
    ) -> Tensor:
        """Return :math:`h'`, ``(num_nodes, irreps_out.dim)``."""
        x, node_attr = check_conv_inputs(x, pos, edge_index, node_attr, self._attr_dim,
                                         edge_shift, self._in_dim)
        sh, weight = self.edge_embedding(pos, edge_index, edge_shift)
        N = pos.shape[0]
        agg = self.propagate(edge_index, x=self.linear_1(x), sh=sh, weight=weight, size=(N, N))
        out = self.gate(self.linear_2(agg / self.avg_num_neighbors**0.5))
        if self.sc is not None:
            out = out + (self.sc(x) if self._attr_dim is None else self.sc(x, node_attr))
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out}, "
                f"sh={self.irreps_sh}, cutoff={self.cutoff}, "
                f"avg_num_neighbors={self.avg_num_neighbors})")
