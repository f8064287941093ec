r"""The penalties that keep a relaxation path close to equivariant while it is on.

Per path :math:`g` with inputs :math:`X` (detached, so that only the path is trained by them):

.. math::
    \text{lie} = \sqrt{\textstyle\sum_{x \in X} \sum_k \lVert L_k g(x)\rVert^2
                                    + \lVert L^{T}_k g(x)\rVert^2},\quad
    \text{norm} = \sqrt{\textstyle\sum_{x \in X} \lVert g(x)\rVert^2},\quad
    \text{reflection} = \sqrt{\textstyle\sum_{x \in X}
              \lVert g(D_{in}(P) x) - D_{out}(P)\, g(x)\rVert^2}

with :math:`L_k` the rotation Lie derivatives (:func:`~relaxgnn.relax.lie_derivative`),
:math:`L^T_k` the translation derivatives where the path sees absolute positions, and
:math:`P` a reflection. Linear paths use the closed Gram-matrix form (:func:`linear_penalties`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..symmetry.irreps import IrrepsLike, representation
from .lie import (
    generator_commutator,
    lie_derivative,
    linear_weight,
    translation_derivative,
    translation_tangents,
)
from .path import RelaxationPath


def path_penalties(path: RelaxationPath, x: Tensor, reflection: Tensor | None = None,
                   root: bool = True) -> dict[str, Tensor]:
    """The unweighted penalty terms of one path on inputs ``x`` (detached); with
    ``root=False`` the sums of squares under the roots (to be summed over paths first)."""
    x = x.detach()
    W = linear_weight(path.g)
    if W is not None:
        terms = linear_penalties(W[None], x.reshape(1, -1, x.shape[-1]), path.irreps_in,
                                 path.irreps_out, path.position_columns, reflection, root)
        return {name: value[0] for name, value in terms.items()}
    lie = lie_derivative(path.g, x, path.irreps_in, path.irreps_out).pow(2).sum()
    if path.position_columns:
        lie = lie + translation_derivative(path.g, x, path.position_columns).pow(2).sum()
    terms = {"lie": lie, "norm": path.g(x).pow(2).sum()}
    if reflection is not None:
        D_in = representation(path.irreps_in, reflection).to(x)
        D_out = representation(path.irreps_out, reflection).to(x)
        diff = path.g(x @ D_in.T) - path.g(x) @ D_out.T
        terms["reflection"] = diff.pow(2).sum()
    return {name: root_of(value) for name, value in terms.items()} if root else terms


def root_of(squares: Tensor) -> Tensor:
    r""":math:`\sqrt{s}` with gradient 0 rather than NaN where :math:`s = 0` (a path that is
    exactly zero, e.g. zero-initialised, or an exactly equivariant one)."""
    positive = squares > 0
    return torch.where(positive, torch.where(positive, squares, 1.0).sqrt(), 0.0)


class _TraceForm(torch.autograd.Function):
    r""":math:`\operatorname{tr}(A S A^\top)` per leading index, for a constant symmetric
    :math:`S`, with the gradient :math:`2 A S` taken from the forward's product (autograd would
    form :math:`A S` a second time: half the penalty's matrix products)."""

    @staticmethod
    def forward(ctx, A: Tensor, S: Tensor) -> Tensor:
        AS = A @ S
        ctx.save_for_backward(AS)
        return (AS * A).flatten(1).sum(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (AS,) = ctx.saved_tensors
        return 2.0 * grad.view(-1, *([1] * (AS.dim() - 1))) * AS, None


def linear_penalties(
    W: Tensor,
    X: Tensor,
    irreps_in: IrrepsLike,
    irreps_out: IrrepsLike,
    position_columns: Sequence[int] = (),
    reflection: Tensor | None = None,
    root: bool = True,
) -> dict[str, Tensor]:
    r"""The penalty terms of a batch of ``P`` linear paths :math:`g_p(x) = W_p x` with the same
    irreps, each on its own inputs: ``W`` is ``(P, d_out, d_in)``, ``X`` is ``(P, N, d_in)``
    (detached); every term is ``(P,)``.

    Each term is :math:`\sum_x \lVert A x\rVert^2 = \operatorname{tr}(A S A^\top)` with the
    Gram matrix :math:`S = X^\top X` and :math:`A = W` (norm), :math:`W\,d\rho_{in}(A_k) -
    d\rho_{out}(A_k) W` (Lie derivatives), :math:`W D_{in}(P) - D_{out}(P) W` (reflection), so
    the cost no longer grows with the batch, and a model's layers are done in one go. The
    translation derivative :math:`W\tau_k` is the same for every :math:`x`. The same numbers as
    :func:`lie_derivative` and :func:`translation_derivative` give per sample. Each term is the
    root of its sum of squares, or with ``root=False`` the sum itself.
    """
    S = X.detach().mT @ X.detach()

    def squares(A: Tensor) -> Tensor:  # Σ_x |A x|² per path; round-off kept from going below 0
        S_ = S.view(S.shape[0], *([1] * (A.dim() - 3)), *S.shape[1:])
        return _TraceForm.apply(A, S_).clamp_min(0.0)

    lie = squares(generator_commutator(W, irreps_in, irreps_out))
    if position_columns:
        tangents = translation_tangents(X, position_columns)
        lie = lie + X.shape[1] * (tangents @ W.mT).pow(2).flatten(1).sum(1)
    terms = {"lie": lie, "norm": squares(W)}
    if reflection is not None:
        D_in = representation(irreps_in, reflection).to(W)
        D_out = representation(irreps_out, reflection).to(W)
        terms["reflection"] = squares(W @ D_in - D_out @ W)
    return {name: root_of(value) for name, value in terms.items()} if root else terms
