r"""e3nn building blocks of SEGNN (Brandstetter et al., ICLR 2022): the steerable linear layer
(a tensor product with the node or edge attributes, plus scalar biases; in
:mod:`relaxgnn.nn.o3_tensor_product`), its gated version, and the choice of hidden irreps that
keeps the parameter count of a scalar network."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from e3nn import o3
from e3nn.math import normalize2mom
from torch import Tensor, nn

from ..symmetry.irreps import IrrepsLike, as_irreps
from .o3_tensor_product import SCALAR, O3TensorProduct, join_blocks

__all__ = ["O3TensorProduct", "O3TensorProductGate", "balanced_irreps", "fc_weight_numel"]


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


@functools.cache
def _second_moment_constants() -> tuple[float, float]:
    r"""e3nn's ``normalize2mom`` constants of SiLU and the sigmoid: :math:`c_f =
    \mathbb E_{z\sim N(0,1)}[f(z)^2]^{-1/2}` (computed once, in float64)."""
    return normalize2mom(nn.functional.silu).cst, normalize2mom(torch.sigmoid).cst


class O3TensorProductGate(nn.Module):
    r"""Gated steerable layer: :math:`y = \mathrm{Gate}\big(W(x_1 \otimes x_2) + b\big)`.

    The tensor product outputs ``irreps_out`` plus one extra ``0e`` gate per irrep of
    ``irreps_out`` that is not ``0e`` (e3nn's ``Gate`` layout: scalars, gates, gated). The gate
    then applies

    .. math::
        s \mapsto c_1\,\mathrm{SiLU}(s) \ \text{on the}\ 0e\ \text{channels},\qquad
        v \mapsto c_2\,\sigma(g)\, v \ \text{on every other irrep}\ v\ \text{with its gate}
        \ g,

    with e3nn's constants :math:`c_f = \mathbb E_{z\sim N(0,1)}[f(z)^2]^{-1/2}` (1.679 and
    1.848) that give the activations unit second moment,

    so the output has irreps ``irreps_out``, which must list its ``0e`` part first (as sorted
    irreps such as ``balanced_irreps`` do). Without non-scalar irreps it is just SiLU. Equal to
    ``e3nn.nn.Gate`` on the output of the tensor product, applied to its blocks directly.
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
        if scalars + gated != irreps_out:
            raise ValueError(f"O3TensorProductGate puts the 0e channels first: irreps_out must be "
                             f"{scalars + gated}, got {irreps_out}")
        self.irreps_out = irreps_out
        self.num_scalars = scalars.dim
        self.gated_muls = [mul for mul, _ in gated]
        self.silu_scale, self.sigmoid_scale = _second_moment_constants()
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.tp = O3TensorProduct(irreps_in1, irreps_in2, (scalars + gates).simplify() + gated)
        self.irreps_in1, self.irreps_in2 = self.tp.irreps_in1, self.tp.irreps_in2

    def reset_parameters(self) -> None:
        self.tp.reset_parameters()

    def forward(
        self,
        x1: Tensor | Sequence[Tensor],
        x2: Tensor | None = None,
        index: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """``(N, irreps_in1.dim), (N, irreps_in2.dim) -> (N, irreps_out.dim)``; ``x1`` in parts
        gathered by ``index`` as in :meth:`O3TensorProduct.blocks`."""
        blocks = self.tp.blocks(x1, x2, index)  # [scalars and gates (0e), *gated]
        scalars, gates = blocks[0].split([self.num_scalars, blocks[0].shape[-1] - self.num_scalars],
                                         -1)
        out = [nn.functional.silu(scalars) * self.silu_scale] if self.num_scalars else []
        gates = torch.sigmoid(gates) * self.sigmoid_scale
        out += [v * g for v, g in zip(blocks[1:], gates.split(self.gated_muls, -1), strict=True)]
        return join_blocks(out)

    def __repr__(self) -> str:
        in2 = "1" if self.tp.constant_in2 else self.tp.irreps_in2
        return f"{self.__class__.__name__}({self.tp.irreps_in1} ⊗ {in2} -> {self.irreps_out})"
