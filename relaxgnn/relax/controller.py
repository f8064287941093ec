r"""The controller of a relaxed model: finds its paths, sets θ from a schedule, sums the
penalties, reports per-block numbers, and projects the model back to an exactly equivariant one.

Penalty (per block :math:`b`, on the inputs :math:`X_b` its path saw in the last forward pass,
detached so that only the path is trained by it):

.. math::
    P = \sum_b \Big[\lambda_L \sqrt{\textstyle\sum_{x \in X_b} \sum_k \lVert L_k g_b(x)\rVert^2
                                    + \lVert L^{T}_k g_b(x)\rVert^2}
        + \lambda_N \sqrt{\textstyle\sum_{x \in X_b} \lVert g_b(x)\rVert^2}
        + \lambda_R \sqrt{\textstyle\sum_{x \in X_b}
              \lVert g_b(D_{in}(P) x) - D_{out}(P)\, g_b(x)\rVert^2}\Big]

with :math:`L_k` the rotation Lie derivatives (:func:`~relaxgnn.relax.lie_derivative`),
:math:`L^T_k` the translation derivatives where the path sees absolute positions, and
:math:`P` a random reflection (O(3) models, optional). With :math:`\lambda_L = \lambda_N = \lambda`
this is the paper's :math:`\lambda(\sqrt{\sum\lVert Lg\rVert^2} + \sqrt{\sum\lVert g\rVert^2})`.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..symmetry.group import random_reflection
from ..symmetry.irreps import IrrepsLike, representation
from .lie import (
    generator_commutator,
    lie_derivative,
    linear_weight,
    translation_derivative,
    translation_tangents,
)
from .path import RelaxationPath
from .schedules import Schedule


def find_paths(model: nn.Module) -> dict[str, RelaxationPath]:
    """Every relaxation path inside ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RelaxationPath)}


