r"""MACE's symmetric contraction (Batatia et al., NeurIPS 2022, eqs. 10–11): the many-body
features of an atom as learned, element-dependent combinations of symmetric tensor powers of
its atomic basis.

For each atom :math:`i`, channel :math:`k` and output irrep :math:`L`,

.. math::
    B_{ikLM} = \sum_{\nu=1}^{\nu_{max}} \sum_{\eta} w^{(\nu)}_{z_i k \eta L}
               \sum_{a_1 \dots a_\nu} \mathcal{C}^{(\nu)}_{\eta, a_1\dots a_\nu, LM}\,
               A_{ik a_1} \cdots A_{ik a_\nu},

where :math:`A_{ik}` is the atomic basis of channel :math:`k` (one copy of each irrep of
``irreps_in``, :math:`D` numbers), :math:`z_i` the element and :math:`\mathcal{C}^{(\nu)}_\eta`
a basis of the **symmetric equivariant** :math:`\nu`-linear maps from the atomic basis to
:math:`L` (:func:`symmetric_couplings`): the generalised Clebsch–Gordan couplings
:math:`((a_1 \otimes a_2) \to l_{12}) \otimes a_3 \to \dots \to L` with MACE's intermediate
irreps (every one for :math:`\nu \le 3`, e.g. the pseudo-vector :math:`1e` of two vectors;
natural parity and :math:`l \le 11` for :math:`\nu \ge 4`), symmetrised over the :math:`\nu`
slots and reduced to an orthonormal basis of their span. (MACE keeps every coupling path, some
of them linearly dependent once contracted with the symmetric :math:`A^{\otimes\nu}`; the span,
hence the model class, is the same, with fewer weights.) The sums are evaluated from the
highest order down (Horner's scheme, as MACE does):
:math:`c_\nu = \mathcal{C}^{(\nu)} w^{(\nu)}`, then :math:`t \leftarrow (t + c_{\nu-1}) \cdot A`
contracting one slot at a time.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch
from e3nn import o3
from torch import Tensor, nn

from ..symmetry.irreps import IrrepsLike, as_irreps


def _intermediate_allowed(ir: o3.Irrep, correlation: int) -> bool:
    r"""MACE's rule for the intermediate irreps of a coupling path (``mace.tools.cg``): all of
    them up to correlation 3; natural parity (:math:`(-1)^l`) and :math:`l \le 11` from 4 on,
    which bounds the number of paths."""
    return correlation <= 3 or (ir.l <= 11 and ir.p == (-1) ** ir.l)


@lru_cache(maxsize=64)
def symmetric_couplings(irreps_in: str, ir_out: str, correlation: int,
                        reduced: bool = True) -> Tensor:
    r"""An orthonormal basis of the symmetric, equivariant ``correlation``-linear maps from the
    features ``irreps_in`` (dimension :math:`D`) to the irrep ``ir_out`` (dimension
    :math:`2L+1`), as a float64 tensor ``(D, ..., D, 2L+1, K)`` (``correlation`` axes of size
    :math:`D`; ``K`` maps, possibly 0), each scaled so that its Frobenius norm is
    :math:`\sqrt{2L+1}`.

    Built by coupling one input irrep at a time with e3nn's Wigner-3j symbols, with MACE's
    intermediate irreps (:func:`_intermediate_allowed`); then symmetrised over the input slots
    (a symmetric input :math:`A^{\otimes\nu}` sees only that part) and reduced by an SVD to
    the independent ones. Cached; do not modify in place.

    ``reduced=False`` returns every coupling path as MACE builds it instead (neither
    symmetrised nor reduced; each Wigner-3j step scaled by :math:`\sqrt{2l+1}` of its output,
    e3nn's "component" normalisation): linearly dependent once contracted with a symmetric
    :math:`A^{\otimes\nu}`, so the same span with more weights.
    """
    irreps = as_irreps(irreps_in)
    target = o3.Irrep(ir_out)
    if correlation < 1:
        raise ValueError(f"correlation must be >= 1, got {correlation}")
    D = irreps.dim
    embeddings = []  # (irrep, (D, 2l+1) selecting that copy)
    for (mul, ir), sl in zip(irreps, irreps.slices(), strict=True):
        for c in range(mul):
            E = torch.zeros(D, ir.dim, dtype=torch.float64)
            start = sl.start + c * ir.dim
            E[start:start + ir.dim] = torch.eye(ir.dim, dtype=torch.float64)
            embeddings.append((ir, E))
    paths = list(embeddings)
    for order in range(2, correlation + 1):
        last = order == correlation
        grown = []
        for ir1, T in paths:
            for ir2, E in embeddings:
                for ir3 in ir1 * ir2:
                    if (last and ir3 != target) or (
                            not last and not _intermediate_allowed(ir3, correlation)):
                        continue
                    w3j = o3.wigner_3j(ir1.l, ir2.l, ir3.l, dtype=torch.float64)
                    if not reduced:
                        w3j = w3j * math.sqrt(ir3.dim)
                    grown.append((ir3, torch.einsum("...i,aj,ijk->...ak", T, E, w3j)))
        paths = grown
    paths = [T for ir, T in paths if ir == target]
    if not paths:
        return torch.zeros(*([D] * correlation), target.dim, 0, dtype=torch.float64)
    stacked = torch.stack(paths, -1)  # (D,)*ν + (2L+1, n)
    if not reduced:
        return stacked
    symmetric = sum(stacked.permute(*perm, correlation, correlation + 1)
                    for perm in itertools.permutations(range(correlation)))
    matrix = symmetric.reshape(-1, len(paths))
    U, sigma, _ = torch.linalg.svd(matrix, full_matrices=False)
    rank = int((sigma > 1e-9 * sigma[0]).sum()) if sigma[0] > 1e-12 else 0
    basis = U[:, :rank] * math.sqrt(target.dim)
    return basis.reshape(*([D] * correlation), target.dim, rank)


class SymmetricContraction(nn.Module):
    r"""The element-dependent symmetric contraction :math:`A \mapsto B` (module docstring),
    channel by channel.

    Args:
        irreps_in: the atomic basis, ``k x (l_1 + l_2 + …)``: every irrep with the same
            multiplicity :math:`k` (the channels), each irrep once per channel.
        irreps_out: the output irreps, each with multiplicity :math:`k`.
        correlation: :math:`\nu_{max}`, the highest tensor power (body order
            :math:`\nu_{max} + 1`).
        num_elements: number of elements :math:`E`; the weights are chosen by ``species``.
        reduce_couplings: use the independent symmetric couplings (default), or every
            coupling path as MACE does (:func:`symmetric_couplings` with ``reduced=False``).

    Weights :math:`w^{(\nu)}` are ``(E, k, K_\nu)`` per output irrep and order, drawn
    :math:`N(0, 1)/K_\nu` (MACE's initialisation). The couplings are float64 constants cast to
    the module's dtype (recomputed exactly on every cast, not in the state dict).

    Shapes:
        ``forward(x (n, irreps_in.dim), species (n,) long in [0, E)) -> (n, irreps_out.dim)``.
    """

    def __init__(self, irreps_in: IrrepsLike, irreps_out: IrrepsLike, correlation: int = 3,
                 num_elements: int = 1, reduce_couplings: bool = True) -> None:
        super().__init__()
        self.irreps_in = as_irreps(irreps_in).simplify()
        self.irreps_out = as_irreps(irreps_out).simplify()
        muls = {mul for mul, _ in self.irreps_in} | {mul for mul, _ in self.irreps_out}
        irs = [ir for _, ir in self.irreps_in]
        if len(muls) != 1 or len(set(irs)) != len(irs):
            raise ValueError(f"irreps_in {self.irreps_in} and irreps_out {self.irreps_out} must "
                             "have one multiplicity (the channels) and each irrep once")
        if correlation < 1 or num_elements < 1:
            raise ValueError(f"need correlation >= 1 and num_elements >= 1, got "
                             f"{correlation}, {num_elements}")
        self.channels = muls.pop()
        self.correlation = correlation
        self.num_elements = num_elements
        self.reduce_couplings = reduce_couplings
        self._in_dims = [ir.dim for _, ir in self.irreps_in]  # ints: read in forward
        per_channel = "+".join(str(ir) for ir in irs)
        self.weights = nn.ParameterList()
        self._couplings: list[list[str]] = []  # buffer names, per output irrep, order 1..ν
        for o, (_, ir) in enumerate(self.irreps_out):
            names = []
            for nu in range(1, correlation + 1):
                U = symmetric_couplings(per_channel, str(ir), nu, reduce_couplings)
                name = f"coupling_{o}_{nu}"
                self.register_buffer(name, U.to(torch.get_default_dtype()), persistent=False)
                names.append(name)
            self._couplings.append(names)
            total = sum(getattr(self, n).shape[-1] for n in names)
            if total == 0:
                raise ValueError(f"no symmetric coupling of {per_channel} up to order "
                                 f"{correlation} reaches {ir}")
            for name in names:
                K = getattr(self, name).shape[-1]
                self.weights.append(nn.Parameter(torch.empty(num_elements, self.channels, K)))
        self._per_channel = per_channel
        self._output_irreps = [str(ir) for _, ir in self.irreps_out]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Weights of order :math:`\nu` drawn ``N(0, 1)`` divided by their number of
        couplings :math:`K_\nu` (MACE's initialisation)."""
        with torch.no_grad():
            for p in self.weights:
                nn.init.normal_(p).div_(max(1, p.shape[-1]))

    def _apply(self, fn, recurse=True):
        """Casts move the couplings, recomputed from their float64 values (never rounded
        twice)."""
        super()._apply(fn, recurse)
        for o, names in enumerate(self._couplings):
            for nu, name in enumerate(names, start=1):
                buf = getattr(self, name)
                exact = symmetric_couplings(self._per_channel, self._output_irreps[o], nu,
                                            self.reduce_couplings)
                setattr(self, name, exact.to(buf.dtype).to(buf.device))
        return self

    def _channels_last(self, x: Tensor) -> Tensor:
        """``(n, irreps_in.dim)`` in e3nn's layout (irrep blocks, channel-major) →
        ``(n, k, D)``."""
        k = self.channels
        blocks = torch.split(x, [k * d for d in self._in_dims], dim=-1)
        return torch.cat([b.reshape(-1, k, d) for b, d in zip(blocks, self._in_dims,
                                                               strict=True)], -1)

    def forward(self, x: Tensor, species: Tensor) -> Tensor:
        A = self._channels_last(x)  # (n, k, D)
        outputs = []
        w = iter(self.weights)
        for names in self._couplings:
            weights = [next(w) for _ in names]
            out = x.new_zeros(A.shape[0], self.channels, getattr(self, names[0]).shape[-2])
            for e in range(self.num_elements):
                if torch.compiler.is_compiling():  # no data-dependent shapes: every node,
                    rows, a = None, A  # masked below (element-many times the contraction)
                else:
                    rows = (species == e).nonzero().squeeze(-1)
                    if rows.numel() == 0:
                        continue
                    a = A.index_select(0, rows)  # (m, k, D)
                t = None  # Horner: (((c_ν·A) + c_{ν-1})·A + …)·A, one slot at a time
                for name, weight in zip(reversed(names), reversed(weights), strict=True):
                    c = torch.einsum("...r,kr->k...", getattr(self, name), weight[e])
                    if t is None:  # (k, D, ..., D, M): no atom axis yet
                        t = torch.einsum("k...dM,nkd->nk...M", c, a)
                    else:
                        t = torch.einsum("nk...dM,nkd->nk...M", t + c, a)
                if rows is None:
                    out = out + (species == e).to(t.dtype).view(-1, 1, 1) * t
                else:
                    out = out.index_copy(0, rows, t)
            outputs.append(out.reshape(A.shape[0], -1))  # (n, k*(2L+1)), channel-major
        return torch.cat(outputs, -1)

    def extra_repr(self) -> str:
        counts = [[getattr(self, n).shape[-1] for n in names] for names in self._couplings]
        return (f"{self.irreps_in} -> {self.irreps_out}, correlation={self.correlation}, "
                f"elements={self.num_elements}, couplings per order={counts}")
