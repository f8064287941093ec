r"""e3nn building blocks of SEGNN (Brandstetter et al., ICLR 2022): a steerable linear layer
(a tensor product with the node or edge attributes, plus scalar biases), its gated version, and
the choice of hidden irreps that keeps the parameter count of a scalar network."""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import Tensor, nn

from ..dtype import ExactWigner3j
from ..symmetry.irreps import IrrepsLike, as_irreps

SCALAR = o3.Irrep("0e")


def fc_weight_numel(irreps_in1: IrrepsLike, irreps_in2: IrrepsLike, irreps_out: IrrepsLike) -> int:
    r"""Number of weights of ``o3.FullyConnectedTensorProduct(irreps_in1, irreps_in2, irreps_out)``:
    :math:`\sum m_1 m_2 m_{out}` over the triples of irreps with :math:`l_{out} \in l_1 \otimes l_2`
    (computed without building the module)."""
    return sum(
        m1 * m2 * m3
        for m1, ir1 in as_irreps(irreps_in1)
        for m2, ir2 in as_irreps(irreps_in2)
        for m3, ir3 in as_irreps(irreps_out)
        if ir3 in ir1 * ir2
    )


def balanced_irreps(
    hidden_features: int, lmax: int, irreps_attr: IrrepsLike | None = None
) -> o3.Irreps:
    r"""SEGNN's ``WeightBalancedIrreps``: steerable hidden irreps with the weight budget of a
    scalar layer of width ``hidden_features``.

    The hidden irreps are :math:`n \times (0e \oplus 1o \oplus 2e \oplus \dots \oplus L p_L)` with
    :math:`p_l = (-1)^l` (``(Irreps.spherical_harmonics(lmax) * n).sort().irreps.simplify()``),
    and :math:`n` is the smallest integer with

    .. math::
        \#W\big(\mathrm{TP}(\text{hidden} \otimes a \to \text{hidden})\big)
        \ \ge\ \#W\big(\mathrm{TP}(F{\times}0e \otimes 1{\times}0e \to F{\times}0e)\big) = F^2,

    where :math:`\#W` counts the weights of an ``o3.FullyConnectedTensorProduct``, :math:`a` is
    ``irreps_attr`` (default ``Irreps.spherical_harmonics(lmax)``) and :math:`F` is
    ``hidden_features``. A layer on these irreps then has about as many parameters as a plain
    linear layer of width :math:`F`. The left side grows as :math:`n^2`, so e.g. ``lmax=1``,
    ``F=64`` gives ``32x0e+32x1o`` (:math:`4 n^2 \ge 64^2`).
    """
    if hidden_features < 1 or lmax < 0:
        raise ValueError(f"need hidden_features >= 1 and lmax >= 0, got {hidden_features}, {lmax}")
    irreps_attr = as_irreps(irreps_attr) if irreps_attr is not None \
        else o3.Irreps.spherical_harmonics(lmax)
    base = o3.Irreps.spherical_harmonics(lmax)
    per_n2 = fc_weight_numel(base, irreps_attr, base)  # weights of the n = 1 product
    if per_n2 == 0:
        raise ValueError(f"no tensor-product path from {base} ⊗ {irreps_attr} back to {base}")
    target = fc_weight_numel(f"{hidden_features}x0e", "1x0e", f"{hidden_features}x0e")
    n = max(1, math.isqrt(target // per_n2))
    while n * n * per_n2 < target:
        n += 1
    while n > 1 and (n - 1) ** 2 * per_n2 >= target:
        n -= 1
    return (base * n).sort().irreps.simplify()


class O3TensorProduct(ExactWigner3j):
    r"""Steerable linear layer: :math:`y = W(x_1 \otimes x_2) + b`.

    :math:`W(x_1 \otimes x_2)` is ``o3.FullyConnectedTensorProduct(irreps_in1, irreps_in2,
    irreps_out)`` with one shared set of weights (e3nn's ``"component"`` normalisation), and
    :math:`b` is a learnable bias on the ``0e`` channels of the output only (a bias on any other
    irrep would break equivariance). With ``irreps_in2=None`` the second input is the constant
    ``1x0e`` and the layer is an equivariant linear map of :math:`x_1` (used after pooling).
    """

    def __init__(
        self,
        irreps_in1: IrrepsLike,
        irreps_in2: IrrepsLike | None,
        irreps_out: IrrepsLike,
    ) -> None:
        super().__init__()
        self.irreps_in1 = as_irreps(irreps_in1)
        self.constant_in2 = irreps_in2 is None
        self.irreps_in2 = as_irreps("1x0e" if irreps_in2 is None else irreps_in2)
        self.irreps_out = as_irreps(irreps_out)
        self.tp = o3.FullyConnectedTensorProduct(
            self.irreps_in1, self.irreps_in2, self.irreps_out, shared_weights=True,
            irrep_normalization="component",
        )
        slices = self.irreps_out.slices()
        index = [i for (_, ir), sl in zip(self.irreps_out, slices, strict=True)
                 if ir == SCALAR for i in range(sl.start, sl.stop)]
        self.register_buffer("bias_index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.bias = nn.Parameter(torch.zeros(len(index))) if index else None
        self.reset_parameters()
        self._keep_wigner_3j_exact()

    def reset_parameters(self) -> None:
        """Weights ``N(0, 1)`` (e3nn's default; its path normalisation keeps unit variance),
        biases zero."""
        with torch.no_grad():
            if self.tp.weight.numel():
                self.tp.weight.normal_()
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        """``(N, irreps_in1.dim), (N, irreps_in2.dim) -> (N, irreps_out.dim)``."""
        if x2 is None:
            if not self.constant_in2:
                raise ValueError(f"{self.__class__.__name__} needs its second input "
                                 f"({self.irreps_in2})")
            x2 = x1.new_ones(x1.shape[0], 1)
        out = self.tp(x1, x2)
        if self.bias is not None:
            out = out + out.new_zeros(self.irreps_out.dim).index_copy(0, self.bias_index, self.bias)
        return out

    def __repr__(self) -> str:
        in2 = "1" if self.constant_in2 else self.irreps_in2
        return f"{self.__class__.__name__}({self.irreps_in1} ⊗ {in2} -> {self.irreps_out})"


class O3TensorProductGate(nn.Module):
    r"""Gated steerable layer: :math:`y = \mathrm{Gate}\big(W(x_1 \otimes x_2) + b\big)`.

    The tensor product outputs ``irreps_out`` plus one extra ``0e`` gate per irrep of
    ``irreps_out`` that is not ``0e``. e3nn's ``Gate`` then applies

    .. math::
        s \mapsto \mathrm{SiLU}(s) \ \text{on the}\ 0e\ \text{channels},\qquad
        v \mapsto \sigma(g)\, v \ \text{on every other irrep}\ v\ \text{with its gate}\ g,

    so the output has irreps ``irreps_out``, which must list its ``0e`` part first (as sorted
    irreps such as ``balanced_irreps`` do). Without non-scalar irreps it is just SiLU.
    """

    def __init__(
        self,
        irreps_in1: IrrepsLike,
        irreps_in2: IrrepsLike | None,
        irreps_out: IrrepsLike,
    ) -> None:
        super().__init__()
        irreps_out = as_irreps(irreps_out).simplify()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir == SCALAR])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir != SCALAR])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = Gate(scalars, [nn.functional.silu] if scalars else [], gates,
                         [torch.sigmoid] if gates else [], gated)
        if self.gate.irreps_out != irreps_out:
            raise ValueError(f"O3TensorProductGate puts the 0e channels first: irreps_out must be "
                             f"{self.gate.irreps_out}, got {irreps_out}")
        self.irreps_out = irreps_out
        self.tp = O3TensorProduct(irreps_in1, irreps_in2, self.gate.irreps_in)

    def reset_parameters(self) -> None:
        self.tp.reset_parameters()

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        """``(N, irreps_in1.dim), (N, irreps_in2.dim) -> (N, irreps_out.dim)``."""
        return self.gate(self.tp(x1, x2))

    def __repr__(self) -> str:
        in2 = "1" if self.tp.constant_in2 else self.tp.irreps_in2
        return f"{self.__class__.__name__}({self.tp.irreps_in1} ⊗ {in2} -> {self.irreps_out})"
