"""Representations of O(3) on e3nn irreps: Lie-algebra generators and group matrices.

Conventions follow e3nn ≥ 0.5: a vector is ``1x1o`` in (x, y, z) order, so
``representation("1x1o", R) == R``. Everything here is computed in float64 and cast at the end:
e3nn builds its generators in the default dtype, whose float32 rounding (~1e-7) would otherwise
limit float64 equivariance tests.
"""

from __future__ import annotations

from functools import cache, lru_cache

import torch
from e3nn import o3

from ..dtype import default_dtype

IrrepsLike = str | o3.Irreps


def as_irreps(irreps: IrrepsLike) -> o3.Irreps:
    """Parse ``irreps`` (a string such as ``"16x0e+8x1o"`` or an ``Irreps``) with a clear error."""
    try:
        return o3.Irreps(irreps)
    except Exception as err:  # e3nn raises bare ValueError/AssertionError on bad strings
        raise ValueError(f"not a valid e3nn irreps specification: {irreps!r} ({err})") from err


@cache
def irrep_generators(l: int) -> torch.Tensor:
    """e3nn's ``so3_generators(l)`` evaluated in float64, ``(3, 2l+1, 2l+1)`` (cached: do not
    modify it in place)."""
    with default_dtype(torch.float64):
        return o3.so3_generators(l)


def so3_generators(irreps: IrrepsLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Generators of :math:`\mathfrak{so}(3)` acting on a feature of type ``irreps``.

    Returns a tensor ``(3, d, d)`` with ``d = irreps.dim``: for each axis :math:`k`, the
    block-diagonal matrix :math:`d\rho(A_k) = \bigoplus_{(m, l)} I_m \otimes J^{(l)}_k`, where
    :math:`J^{(l)}_k` is e3nn's ``so3_generators(l)[k]`` (one block per copy of each irrep).
    Then :math:`D(\exp(t A_k)) = \exp(t\, d\rho(A_k))`. Parity does not enter: it is a discrete
    symmetry with no generator.
    """
    return _generators(str(as_irreps(irreps))).to(dtype or torch.get_default_dtype(), copy=True)


@lru_cache(maxsize=256)
def _generators(irreps: str) -> torch.Tensor:
    """float64 generators of ``irreps``, cached (they are needed at every penalty evaluation)."""
    blocks = [irrep_generators(ir.l) for mul, ir in o3.Irreps(irreps) for _ in range(mul)]
    if not blocks:
        return torch.zeros(3, 0, 0, dtype=torch.float64)
    return torch.stack([torch.block_diag(*(b[k] for b in blocks)) for k in range(3)])


def _rotation_vector(R: torch.Tensor) -> torch.Tensor:
    """The axis-angle vector ``ω`` with ``R = exp(Σ ω_k A_k)``, via a unit quaternion
    (Shepperd's method: stable at every angle)."""
    R = R.to(torch.float64)
    m = R
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    candidates = torch.stack([trace, m[0, 0], m[1, 1], m[2, 2]])
    k = int(torch.argmax(candidates))
    if k == 0:
        w = torch.sqrt(1 + trace) / 2
        x, y, z = (
            (m[2, 1] - m[1, 2]) / (4 * w),
            (m[0, 2] - m[2, 0]) / (4 * w),
            (m[1, 0] - m[0, 1]) / (4 * w),
        )
    elif k == 1:
        x = torch.sqrt(1 + m[0, 0] - m[1, 1] - m[2, 2]) / 2
        w, y, z = (
            (m[2, 1] - m[1, 2]) / (4 * x),
            (m[0, 1] + m[1, 0]) / (4 * x),
            (m[0, 2] + m[2, 0]) / (4 * x),
        )
    elif k == 2:
        y = torch.sqrt(1 - m[0, 0] + m[1, 1] - m[2, 2]) / 2
        w, x, z = (
            (m[0, 2] - m[2, 0]) / (4 * y),
            (m[0, 1] + m[1, 0]) / (4 * y),
            (m[1, 2] + m[2, 1]) / (4 * y),
        )
    else:
        z = torch.sqrt(1 - m[0, 0] - m[1, 1] + m[2, 2]) / 2
        w, x, y = (
            (m[1, 0] - m[0, 1]) / (4 * z),
            (m[0, 2] + m[2, 0]) / (4 * z),
            (m[1, 2] + m[2, 1]) / (4 * z),
        )
    v = torch.stack([x, y, z])
    if w < 0:
        w, v = -w, -v
    norm = v.norm()
    if norm == 0:
        return torch.zeros(3, dtype=torch.float64)
    return v / norm * 2 * torch.atan2(norm, w)


def representation(irreps: IrrepsLike, matrix: torch.Tensor) -> torch.Tensor:
    r"""The matrix ``D(g)`` by which a feature of type ``irreps`` transforms under ``g ∈ O(3)``.

    ``matrix`` is the 3×3 orthogonal matrix of ``g``. A rotation acts by
    :math:`\exp(\sum_k \omega_k\, d\rho(A_k))` with :math:`\omega` its axis-angle vector; an
    improper ``g = -R`` acts as ``R`` times the parity ``p`` of each irrep (e3nn's convention).
    Computed in float64, returned in ``matrix.dtype``.
    """
    irreps = as_irreps(irreps)
    if irreps.dim == 0:
        return matrix.new_zeros(0, 0)
    R = matrix.to(torch.float64)
    improper = bool(torch.det(R) < 0)
    if improper:
        R = -R
    omega = _rotation_vector(R)
    D = torch.linalg.matrix_exp(
        torch.einsum("k,kij->ij", omega, so3_generators(irreps, torch.float64))
    )
    if improper:
        parity = torch.cat(
            [
                torch.full((ir.dim,), float(ir.p), dtype=torch.float64)
                for mul, ir in irreps
                for _ in range(mul)
            ]
        )
        D = D * parity[:, None]
    return D.to(matrix.dtype)
