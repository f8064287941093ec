r"""Measure how far any model is from E(3) × S_n equivariance.

For a group element :math:`g` acting on inputs by :math:`\rho_{in}(g)` and on outputs by
:math:`\rho_{out}(g)`, the relative equivariance error of :math:`f` on data :math:`x` is

.. math::
    \varepsilon_g = \frac{\lVert f(\rho_{in}(g)\,x) - \rho_{out}(g)\,f(x)\rVert}
                         {\lVert \rho_{out}(g)\, f(x)\rVert}.

It is 0 (to rounding) for an equivariant model. The actions are read from the model's
:class:`~relaxgnn.symmetry.Signature` (``model.signature``), so a new model needs no test code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from .group import (
    Seed,
    random_permutation_within,
    random_reflection,
    random_rotation,
    random_translation,
)
from .irreps import representation
from .signature import CHECKS, Signature


def _batch_vector(data: Data) -> Tensor:
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.num_nodes, dtype=torch.long, device=data.pos.device)
    return batch


def apply_orthogonal(data: Data, matrix: Tensor, signature: Signature) -> Data:
    """Return a copy of ``data`` with each declared field ``f`` replaced by ``D(matrix) f``."""
    out = data.clone()
    for name, irreps in signature.irreps_in.items():
        value = getattr(data, name)
        D = representation(irreps, matrix.to(value.dtype)).to(value.device)
        flat = value.reshape(value.shape[0], irreps.dim)
        setattr(out, name, (flat @ D.T).reshape(value.shape))
    return out


def apply_translation(data: Data, shift: Tensor, signature: Signature) -> Data:
    """Return a copy of ``data`` with every translated field (positions) shifted by ``shift``."""
    out = data.clone()
    for name in signature.translated:
        value = getattr(data, name)
        setattr(out, name, value + shift.to(value.dtype).to(value.device))
    return out


def apply_permutation(data: Data, perm: Tensor) -> Data:
    """Return a copy of ``data`` whose node ``i`` is old node ``perm[i]``; node-level fields
    are reindexed and ``edge_index`` is renumbered (edges keep their order)."""
    out = data.clone()
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    for key, value in data.items():
        if key == "edge_index":
            out.edge_index = inverse[value]
        elif isinstance(value, Tensor) and data.is_node_attr(key) and value.dim() > 0:
            if value.shape[0] == perm.numel():
                out[key] = value[perm]
    return out


def _relative(a: Tensor, b: Tensor) -> float:
    diff = (a - b).norm().item()
    scale = b.norm().item()
    return diff / scale if scale > 0 else diff


def equivariance_error(
    model: Callable[[Data], Tensor],
    data: Data,
    signature: Signature | None = None,
    checks: tuple[str, ...] | None = None,
    trials: int = 1,
    seed: Seed = 0,
    transform: Callable[[Data], Data] | None = None,
) -> dict[str, float]:
    """Relative equivariance errors of ``model`` on ``data``, one per kind of transformation.

    Args:
        model: a callable ``Data -> Tensor``; its ``signature`` attribute is used unless
            ``signature`` is given (for plain functions or layers wrapped in a lambda).
        data: a ``Data`` or ``Batch`` with the fields the signature declares.
        checks: any of ``"rotation"``, ``"reflection"``, ``"translation"``, ``"permutation"``;
            default: the signature's ``symmetries`` (those the model claims).
        trials: random group elements per check; the largest error is reported.
        seed: seeds the random group elements (an ``int`` or ``torch.Generator``).
        transform: applied to the data after the group action and before the model (e.g. a
            graph construction), so that the transform is part of what is tested.

    Returns:
        ``{check: max relative error over trials}``.
    """
    signature = signature or getattr(model, "signature", None)
    if not isinstance(signature, Signature):
        raise TypeError(
            "equivariance_error needs a Signature: give the model a `signature` attribute or "
            "pass signature=..."
        )
    checks = signature.symmetries if checks is None else checks
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {CHECKS}")
    if signature.level == "node" and getattr(data, "num_nodes", None) is None:
        raise ValueError("data has no nodes")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed or 0)
    run = (lambda d: model(transform(d))) if transform is not None else model

    with torch.no_grad():
        reference = run(data)
        errors: dict[str, float] = {}
        for check in checks:
            worst = 0.0
            for _ in range(trials):
                if check in ("rotation", "reflection"):
                    dtype = data[next(iter(signature.irreps_in))].dtype
                    sample = random_rotation if check == "rotation" else random_reflection
                    g = sample(gen, dtype=torch.float64).to(dtype)
                    actual = run(apply_orthogonal(data, g, signature))
                    D = representation(signature.irreps_out, g).to(reference)
                    expected = (reference.reshape(-1, signature.irreps_out.dim) @ D.T).reshape(
                        reference.shape
                    )
                elif check == "translation":
                    dtype = data[signature.translated[0]].dtype if signature.translated else None
                    shift = random_translation(gen, dtype=torch.float64).to(dtype)
                    actual = run(apply_translation(data, shift, signature))
                    expected = (
                        reference + shift.to(reference)
                        if signature.output_translates
                        else reference
                    )
                else:
                    perm = random_permutation_within(_batch_vector(data), gen)
                    actual = run(apply_permutation(data, perm.to(data.pos.device)))
                    expected = reference[perm] if signature.level == "node" else reference
                worst = max(worst, _relative(actual, expected))
            errors[check] = worst
    return errors


def assert_equivariant(
    model: Callable[[Data], Tensor],
    data: Data,
    tolerance: float | None = None,
    **kwargs,
) -> dict[str, float]:
    """Raise ``AssertionError`` naming each transformation whose relative error exceeds
    ``tolerance`` (default: 1e-9 in float64, 1e-5 otherwise). Returns the errors."""
    errors = equivariance_error(model, data, **kwargs)
    if tolerance is None:
        dtype = data.pos.dtype if isinstance(data, (Data, Batch)) else torch.float64
        tolerance = 1e-9 if dtype == torch.float64 else 1e-5
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    if bad:
        raise AssertionError(f"not equivariant (tolerance {tolerance:g}): {bad}")
    return errors
