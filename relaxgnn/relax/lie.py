r"""Lie derivatives of arbitrary functions between irreps, the measure of how far a map is
from equivariance at a point.

For a map :math:`g: V_{in} \to V_{out}` and the generator :math:`A_k` of rotations about axis
:math:`k`,

.. math::
    L_k g(x) = \frac{d}{dt}\Big|_{t=0} D_{out}(e^{-tA_k})\, g\big(D_{in}(e^{tA_k})\,x\big)
             = J_g(x)\, d\rho_{in}(A_k)\, x - d\rho_{out}(A_k)\, g(x),

which vanishes for every :math:`x` and :math:`k` exactly when :math:`g` is
SO(3)-equivariant. For a linear :math:`g(x) = Wx` it is
:math:`(W\, d\rho_{in}(A_k) - d\rho_{out}(A_k)\, W)\,x`, computed in closed form; otherwise
:math:`J_g(x)\,v` is a forward-mode Jacobian-vector product (``torch.func.jvp``), so the result
stays differentiable in :math:`g`'s parameters.

The three derivatives are stacked on a *leading* axis, ``(3, *batch, d_out)``: each generator's
derivative is a whole output vector. (The paper's released code flattens the
generator-stacked vector and reshapes it in the wrong order, which mixes generators and output
components and makes the penalty non-zero for an exactly equivariant ``W``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from torch import Tensor, nn

from ..symmetry.irreps import IrrepsLike, as_irreps, irrep_generators, so3_generators


def linear_weight(fn: Callable[[Tensor], Tensor]) -> Tensor | None:
    """The matrix ``W`` when ``fn`` is a bias-free ``nn.Linear`` (``fn(x) = x @ W.T``), else
    ``None``."""
    if isinstance(fn, nn.Linear) and fn.bias is None:
        return fn.weight
    return None


@lru_cache(maxsize=256)
def _generator_blocks(irreps: str) -> tuple[int, tuple[tuple[int, int, int, int], ...]]:
    """``(dim, ((start, mul, 2l+1, l), ...))`` of the non-scalar blocks of ``irreps``."""
    parsed = as_irreps(irreps).simplify()
    blocks = tuple((sl.start, mul, ir.dim, ir.l)
                   for (mul, ir), sl in zip(parsed, parsed.slices(), strict=True) if ir.l > 0)
    return parsed.dim, blocks


@lru_cache(maxsize=64)
def _irrep_generators_as(l: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`irrep_generators` in ``dtype`` on ``device`` (cached: do not modify)."""
    return irrep_generators(l).to(dtype=dtype, device=device)


def generator_commutator(W: Tensor, irreps_in: IrrepsLike, irreps_out: IrrepsLike) -> Tensor:
    r""":math:`W\, d\rho_{in}(A_k) - d\rho_{out}(A_k)\, W` for the three generators: the Lie
    derivative of the linear map :math:`x \mapsto Wx`. ``W`` is ``(*batch, d_out, d_in)``; the
    result is ``(*batch, 3, d_out, d_in)``.

    The generators are block-diagonal (one :math:`J^{(l)}_k` per copy of each irrep, see
    :func:`~relaxgnn.symmetry.irreps.so3_generators`), so each side is applied block by block,
    at :math:`O(d_{out} d_{in} (2l+1))` cost instead of the :math:`O(d_{out} d_{in}^2)` of dense
    products; scalar blocks (:math:`J = 0`) are skipped. The block structure is cached per
    irreps, the generators per dtype and device (a penalty evaluation is a few operations per
    non-scalar block, no Python-side parsing).
    """
    d_in, blocks_in = _generator_blocks(str(irreps_in))
    d_out, blocks_out = _generator_blocks(str(irreps_out))
    if W.shape[-2:] != (d_out, d_in):
        raise ValueError(f"W has shape {tuple(W.shape)}, expected (..., {d_out}, {d_in}) for "
                         f"{irreps_in} -> {irreps_out}")
    batch = W.shape[:-2]
    A = W.new_zeros(*batch, 3, d_out, d_in)
    for start, mul, dim, l in blocks_in:  # (W dρ_in)[:, block] = W[:, block] (I_mul ⊗ J)
        J = _irrep_generators_as(l, W.dtype, W.device)
        stop = start + mul * dim
        block = W[..., start:stop].unflatten(-1, (mul, dim))
        A[..., start:stop] = torch.einsum("...omd,kde->...kome", block, J).flatten(-2)
    for start, mul, dim, l in blocks_out:  # (dρ_out W)[block, :] = (I_mul ⊗ J) W[block, :]
        J = _irrep_generators_as(l, W.dtype, W.device)
        stop = start + mul * dim
        block = W[..., start:stop, :].unflatten(-2, (mul, dim))
        A[..., start:stop, :] -= torch.einsum("kde,...mei->...kmdi", J, block).flatten(-3, -2)
    return A


def lie_derivative(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    irreps_in: IrrepsLike,
    irreps_out: IrrepsLike,
) -> Tensor:
    """:math:`L_k\\,fn(x)` for the three so(3) generators: ``(3, *batch, d_out)``.

    ``x`` is ``(*batch, irreps_in.dim)``; ``fn`` maps it to ``(*batch, irreps_out.dim)``.
    """
    irreps_in, irreps_out = as_irreps(irreps_in), as_irreps(irreps_out)
    if x.shape[-1] != irreps_in.dim:
        raise ValueError(f"x has {x.shape[-1]} features but irreps_in {irreps_in} has "
                         f"dimension {irreps_in.dim}")
    W = linear_weight(fn)
    if W is not None:
        return torch.einsum("koi,...i->k...o", generator_commutator(W, irreps_in, irreps_out), x)
    G_in = so3_generators(irreps_in, x.dtype).to(x.device)
    G_out = so3_generators(irreps_out, x.dtype).to(x.device)
    derivatives = []
    for k in range(3):
        y, jv = torch.func.jvp(fn, (x,), (x @ G_in[k].T,))
        derivatives.append(jv - y @ G_out[k].T)
    return torch.stack(derivatives)


def translation_tangents(x: Tensor, position_columns: Sequence[int]) -> Tensor:
    """``(3, d_in)``: row ``k`` shifts every absolute-position block of an input like ``x``
    (the 1x1o fields starting at ``position_columns``) by :math:`e_k`."""
    tangents = x.new_zeros(3, x.shape[-1])
    for start in position_columns:
        tangents[:, start:start + 3] += torch.eye(3, dtype=x.dtype, device=x.device)
    return tangents


def translation_derivative(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    position_columns: Sequence[int],
) -> Tensor:
    r"""Derivative of ``fn`` along the three translations, ``(3, *batch, d_out)``.

    A translation by :math:`t e_k` shifts every absolute-position block of ``x`` (the 1x1o
    fields starting at ``position_columns``) by :math:`t e_k`; the output of a block update is
    translation invariant, so :math:`L^{T}_k g(x) = J_g(x)\, \tau_k` with :math:`\tau_k` that
    shift. Zero for an equivariant ``fn``; linear maps use the closed form :math:`W \tau_k`.
    """
    tangents = translation_tangents(x, position_columns)
    W = linear_weight(fn)
    if W is not None:
        return (tangents @ W.T)[(slice(None),) + (None,) * (x.dim() - 1)].expand(
            3, *x.shape[:-1], W.shape[0])
    return torch.stack([
        torch.func.jvp(fn, (x,), (tangents[k].expand_as(x),))[1] for k in range(3)
    ])
