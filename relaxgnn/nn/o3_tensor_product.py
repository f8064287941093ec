r"""SEGNN's steerable linear layer, :math:`y = W(x_1 \otimes x_2) + b`, as one fused, fully
connected tensor product.

It computes exactly what ``o3.FullyConnectedTensorProduct(irreps_in1, irreps_in2, irreps_out)``
computes (``"component"`` irrep normalisation, ``"element"`` path normalisation, the same flat
weight vector in the same order), but with a handful of large operations instead of a few small
ones per path. For the output irrep :math:`\ell` and a path :math:`p = (a, b)` with
:math:`\ell \in \ell_a \otimes \ell_b`,

.. math::
    y^{(\ell)}_{n,k,w} = \sum_p \alpha_p \sum_{u,v} W^{(p)}_{u,v,w}
        \sum_{i,j} C^{\ell_a \ell_b \ell}_{ijk}\, x^{(a)}_{n,u,i}\, x^{(b)}_{n,v,j}
        \;(+\, b_w \text{ for } \ell = 0e),

with e3nn's Wigner-3j symbols :math:`C` and :math:`\alpha_p = \sqrt{2\ell+1}`.

**Parameterisation.** e3nn's module uses :math:`\alpha_p = \sqrt{(2\ell+1)/F_\ell}`, with
:math:`F_\ell = \sum_{p \to \ell} m_a m_b` the fan-in of the output, and weights ``N(0, 1)``.
Here, as in SEGNN's own code (and like ``nn.Linear``), the factor :math:`1/\sqrt{F_\ell}` is in
the weights instead: they start ``U(-1/\sqrt{F_\ell}, 1/\sqrt{F_\ell})`` (biases too) and the
output is not rescaled at run time. The function class is the same — e3nn's weight vector is
``self.e3nn_weight() = weight * sqrt(F_ℓ)`` — but an optimiser step is not: Adam moves every
parameter by about the learning rate, which with the run-time factor changes the output
:math:`\sqrt{F_\ell}` (8–11× in SEGNN) times less than the same step on an ``nn.Linear``. With
this parameterisation a scalar layer (``Fx0e ⊗ 1x0e → Gx0e``) *is* ``nn.Linear(F, G)``: same
initial distribution, same output, same Adam trajectory; the learning rates of SEGNN's papers
assume it.

Two orders of evaluation are used:

* *weights first* for the paths that are a plain product (:math:`\ell_a = 0` or
  :math:`\ell_b = 0`, where :math:`C = \delta/\sqrt{2\ell+1}`) with :math:`m_b = 1`:
  :math:`y \mathrel{+}= \big(\sum_a x^{(a)} W^{(ab)}\big) \otimes x^{(b)}`, one matrix product
  per input part and attribute block. The product happens before any gather, so a message
  layer on :math:`[h_i \Vert h_j \Vert e_{ij}]` multiplies per node, not per edge
  (:meth:`O3TensorProduct.blocks` takes the input in gathered parts);
* *contraction first* for the others (dot products, :math:`\ell = 0` from
  :math:`\ell_a = \ell_b`, where :math:`C = \delta/\sqrt{2\ell_a+1}`, and general paths): their
  contractions are stacked along one axis and multiplied by the stacked weights at once.

The constants :math:`c` of the shortcuts go into the weights' fixed scale. Against e3nn's
modules (one set of small ops per path, per-path slicing with a zero-filled backward), the
SEGNN N-body training step is about 1.9× faster (``benchmarks/relaxation_overhead.py``).

Internally a block of :math:`m` copies of an irrep of dimension :math:`d` is held as
``(N, d, m)`` (component-major), so that gates broadcast over the last axis; inputs and outputs
use e3nn's ``(N, m·d)`` multiplicity-major layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    irreps_out)`` with the weights :meth:`e3nn_weight` (``self.weight`` times the square root of
    each output's fan-in; same length and order), and :math:`b` is a
    learnable bias on the ``0e`` channels of the output only (a bias on any other irrep would
    break equivariance). With ``irreps_in2=None`` the second input is the constant ``1x0e`` and
    the layer is an equivariant linear map of :math:`x_1` (used after pooling).

    Weights and biases start as ``nn.Linear``'s, ``U(±1/√F)`` (SEGNN's initialisation), so that
    optimiser steps act as on ``nn.Linear`` (module docstring). The Wigner-3j buffers are
    recomputed exactly after every dtype cast, so ``.double()`` gives an exact float64 layer.
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
        if out.dim == 0:
            raise ValueError(f"{self.__class__.__name__} needs a non-empty irreps_out")

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

        # One group per distinct output irrep; its weight matrix has a row block per path (a, b)
        # and a column block per output of that irrep.
        self._groups: list[_Group] = []
        index, scale, fans, w3j_degrees = [], [], [], set()
        out_fan_in = [0] * len(out)
        for ir in dict.fromkeys(ir for _, ir in out):
            outputs = [o for o, (_, ir_o) in enumerate(out) if ir_o == ir]
            pairs = [(a, b) for a, b, o in paths if o == outputs[0]]
            fan_in = sum(in1[a].mul * in2[b].mul for a, b in pairs)
            alpha = math.sqrt(ir.dim)  # e3nn's 1/sqrt(fan_in) lives in the weights (docstring)
            group = _Group(outputs, sum(out[o].mul for o in outputs), ir.dim, ir == SCALAR,
                           [out[o].mul for o in outputs])
            for a, b in pairs:
                kind, c = _shortcut(in1[a].ir.l, in2[b].ir.l, ir.l)
                w3j = None
                if kind == "general":
                    w3j_degrees.add((in1[a].ir.l, in2[b].ir.l, ir.l))
                    w3j = f"_w3j_{in1[a].ir.l}_{in2[b].ir.l}_{ir.l}"
                m_ab = in1[a].mul * in2[b].mul
                rows = (group.rows, group.rows + m_ab)
                group.rows += m_ab
                if kind == "outer" and in2[b].mul == 1:  # weights first, then the product
                    group.outer.setdefault(b, []).append((a, rows))
                else:
                    group.contract.append((a, b, kind, w3j, rows))
                block = [offsets[a, b, o] + torch.arange(m_ab * out[o].mul).view(m_ab, -1)
                         for o in outputs]
                index.append(torch.cat(block, 1).flatten())
                scale.append(torch.full((index[-1].numel(),), c * alpha, dtype=torch.float64))
                fans.append(torch.full((index[-1].numel(),), float(fan_in), dtype=torch.float64))
            for o in outputs:
                out_fan_in[o] = fan_in
            self._groups.append(group)
        self.register_buffer("weight_index", torch.cat([torch.zeros(0, dtype=torch.long), *index]),
                             persistent=False)
        self._scale64 = torch.cat([torch.zeros(0, dtype=torch.float64), *scale])
        # fan-in F of the output each weight feeds, in the flat (e3nn) order of the weights
        fan_in64 = torch.zeros(start, dtype=torch.float64)
        if index:
            fan_in64[torch.cat(index)] = torch.cat(fans)
        self._fan_in64 = fan_in64
        self.register_buffer("weight_scale", self._scale64.to(torch.get_default_dtype()),
                             persistent=False)
        for l1, l2, l3 in sorted(w3j_degrees):
            self.register_buffer(f"_w3j_{l1}_{l2}_{l3}", o3.wigner_3j(l1, l2, l3),
                                 persistent=False)

        self._in1_blocks, self._in2_blocks = _block_shapes(in1), _block_shapes(in2)
        self._in1_dim, self._in2_dim, self._num_out_blocks = in1.dim, in2.dim, len(out)
        self.num_scalars = sum(mul for mul, ir in out if ir == SCALAR)
        self._bias_fan_in64 = torch.tensor(
            [float(out_fan_in[o]) for o, (mul, ir) in enumerate(out) if ir == SCALAR
             for _ in range(mul)], dtype=torch.float64)
        self.bias = nn.Parameter(torch.zeros(self.num_scalars)) if bias and self.num_scalars \
            else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Weights and biases ``U(-1/\sqrt{F}, 1/\sqrt{F})`` with :math:`F` the fan-in of the
        output they feed (``nn.Linear``'s initialisation; a bias of an output no path reaches
        gets :math:`F = 1`)."""
        with torch.no_grad():
            bound = self._fan_in64.clamp_min(1.0).rsqrt().to(self.weight)
            self.weight.uniform_(-1.0, 1.0).mul_(bound)
            if self.bias is not None:
                bound = self._bias_fan_in64.clamp_min(1.0).rsqrt().to(self.bias)
                self.bias.uniform_(-1.0, 1.0).mul_(bound)

    def e3nn_weight(self) -> Tensor:
        r"""The weight vector of the equal ``o3.FullyConnectedTensorProduct(irreps_in1,
        irreps_in2, irreps_out)``: ``weight * sqrt(F)`` (module docstring)."""
        return self.weight * self._fan_in64.sqrt().to(self.weight)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        with torch.no_grad():  # constants recomputed in their new dtype, never re-rounded
            self.weight_scale.copy_(self._scale64.to(self.weight_scale.device))
        refresh_wigner_3j(self)
        return self

    def _split_input(self, parts: Sequence[Tensor]) -> list[tuple[int, Tensor]]:
        """``(part, (N_part, d, m) view)`` for every irrep block of ``irreps_in1``; each part
        must hold whole blocks, in order."""
        blocks, a, shapes = [], 0, self._in1_blocks
        for t, part in enumerate(parts):
            sizes, width = [], 0
            while width < part.shape[-1] and a < len(shapes):
                sizes.append(shapes[a][0] * shapes[a][1])
                width += sizes[-1]
                a += 1
            if width != part.shape[-1]:
                raise ValueError(f"input part {t} has {part.shape[-1]} features, which do not end "
                                 f"on an irrep block of {self.irreps_in1}")
            for view, shape in zip(part.split(sizes, -1), shapes[a - len(sizes):a], strict=True):
                blocks.append((t, view.unflatten(-1, shape).transpose(1, 2)))
        if a != len(shapes) or sum(p.shape[-1] for p in parts) != self._in1_dim:
            raise ValueError(f"the input parts have {sum(p.shape[-1] for p in parts)} features, "
                             f"{self.irreps_in1} needs {self.irreps_in1.dim}")
        return blocks

    def blocks(
        self,
        x1: Tensor | Sequence[Tensor],
        x2: Tensor | None = None,
        index: Sequence[Tensor | None] | None = None,
    ) -> list[Tensor]:
        """The output as one ``(N, d, m)`` tensor per irrep block of ``irreps_out``.

        ``x1`` may be given in parts whose concatenation is the input, each gathered by its own
        row ``index`` (``None``: used as it is): ``blocks([h, h, e], a, [dst, src, None])`` is
        ``blocks(cat([h[dst], h[src], e], -1), a)``, but the weights are applied to ``h``
        before the gather, so a message layer multiplies per node rather than per edge.
        """
        if x2 is None and not self.constant_in2:
            raise ValueError(f"{self.__class__.__name__} needs its second input "
                             f"({self.irreps_in2})")
        parts = [x1] if isinstance(x1, Tensor) else list(x1)
        index = [None] * len(parts) if index is None else list(index)
        if len(index) != len(parts):
            raise ValueError(f"{len(parts)} input parts but {len(index)} indices")
        b1 = self._split_input(parts)
        rows = [len(i) if i is not None else p.shape[0] for p, i in zip(parts, index, strict=True)]
        N = rows[0]
        if x2 is not None and not self.constant_in2:
            if x2.dim() != 2 or x2.shape[-1] != self._in2_dim:
                raise ValueError(f"second input of shape {tuple(x2.shape)}, expected "
                                 f"(N, {self.irreps_in2.dim}) for {self.irreps_in2}")
            rows.append(x2.shape[0])
        if len(set(rows)) > 1:
            raise ValueError(f"the inputs have different numbers of rows (after gathering): "
                             f"{rows}")
        b2 = None if self.constant_in2 else _split(x2, self._in2_blocks)

        def gathered(a: int) -> Tensor:
            t, block = b1[a]
            return block if index[t] is None else block.index_select(0, index[t])

        weights = (self.weight[self.weight_index] * self.weight_scale).split(
            [g.rows * g.cols for g in self._groups])
        out: list[Tensor | None] = [None] * self._num_out_blocks
        for group, w in zip(self._groups, weights, strict=True):
            w = w.view(group.rows, group.cols)
            terms = []
            for b, entries in group.outer.items():  # Σ_a (x_a W_ab) ⊗ x2_b, weights first
                acc = None
                for t in dict.fromkeys(b1[a][0] for a, _ in entries):
                    mine = [(a, rows) for a, rows in entries if b1[a][0] == t]
                    u = _cat([b1[a][1] for a, _ in mine], -1) @ _cat(
                        [w[r0:r1] for _, (r0, r1) in mine], 0)
                    u = u if index[t] is None else u.index_select(0, index[t])
                    acc = u if acc is None else acc + u
                terms.append(acc if b2 is None else acc * b2[b])
            if group.contract:  # contractions first, then one product with the weights
                z = _cat([_contract(gathered(a), b2[b], kind, w3j and getattr(self, w3j))
                          for a, b, kind, w3j, _ in group.contract], -1)
                terms.append(z @ _cat([w[r0:r1] for *_, (r0, r1) in group.contract], 0))
            y = sum(terms[1:], terms[0]) if terms else parts[0].new_zeros(N, group.dim, group.cols)
            if group.scalar and self.bias is not None:
                y = y + self.bias
            for o, part in zip(group.outputs, y.split(group.output_muls, -1), strict=True):
                out[o] = part
        return out

    def forward(
        self,
        x1: Tensor | Sequence[Tensor],
        x2: Tensor | None = None,
        index: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """``(N, irreps_in1.dim), (N, irreps_in2.dim) -> (N, irreps_out.dim)``; ``x1`` may come
        in parts gathered by ``index`` (see :meth:`blocks`)."""
        return join_blocks(self.blocks(x1, x2, index))

    def __repr__(self) -> str:
        in2 = "1" if self.constant_in2 else self.irreps_in2
        return f"{self.__class__.__name__}({self.irreps_in1} ⊗ {in2} -> {self.irreps_out})"


@dataclass
class _Group:
    """The paths into one output irrep: ``outer`` by attribute block ``b``, ``[(a, rows)]``
    (applied weights first); ``contract``: ``[(a, b, kind, Wigner-3j buffer name, rows)]``
    (contracted first)."""

    outputs: list[int]
    cols: int
    dim: int  # of the irrep (plain ints and bools in what forward reads: see _block_shapes)
    scalar: bool
    output_muls: list[int]
    rows: int = 0
    outer: dict[int, list[tuple[int, tuple[int, int]]]] = field(default_factory=dict)
    contract: list[tuple[int, int, str, str | None, tuple[int, int]]] = field(
        default_factory=list)


def _block_shapes(irreps: o3.Irreps) -> list[tuple[int, int]]:
    """``[(mul, dim)]`` of each irrep block, as plain ints.

    What ``forward`` reads is kept free of e3nn's ``Irrep``: it is a ``tuple`` whose ``__len__``
    raises, and ``torch.compile`` guards on the length of every tuple a traced function reads,
    which then fails (``InternalTorchDynamoError: NotImplementedError`` in ``SEQUENCE_LENGTH``).
    """
    return [(mul, ir.dim) for mul, ir in irreps]


def _split(x: Tensor, shapes: list[tuple[int, int]]) -> list[Tensor]:
    """``(N, Σ mul·dim)`` -> one ``(N, dim, mul)`` view per irrep block ``(mul, dim)``."""
    parts = x.split([mul * dim for mul, dim in shapes], -1)  # one backward op, no zeros
    return [part.unflatten(-1, shape).transpose(1, 2)
            for shape, part in zip(shapes, parts, strict=True)]


def _cat(tensors: list[Tensor], dim: int) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _contract(x1: Tensor, x2: Tensor, kind: str, w3j: Tensor | None) -> Tensor:
    """``(N, d_1, m_1), (N, d_2, m_2) -> (N, d_out, m_1 m_2)`` (without the shortcut's constant,
    which is in the weights' scale)."""
    if kind == "outer":
        z = x1.unsqueeze(-1) * x2.unsqueeze(-2)
    elif kind == "dot" and x2.shape[2] == 1:
        return (x1 * x2).sum(1, keepdim=True)  # a batched matmul with m_2 = 1 is slower
    elif kind == "dot":
        z = (x1.transpose(1, 2) @ x2).unsqueeze(1)
    else:
        z = torch.einsum("niu,njv,ijk->nkuv", x1, x2, w3j)
    return z.flatten(2)


def join_blocks(blocks: list[Tensor]) -> Tensor:
    """``(N, d, m)`` blocks -> the e3nn layout ``(N, Σ m·d)`` (multiplicity-major)."""
    flat = [b.transpose(1, 2).flatten(1) for b in blocks]
    return flat[0] if len(flat) == 1 else torch.cat(flat, -1)
