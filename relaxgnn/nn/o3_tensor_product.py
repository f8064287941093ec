r"""SEGNN's steerable linear layer, :math:`y = W(x_1 \otimes x_2) + b`, as one fused, fully
connected tensor product.

It computes exactly what ``o3.FullyConnectedTensorProduct(irreps_in1, irreps_in2, irreps_out)``
computes (``"component"`` irrep normalisation, ``"element"`` path normalisation, the same flat
weight vector in the same order), but with a handful of large operations instead of a few small
ones per path. For the output irrep :math:`\ell` the paths :math:`p = (a, b)` with
:math:`\ell \in \ell_a \otimes \ell_b` are stacked,

.. math::
    Z^{(\ell)}_{n,k,(p,u,v)} = \sum_{i,j} C^{\ell_a \ell_b \ell}_{ijk}\, x^{(a)}_{n,u,i}\,
        x^{(b)}_{n,v,j},
    \qquad
    y^{(\ell)}_{n,k,w} = \sum_{(p,u,v)} Z^{(\ell)}_{n,k,(p,u,v)}\, \alpha_{p}\, W^{(p)}_{u,v,w}
        \;(+\, b_w \text{ for } \ell = 0e),

so each output irrep type costs one matrix product (an ``addmm`` with the bias for ``0e``).
:math:`C` are e3nn's Wigner-3j symbols; the paths that are a plain product (:math:`\ell_a = 0`
or :math:`\ell_b = 0`, where :math:`C = \delta/\sqrt{2\ell+1}`) or a dot product
(:math:`\ell = 0`, :math:`C = \delta/\sqrt{2\ell_a+1}`) skip the contraction, and their constant
goes into :math:`\alpha_p = \sqrt{(2\ell+1)/\sum_{p'\to w} m_{a'} m_{b'}}\cdot c_p`. In the
profile of the e3nn version, most of a SEGNN training step went to per-path slicing, its
zero-filled backward and small ``mul``/``mm`` calls; this version halves the step time.

Internally a block of :math:`m` copies of an irrep of dimension :math:`d` is held as
``(N, d, m)`` (component-major), so that gates broadcast over the last axis; inputs and outputs
use e3nn's ``(N, m·d)`` multiplicity-major layout.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn

from ..dtype import refresh_wigner_3j
from ..symmetry.irreps import IrrepsLike, as_irreps

SCALAR = o3.Irrep("0e")


def _shortcut(l1: int, l2: int, l_out: int) -> tuple[str, float]:
    r"""``("outer" | "dot" | "general", c)``: how to contract a path and the constant ``c`` with
    :math:`C = c\,\delta` for the two shortcuts (checked against e3nn's Wigner-3j)."""
    if l1 == 0 or l2 == 0:
        kind = "outer"
    elif l_out == 0:
        kind = "dot"
    else:
        return "general", 1.0
    w3j = o3.wigner_3j(l1, l2, l_out, dtype=torch.float64)
    d = 2 * max(l1, l2) + 1
    c = 1.0 / math.sqrt(d)
    if not torch.allclose(w3j.reshape(d, d), c * torch.eye(d, dtype=torch.float64), atol=1e-14):
        raise AssertionError(f"e3nn's Wigner-3j ({l1}, {l2}, {l_out}) is not δ/√{d}")
    return kind, c


class O3TensorProduct(nn.Module):
    r"""Steerable linear layer: :math:`y = W(x_1 \otimes x_2) + b` (see the module docstring).

    :math:`W(x_1 \otimes x_2)` equals ``o3.FullyConnectedTensorProduct(irreps_in1, irreps_in2,
    irreps_out)`` with the weights ``self.weight`` (same length and order), and :math:`b` is a
    learnable bias on the ``0e`` channels of the output only (a bias on any other irrep would
    break equivariance). With ``irreps_in2=None`` the second input is the constant ``1x0e`` and
    the layer is an equivariant linear map of :math:`x_1` (used after pooling).

    Weights start ``N(0, 1)`` (e3nn's default; the path normalisation keeps unit variance),
    biases at zero. The Wigner-3j buffers are recomputed exactly after every dtype cast, so
    ``.double()`` gives an exact float64 layer.
    """

    def __init__(
        self,
        irreps_in1: IrrepsLike,
        irreps_in2: IrrepsLike | None,
        irreps_out: IrrepsLike,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.irreps_in1 = in1 = as_irreps(irreps_in1)
        self.constant_in2 = irreps_in2 is None
        self.irreps_in2 = in2 = as_irreps("1x0e" if irreps_in2 is None else irreps_in2)
        self.irreps_out = out = as_irreps(irreps_out)

        # e3nn's FullyConnectedTensorProduct: every path (a, b, o), in this order, owns a
        # (m_a, m_b, m_o) block of the flat weight vector.
        paths = [(a, b, o) for a, (_, ir_a) in enumerate(in1) for b, (_, ir_b) in enumerate(in2)
                 for o, (_, ir_o) in enumerate(out) if ir_o in ir_a * ir_b]
        offsets, start = {}, 0
        for a, b, o in paths:
            offsets[a, b, o] = start
            start += in1[a].mul * in2[b].mul * out[o].mul
        self.weight_numel = start
        self.weight = nn.Parameter(torch.randn(start))

        # One group per distinct output irrep: its paths' contractions are stacked into Z and
        # multiplied by one weight matrix whose column blocks are the outputs of that irrep.
        self._groups: list[tuple[o3.Irrep, list[tuple[int, int, str]], list[int]]] = []
        index, scale, self._w3j = [], [], set()
        for ir in dict.fromkeys(ir for _, ir in out):
            outputs = [o for o, (_, ir_o) in enumerate(out) if ir_o == ir]
            pairs = [(a, b) for a, b, o in paths if o == outputs[0]]
            alpha = math.sqrt(ir.dim / max(1, sum(in1[a].mul * in2[b].mul for a, b in pairs)))
            contractions = []
            for a, b in pairs:
                kind, c = _shortcut(in1[a].ir.l, in2[b].ir.l, ir.l)
                if kind == "general":
                    self._w3j.add((in1[a].ir.l, in2[b].ir.l, ir.l))
                contractions.append((a, b, kind))
                m_ab = in1[a].mul * in2[b].mul
                row = [offsets[a, b, o] + torch.arange(m_ab * out[o].mul).view(m_ab, -1)
                       for o in outputs]
                index.append(torch.cat(row, 1).flatten())
                scale.append(torch.full((index[-1].numel(),), c * alpha, dtype=torch.float64))
            self._groups.append((ir, contractions, outputs))
        self._rows = [sum(in1[a].mul * in2[b].mul for a, b, _ in contractions)
                      for _, contractions, _ in self._groups]
        self._cols = [sum(out[o].mul for o in outputs) for _, _, outputs in self._groups]
        self.register_buffer("weight_index", torch.cat([torch.zeros(0, dtype=torch.long), *index]),
                             persistent=False)
        self._scale64 = torch.cat([torch.zeros(0, dtype=torch.float64), *scale])
        self.register_buffer("weight_scale", self._scale64.to(torch.get_default_dtype()),
                             persistent=False)
        for l1, l2, l3 in sorted(self._w3j):
            self.register_buffer(f"_w3j_{l1}_{l2}_{l3}", o3.wigner_3j(l1, l2, l3),
                                 persistent=False)

        self.num_scalars = sum(mul for mul, ir in out if ir == SCALAR)
        self.bias = nn.Parameter(torch.zeros(self.num_scalars)) if bias and self.num_scalars \
            else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights ``N(0, 1)``, biases zero."""
        with torch.no_grad():
            self.weight.normal_()
            if self.bias is not None:
                self.bias.zero_()

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        with torch.no_grad():  # constants recomputed in their new dtype, never re-rounded
            self.weight_scale.copy_(self._scale64.to(self.weight_scale.device))
        refresh_wigner_3j(self)
        return self

    @staticmethod
    def _split(x: Tensor, irreps: o3.Irreps) -> list[Tensor]:
        """``(N, irreps.dim)`` -> one ``(N, d, m)`` view per irrep block."""
        parts = x.split([mul * ir.dim for mul, ir in irreps], -1)  # one backward op, no zeros
        return [part.unflatten(-1, (mul, ir.dim)).transpose(1, 2)
                for (mul, ir), part in zip(irreps, parts, strict=True)]

    def blocks(self, x1: Tensor, x2: Tensor | None = None) -> list[Tensor]:
        """The output as one ``(N, d, m)`` tensor per irrep block of ``irreps_out``."""
        if x2 is None and not self.constant_in2:
            raise ValueError(f"{self.__class__.__name__} needs its second input "
                             f"({self.irreps_in2})")
        N = x1.shape[0]
        b1 = self._split(x1, self.irreps_in1)
        b2 = None if self.constant_in2 else self._split(x2, self.irreps_in2)
        weights = (self.weight[self.weight_index] * self.weight_scale).split(
            [r * c for r, c in zip(self._rows, self._cols, strict=True)])
        out: list[Tensor | None] = [None] * len(self.irreps_out)
        for (ir, contractions, outputs), w, rows, cols in zip(
                self._groups, weights, self._rows, self._cols, strict=True):
            if rows == 0:  # no path reaches this irrep: e3nn outputs zeros
                y = x1.new_zeros(N, ir.dim, cols)
                if ir == SCALAR and self.bias is not None:
                    y = y + self.bias
            else:
                z = torch.cat([self._contract(b1[a], None if b2 is None else b2[b], kind, ir.l)
                               for a, b, kind in contractions], -1)
                w = w.view(rows, cols)
                if ir == SCALAR and self.bias is not None:
                    y = torch.addmm(self.bias, z.squeeze(1), w).unsqueeze(1)
                else:
                    y = z @ w
            parts = y.split([self.irreps_out[o].mul for o in outputs], -1)
            for o, part in zip(outputs, parts, strict=True):
                out[o] = part
        return out

    def _contract(self, x1: Tensor, x2: Tensor | None, kind: str, l_out: int) -> Tensor:
        """``(N, d_1, m_1), (N, d_2, m_2) -> (N, d_out, m_1 m_2)`` (without the shortcut's
        constant, which is in ``weight_scale``)."""
        if x2 is None:  # constant 1x0e second input
            return x1
        if kind == "outer":
            z = x1.unsqueeze(-1) * x2.unsqueeze(-2)
        elif kind == "dot" and x2.shape[2] == 1:
            return (x1 * x2).sum(1, keepdim=True)  # a batched matmul with m_2 = 1 is slower
        elif kind == "dot":
            z = (x1.transpose(1, 2) @ x2).unsqueeze(1)
        else:
            w3j = getattr(self, f"_w3j_{x1.shape[1] // 2}_{x2.shape[1] // 2}_{l_out}")
            z = torch.einsum("niu,njv,ijk->nkuv", x1, x2, w3j)
        return z.flatten(2)

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        """``(N, irreps_in1.dim), (N, irreps_in2.dim) -> (N, irreps_out.dim)``."""
        return join_blocks(self.blocks(x1, x2), x1)

    def __repr__(self) -> str:
        in2 = "1" if self.constant_in2 else self.irreps_in2
        return f"{self.__class__.__name__}({self.irreps_in1} ⊗ {in2} -> {self.irreps_out})"


def join_blocks(blocks: list[Tensor], like: Tensor) -> Tensor:
    """``(N, d, m)`` blocks -> the e3nn layout ``(N, Σ m·d)`` (multiplicity-major); ``like``
    gives ``N``, dtype and device when there are no blocks."""
    if not blocks:
        return like.new_zeros(like.shape[0], 0)
    flat = [b.transpose(1, 2).flatten(1) for b in blocks]
    return flat[0] if len(flat) == 1 else torch.cat(flat, -1)