def project(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every relaxation path removed: exactly equivariant, with no
    extra parameters or cost. Its ``state_dict`` loads (``strict=True``) into the same
    architecture built without relaxation, and its outputs equal ``model``'s at θ = 0."""
    projected = copy.deepcopy(model)
    for module in list(projected.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, RelaxationPath):
                setattr(module, name, None)
        if hasattr(module, "relax"):
            module.relax = None
    return projected


def path_penalties(path: RelaxationPath, x: Tensor, reflection: Tensor | None = None
                   ) -> dict[str, Tensor]:
    """The unweighted penalty terms of one path on inputs ``x`` (detached)."""
    x = x.detach()
    W = linear_weight(path.g)
    if W is not None:
        terms = linear_penalties(W[None], x.reshape(1, -1, x.shape[-1]), path.irreps_in,
                                 path.irreps_out, path.position_columns, reflection)
        return {name: value[0] for name, value in terms.items()}
    lie = lie_derivative(path.g, x, path.irreps_in, path.irreps_out).pow(2).sum()
    if path.position_columns:
        lie = lie + translation_derivative(path.g, x, path.position_columns).pow(2).sum()
    terms = {"lie": _root(lie), "norm": _root(path.g(x).pow(2).sum())}
    if reflection is not None:
        D_in = representation(path.irreps_in, reflection).to(x)
        D_out = representation(path.irreps_out, reflection).to(x)
        diff = path.g(x @ D_in.T) - path.g(x) @ D_out.T
        terms["reflection"] = _root(diff.pow(2).sum())
    return terms


def _root(squares: Tensor) -> Tensor:
    r""":math:`\sqrt{s}` with gradient 0 rather than NaN where :math:`s = 0` (a path that is
    exactly zero, e.g. zero-initialised, or an exactly equivariant one)."""
    positive = squares > 0
    return torch.where(positive, torch.where(positive, squares, 1.0).sqrt(), 0.0)


def linear_penalties(
    W: Tensor,
    X: Tensor,
    irreps_in: IrrepsLike,
    irreps_out: IrrepsLike,
    position_columns: Sequence[int] = (),
    reflection: Tensor | None = None,
) -> dict[str, Tensor]:
    r"""The penalty terms of a batch of ``P`` linear paths :math:`g_p(x) = W_p x` with the same
    irreps, each on its own inputs: ``W`` is ``(P, d_out, d_in)``, ``X`` is ``(P, N, d_in)``
    (detached); every term is ``(P,)``.

    Each term is :math:`\sum_x \lVert A x\rVert^2 = \operatorname{tr}(A S A^\top)` with the
    Gram matrix :math:`S = X^\top X` and :math:`A = W` (norm), :math:`W\,d\rho_{in}(A_k) -
    d\rho_{out}(A_k) W` (Lie derivatives), :math:`W D_{in}(P) - D_{out}(P) W` (reflection), so
    the cost no longer grows with the batch, and a model's layers are done in one go. The
    translation derivative :math:`W\tau_k` is the same for every :math:`x`. The same numbers as
    :func:`lie_derivative` and :func:`translation_derivative` give per sample.
    """
    S = X.mT @ X

    def squares(A: Tensor) -> Tensor:  # Σ_x |A x|² per path; round-off kept from going below 0
        S_ = S.view(S.shape[0], *([1] * (A.dim() - 3)), *S.shape[1:])
        return ((A @ S_) * A).flatten(1).sum(1).clamp_min(0.0)

    lie = squares(generator_commutator(W, irreps_in, irreps_out))
    if position_columns:
        tangents = translation_tangents(X, position_columns)
        lie = lie + X.shape[1] * (tangents @ W.mT).pow(2).flatten(1).sum(1)
    terms = {"lie": _root(lie), "norm": _root(squares(W))}
    if reflection is not None:
        D_in = representation(irreps_in, reflection).to(W)
        D_out = representation(irreps_out, reflection).to(W)
        terms["reflection"] = _root(squares(W @ D_in - D_out @ W))
    return terms


class Relaxation:
    """Drive the relaxation of ``model``.

    Typical loop::

        relax = Relaxation(model, LinearDecay(1.0, total_steps), lie_weight=0.01)
        for i, batch in enumerate(loader):
            relax.step(i)
            loss = task_loss(model(batch), batch) + relax.penalty()
            ...
        model = relax.project()

    Args:
        model: a model built with ``relax=...`` (it must contain relaxation paths).
        schedule: one :class:`~relaxgnn.relax.schedules.Schedule` for every path, or a mapping
            from glob patterns of path names (see :attr:`paths`) to schedules; each path takes
            the first pattern that matches it.
        lie_weight, norm_weight, reflection_weight: :math:`\\lambda_L, \\lambda_N, \\lambda_R`.
        interval: ``"step"`` or ``"epoch"``: what the step index counts (read by the training
            engine; the controller itself just evaluates the schedule at the index given).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule | Mapping[str, Schedule],
        lie_weight: float = 0.01,
        norm_weight: float = 0.01,
        reflection_weight: float = 0.0,
        interval: str = "step",
    ) -> None:
        self.model = model
        self.paths = find_paths(model)
        if not self.paths:
            raise ValueError(
                f"{type(model).__name__} has no relaxation paths: build it with relax='linear' "
                "(or 'mlp', or a RelaxConfig) to relax it")
        for name, weight in (("lie_weight", lie_weight), ("norm_weight", norm_weight),
                             ("reflection_weight", reflection_weight)):
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {weight}")
        if interval not in ("step", "epoch"):
            raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}")
        self.lie_weight, self.norm_weight = float(lie_weight), float(norm_weight)
        self.reflection_weight = float(reflection_weight)
        self.interval = interval
        self.schedules = self._assign(schedule)
        self.step_index = 0
        self.step(0)

    def _assign(self, schedule: Schedule | Mapping[str, Schedule]) -> dict[str, Schedule]:
        if isinstance(schedule, Schedule):
            return dict.fromkeys(self.paths, schedule)
        if not isinstance(schedule, Mapping):
            raise TypeError(f"schedule must be a Schedule or a mapping of them, got "
                            f"{type(schedule).__name__}")
        assigned = {}
        for name in self.paths:
            match = next((s for pattern, s in schedule.items() if fnmatch.fnmatch(name, pattern)),
                         None)
            if match is None:
                raise ValueError(f"no schedule pattern among {list(schedule)} matches the path "
                                 f"{name!r}")
            assigned[name] = match
        return assigned

    @property
    def total_steps(self) -> int:
        """The longest schedule's length: after it every θ is 0."""
        return max(s.total_steps for s in self.schedules.values())

    def step(self, index: int) -> float:
        """Set every path's θ to its schedule's value at ``index``; returns the largest θ."""
        self.step_index = int(index)
        for name, path in self.paths.items():
            path.set_theta(self.schedules[name](self.step_index))
        return self.theta

    @property
    def theta(self) -> float:
        """The largest θ over the paths (the θ of the model when one schedule drives all)."""
        return max(path._theta for path in self.paths.values())

    @property
    def thetas(self) -> dict[str, float]:
        return {name: path._theta for name, path in self.paths.items()}

    def _terms(self) -> dict[str, dict[str, Tensor]]:
        reflection = None
        if self.reflection_weight > 0:  # drawn from the step, so resumed runs repeat it
            reflection = random_reflection(self.step_index, dtype=torch.float64)
        active = {name: path for name, path in self.paths.items()
                  if path.active and path.last_input is not None}
        terms: dict[str, dict[str, Tensor]] = {}
        batches: dict[tuple, list[str]] = {}  # linear paths of one shape: one batched call
        for name, path in active.items():
            if linear_weight(path.g) is None:
                terms[name] = path_penalties(path, path.last_input, reflection)
            else:
                x = path.last_input
                key = (str(path.irreps_in), str(path.irreps_out), path.position_columns,
                       x.numel(), x.dtype, x.device)
                batches.setdefault(key, []).append(name)
        for names in batches.values():
            first = active[names[0]]
            W = torch.stack([linear_weight(active[n].g) for n in names])
            X = torch.stack([active[n].last_input.reshape(-1, W.shape[-1]) for n in names])
            batch = linear_penalties(W, X, first.irreps_in, first.irreps_out,
                                     first.position_columns, reflection)
            for i, name in enumerate(names):
                terms[name] = {term: value[i] for term, value in batch.items()}
        return {name: terms[name] for name in active}  # in the model's order

    def penalty(self) -> Tensor:
        """The weighted penalty (module docstring) on the inputs of the last forward pass;
        0 when θ = 0 everywhere (nothing is relaxed, nothing to penalise)."""
        total = None
        for terms in self._terms().values():
            value = self.lie_weight * terms["lie"] + self.norm_weight * terms["norm"]
            if "reflection" in terms:
                value = value + self.reflection_weight * terms["reflection"]
            total = value if total is None else total + value
        if total is None:
            param = next(iter(self.paths.values())).theta
            return param.new_zeros(())
        return total

    @torch.no_grad()
    def metrics(self, data: Any = None) -> dict[str, float]:
        """Numbers for a logger: θ, and per block the path's output norm ``…/path_norm`` and
        Lie-derivative norm ``…/lie_derivative`` (unscaled by θ, on the last forward pass's
        inputs); with ``data``, the model's equivariance errors ``equivariance/<check>`` at the
        current θ."""
        out: dict[str, float] = {"theta": self.theta}
        for name, terms in self._terms().items():
            out[f"{name}/path_norm"] = float(terms["norm"])
            out[f"{name}/lie_derivative"] = float(terms["lie"])
        if data is not None:
            from ..symmetry import equivariance_error

            for check, value in equivariance_error(self.model, data).items():
                out[f"equivariance/{check}"] = value
        return out

    def project(self) -> nn.Module:
        """:func:`project` of the model (the controller's model is left as it is)."""
        return project(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"step_index": self.step_index, "thetas": self.thetas}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the saved step (θ is recomputed from the schedules and checked against the
        saved values, which catches a changed schedule)."""
        self.step(int(state["step_index"]))
        saved = state.get("thetas", {})
        for name, theta in saved.items():
            if name in self.paths and not math.isclose(self.paths[name]._theta, theta,
                                                        rel_tol=1e-12, abs_tol=1e-15):
                raise ValueError(f"schedule mismatch on resume: path {name!r} had θ={theta} at "
                                 f"step {self.step_index}, the schedule now gives "
                                 f"{self.paths[name]._theta}")
