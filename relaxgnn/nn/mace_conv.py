r"""The MACE interaction and product block (Batatia et al., NeurIPS 2022) as a PyG layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import Tensor
from torch.nn.functional import silu

from ..symmetry.irreps import IrrepsLike, as_irreps
from .radial import BesselBasis, PolynomialCutoff
from .symmetric_contraction import SymmetricContraction
from .tp_conv import RadialTensorProductConv, check_conv_inputs


class ManyBodyConv(RadialTensorProductConv):
    r"""One MACE layer: a two-body atomic basis, its symmetric tensor powers up to order
    ``correlation`` (a many-body basis), and a residual self-connection.

    For each edge :math:`j \to i` with :math:`r_{ij} = x_j - x_i\,(+\,\text{shift})`:

    .. math::
        A_i &= W_A\, \frac{1}{\bar n} \sum_j \mathrm{TP}^{uvu}\big(W_{up} h_j,\ Y(\hat r_{ij});\
               R(\lVert r_{ij}\rVert)\big) \\
        B_i &= \mathrm{SymmetricContraction}_{z_i}(A_i)
               \quad(\text{all products } A^{\otimes\nu},\ \nu \le \nu_{max}) \\
        h_i' &= W_B\, B_i + \mathrm{SC}(h_i, a_i)
               \quad\text{(residual layers; the first layer instead maps}\
               A_i \leftarrow \mathrm{TP}(A_i, a_i)\text{ and has no SC)}

    :math:`Y` spherical harmonics up to ``lmax`` (``"component"``), :math:`R` a radial MLP of a
    Bessel basis times a polynomial envelope (zero at ``cutoff``), :math:`W` e3nn ``Linear``
    maps, :math:`A_i` with ``channels`` copies of every irrep of the harmonics (MACE's
    "target irreps"), :math:`\bar n` = ``avg_num_neighbors`` (MACE divides by :math:`\bar n`,
    NequIP by its square root), :math:`z_i` the element (one-hot node attributes :math:`a_i`),
    SC MACE's self-connection ``FullyConnectedTensorProduct(h_i, a_i)``. With ``residual=False``
    (MACE's first layer, its ``RealAgnosticInteractionBlock``) there is no SC and the atomic
    basis itself is made element-dependent, :math:`A_i \leftarrow
    \mathrm{FullyConnectedTensorProduct}(A_i, a_i)`. Body order :math:`\nu_{max} + 1`.

    ``relax=`` attaches the default relaxation placement (:meth:`relaxation_placement`: a path
    on the layer's output reading :math:`[h_i \Vert a_i \Vert x_i]`); the layer itself has no
    relaxation code.

    Args:
        irreps_in: irreps of :math:`h`.
        irreps_out: irreps of :math:`h'`, every irrep with multiplicity ``channels``.
        num_elements: number of elements (width of the one-hot node attributes).
        channels: :math:`k`, the multiplicity of the atomic basis.
        lmax: degree of the harmonics and of the atomic basis.
        correlation: :math:`\nu_{max}`.
        num_basis, cutoff, radial_hidden, radial_layers: the radial part.
        avg_num_neighbors: :math:`\bar n`.
        residual: add :math:`\mathrm{SC}(h_i, a_i)` (MACE's residual block); ``False``: mix
            the atomic basis by element instead (MACE's first layer).
        reduce_couplings: the product's couplings reduced to the independent symmetric ones
            (default) or all of MACE's coupling paths (:class:`SymmetricContraction`).
        relax: shorthand for attaching :meth:`relaxation_placement`.

    Shapes:
        ``forward(x (N, irreps_in.dim), pos (N, 3), edge_index (2, E), node_attr (N,
        num_elements), edge_shift (E, 3) | None) -> (N, irreps_out.dim)``.
    """

    def __init__(
        self,
        irreps_in: IrrepsLike,
        irreps_out: IrrepsLike,
        num_elements: int,
        channels: int = 32,
        lmax: int = 3,
        correlation: int = 3,
        num_basis: int = 8,
        cutoff: float = 5.0,
        radial_hidden: int = 64,
        radial_layers: int = 3,
        avg_num_neighbors: float = 1.0,
        residual: bool = True,
        reduce_couplings: bool = True,
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(aggr="sum")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.irreps_in = as_irreps(irreps_in).simplify()
        self._in_dim = self.irreps_in.dim  # an int for forward (dynamo and e3nn Irreps)
        self.irreps_out = as_irreps(irreps_out).simplify()
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self._sh_degrees = list(range(lmax + 1))  # ints for forward (dynamo)
        self.irreps_node_attr = o3.Irreps(f"{num_elements}x0e")
        self.irreps_basis = o3.Irreps([(channels, ir) for _, ir in self.irreps_sh])
        self.cutoff = float(cutoff)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.num_elements = num_elements

        mid, instructions = [], []  # uvu paths h_j ⊗ Y_ij → every irrep of the basis
        wanted = {ir for _, ir in self.irreps_basis}
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        mid, perm, _ = o3.Irreps(mid).sort()
        instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]

        self.basis = BesselBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.linear_up = o3.Linear(self.irreps_in, self.irreps_in)
        self.tp = o3.TensorProduct(self.irreps_in, self.irreps_sh, mid, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet(
            [num_basis] + radial_layers * [radial_hidden] + [self.tp.weight_numel], silu)
        self.linear_basis = o3.Linear(mid.simplify(), self.irreps_basis)
        self.product = SymmetricContraction(self.irreps_basis, self.irreps_out, correlation,
                                            num_elements, reduce_couplings)
        self.linear_out = o3.Linear(self.irreps_out, self.irreps_out)
        self.sc = (o3.FullyConnectedTensorProduct(self.irreps_in, self.irreps_node_attr,
                                                  self.irreps_out) if residual else None)
        self.element_basis = (None if residual else o3.FullyConnectedTensorProduct(
            self.irreps_basis, self.irreps_node_attr, self.irreps_basis))
        self.reset_parameters()
        self._keep_wigner_3j_exact()
        self._relax_default(relax)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        node_attr: Tensor,
        edge_shift: Tensor | None = None,
    ) -> Tensor:
        """Return :math:`h'`, ``(num_nodes, irreps_out.dim)``."""
        x, node_attr = check_conv_inputs(x, pos, edge_index, node_attr, self.num_elements,
                                         edge_shift, self._in_dim)
        sh, weight = self.edge_embedding(pos, edge_index, edge_shift)
        N = pos.shape[0]
        agg = self.propagate(edge_index, x=self.linear_up(x), sh=sh, weight=weight, size=(N, N))
        A = self.linear_basis(agg / self.avg_num_neighbors)
        if self.element_basis is not None:
            A = self.element_basis(A, node_attr)
        out = self.linear_out(self.product(A, node_attr.argmax(-1)))
        if self.sc is not None:
            out = out + self.sc(x, node_attr)
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out}, "
                f"basis={self.irreps_basis}, correlation={self.product.correlation}, "
                f"cutoff={self.cutoff}, avg_num_neighbors={self.avg_num_neighbors})")
